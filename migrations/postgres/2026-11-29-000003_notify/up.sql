-- Notifications: the day each customer entered its tier (follow-up cadences count from it when
-- no contact is recorded) and the outbox every email goes through.

ALTER TABLE grades ADD COLUMN tier_since DATE;

-- Every email tierwise sends. Rows are written in the same transaction as what causes them;
-- dedupe_key (kind, recipient and period or week) makes a second copy impossible. A sender
-- claims due rows (status sending), sends them, and marks them sent or schedules a retry.
-- status: queued | sending | sent | dead.
CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    owner_id BIGINT,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body_text TEXT NOT NULL,
    body_html TEXT NOT NULL,
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    sent_at TIMESTAMP
);
CREATE INDEX outbox_due_idx ON outbox (status, next_attempt_at);

-- Things that happened and owe notifications, written in the same transaction as the thing
-- itself (e.g. a period's grades being published). The notify job turns each into outbox rows
-- and sets processed_at in one transaction, so a crash between the two loses nothing.
-- kind: period_published.
CREATE TABLE notification_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    period TEXT NOT NULL,
    run_id BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    processed_at TIMESTAMP,
    outcome TEXT
);
CREATE INDEX notification_events_pending_idx ON notification_events (processed_at, id);
