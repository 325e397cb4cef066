DROP INDEX activities_deleted_idx;
ALTER TABLE activities DROP COLUMN deleted_reason;
ALTER TABLE activities DROP COLUMN deleted_at;
