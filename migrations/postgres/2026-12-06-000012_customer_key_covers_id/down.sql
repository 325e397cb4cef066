ALTER TABLE customers DROP CONSTRAINT customers_source_external_id_key;
ALTER TABLE customers ADD CONSTRAINT customers_source_external_id_key UNIQUE (source, external_id);
