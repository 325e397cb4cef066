-- Invoices the source reports deleted or voided are marked like customers and orders: kept,
-- skipped by grading (no longer owed), revived when the source sends them as live again.
ALTER TABLE invoices ADD COLUMN deleted_at TIMESTAMP;
ALTER TABLE invoices ADD COLUMN deleted_reason TEXT;
CREATE INDEX invoices_deleted_idx ON invoices (id) WHERE deleted_at IS NOT NULL;
