DROP TABLE notification_events;
DROP TABLE outbox;
ALTER TABLE grades DROP COLUMN tier_since;
