DROP INDEX invoices_deleted_idx;
ALTER TABLE invoices DROP COLUMN deleted_reason;
ALTER TABLE invoices DROP COLUMN deleted_at;
