-- Foundation: owners, customers and their records, and the bookkeeping of imports.
-- Keys: every imported record is unique by (source, external_id); owners by email.
CREATE TABLE owners (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    locale TEXT NOT NULL,
    source TEXT NOT NULL,
    external_id TEXT,
    import_run_id BIGINT
);

CREATE TABLE import_runs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    rows_read BIGINT NOT NULL DEFAULT 0,
    rows_written BIGINT NOT NULL DEFAULT 0,
    rows_unchanged BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0,
    customers_created BIGINT NOT NULL DEFAULT 0,
    unused_columns TEXT NOT NULL DEFAULT '[]',
    error TEXT
);

CREATE TABLE import_rejects (
    id INTEGER PRIMARY KEY,
    import_run_id BIGINT NOT NULL REFERENCES import_runs (id) ON DELETE CASCADE,
    origin TEXT NOT NULL,
    line BIGINT NOT NULL,
    field TEXT,
    reason TEXT NOT NULL,
    raw_record TEXT NOT NULL
);
CREATE INDEX import_rejects_run_idx ON import_rejects (import_run_id, line);

CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    external_id TEXT NOT NULL,
    name TEXT NOT NULL,
    contact_name TEXT,
    contact_email TEXT,
    contact_phone TEXT,
    owner_id BIGINT REFERENCES owners (id),
    created_on DATE,
    prospect_rating INTEGER CHECK (prospect_rating BETWEEN 1 AND 5),
    attributes TEXT NOT NULL DEFAULT '{}',
    import_run_id BIGINT,
    UNIQUE (source, external_id)
);
CREATE INDEX customers_owner_idx ON customers (owner_id);

-- Orders, invoices and activities reference customers without a FOREIGN KEY constraint: the
-- loader resolves customer_id by joining customers in the same statement that inserts the row,
-- so a dangling id cannot be written, and customers are never deleted. On PostgreSQL the
-- per-row constraint trigger cost a quarter of a bulk load's time (measured on 1M orders).
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    external_id TEXT NOT NULL,
    customer_id BIGINT NOT NULL,
    order_date DATE NOT NULL,
    amount_minor BIGINT NOT NULL,
    cost_minor BIGINT,
    currency TEXT NOT NULL,
    quantity BIGINT,
    import_run_id BIGINT,
    UNIQUE (source, external_id)
);
CREATE INDEX orders_customer_date_idx ON orders (customer_id, order_date);

CREATE TABLE invoices (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    external_id TEXT NOT NULL,
    customer_id BIGINT NOT NULL,
    order_external_id TEXT,
    issued_on DATE NOT NULL,
    due_on DATE NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    paid_on DATE,
    import_run_id BIGINT,
    UNIQUE (source, external_id)
);
CREATE INDEX invoices_customer_due_idx ON invoices (customer_id, due_on);

CREATE TABLE activities (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    external_id TEXT NOT NULL,
    customer_id BIGINT NOT NULL,
    owner_id BIGINT REFERENCES owners (id),
    kind TEXT NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    note TEXT,
    import_run_id BIGINT,
    UNIQUE (source, external_id)
);
CREATE INDEX activities_customer_idx ON activities (customer_id, kind, occurred_at);
