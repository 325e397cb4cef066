-- Records the source reports deleted or merged away. They stay (a customer's grading history
-- refers to it) but are marked: grading skips them, the dashboard says so. A later import that
-- carries the record again as live clears the mark.
ALTER TABLE customers ADD COLUMN deleted_at TIMESTAMP;
ALTER TABLE customers ADD COLUMN deleted_reason TEXT;
ALTER TABLE orders ADD COLUMN deleted_at TIMESTAMP;
ALTER TABLE orders ADD COLUMN deleted_reason TEXT;
-- Few rows are ever deleted: partial indexes find them without reading the tables.
CREATE INDEX customers_deleted_idx ON customers (id) WHERE deleted_at IS NOT NULL;
CREATE INDEX orders_deleted_idx ON orders (id) WHERE deleted_at IS NOT NULL;
