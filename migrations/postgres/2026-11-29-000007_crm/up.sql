-- Where each CRM connector stands, per source and entity. `watermark` is the newest change a
-- completed run imported (the next run asks from it, less an overlap). A run in progress keeps
-- its lower bound, its next page and the newest change it has seen, committed with each page,
-- so a run that dies resumes from its last committed page; only completing moves `watermark`,
-- and never past the run's start (a record changed while the run paged is read again next time).
CREATE TABLE crm_sync_state (
    source TEXT NOT NULL,
    entity TEXT NOT NULL,
    watermark TIMESTAMP,
    in_progress BOOLEAN NOT NULL DEFAULT FALSE,
    run_since TIMESTAMP,
    run_started TIMESTAMP,
    run_cursor TEXT,
    run_max_seen TIMESTAMP,
    run_pages BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (source, entity)
);
