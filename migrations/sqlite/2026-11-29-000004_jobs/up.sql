-- Scheduled jobs: the database decides who runs. Every occurrence of a job is claimed by
-- inserting (job, scheduled_for); the unique key lets exactly one replica win. The winner holds
-- a lease it renews; when the lease runs out another replica takes the occurrence over and bumps
-- fence, so writes of the one it replaced (checked against fence) are refused.
-- trigger: schedule | catch_up | manual. status: running | succeeded | failed.
CREATE TABLE job_runs (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    scheduled_for TIMESTAMP NOT NULL,
    trigger TEXT NOT NULL,
    status TEXT NOT NULL,
    replica TEXT NOT NULL,
    fence INTEGER NOT NULL DEFAULT 1,
    lease_until TIMESTAMP NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    args TEXT NOT NULL DEFAULT '{}',
    outcome TEXT,
    error TEXT,
    UNIQUE (job, scheduled_for)
);
CREATE INDEX job_runs_lease_idx ON job_runs (status, lease_until);
CREATE INDEX job_runs_started_idx ON job_runs (started_at);

-- Requests to run a job now (`tierwise jobs run`, the dashboard), picked up by a scheduler.
CREATE TABLE job_requests (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',
    requested_by TEXT NOT NULL,
    requested_at TIMESTAMP NOT NULL,
    claimed_at TIMESTAMP,
    run_id BIGINT
);
CREATE INDEX job_requests_pending_idx ON job_requests (claimed_at, id);

-- Side effect of the diagnostic `probe` job: one row per completed occurrence, written with a
-- fence check. Operations use it to see that the scheduler runs; tests to count executions.
CREATE TABLE job_probes (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    scheduled_for TIMESTAMP NOT NULL,
    run_id BIGINT NOT NULL,
    replica TEXT NOT NULL,
    written_at TIMESTAMP NOT NULL
);
