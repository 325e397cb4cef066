-- Every grading run reads all customer ids in tie-break order (source, external_id). With the id
-- carried in the unique index that read is an index-only scan instead of a walk of the table
-- (0.17 s instead of 0.8-2.0 s for a million customers once the table is vacuumed).
-- ON CONFLICT (source, external_id) still infers this constraint: INCLUDE columns are not keys.
-- The index is rebuilt under an exclusive lock (about 2 s per million customers).
ALTER TABLE customers DROP CONSTRAINT customers_source_external_id_key;
ALTER TABLE customers ADD CONSTRAINT customers_source_external_id_key
    UNIQUE (source, external_id) INCLUDE (id);
