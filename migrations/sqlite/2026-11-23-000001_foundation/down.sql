DROP TABLE activities;
DROP TABLE invoices;
DROP TABLE orders;
DROP TABLE customers;
DROP TABLE import_rejects;
DROP TABLE import_runs;
DROP TABLE owners;
