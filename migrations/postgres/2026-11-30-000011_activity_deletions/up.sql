-- Contacts the source reports deleted (or voided, archived) are marked like orders and invoices:
-- kept, no longer counted as contacts (reminders, last call and visit), revived when the source
-- sends them as live again.
ALTER TABLE activities ADD COLUMN deleted_at TIMESTAMP;
ALTER TABLE activities ADD COLUMN deleted_reason TEXT;
CREATE INDEX activities_deleted_idx ON activities (id) WHERE deleted_at IS NOT NULL;
