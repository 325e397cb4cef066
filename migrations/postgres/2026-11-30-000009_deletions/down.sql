DROP INDEX orders_deleted_idx;
DROP INDEX customers_deleted_idx;
ALTER TABLE orders DROP COLUMN deleted_reason;
ALTER TABLE orders DROP COLUMN deleted_at;
ALTER TABLE customers DROP COLUMN deleted_reason;
ALTER TABLE customers DROP COLUMN deleted_at;
