-- Nothing to do on SQLite: every index carries the rowid, which is the customer id, so reading
-- ids in (source, external_id) order is already a covering-index scan. (The PostgreSQL migration
-- of the same name adds the id to the unique index.)
SELECT 1;
