-- Policy versions applied from the dashboard: each row is an adjustment (weights, tier cuts,
-- ABC cuts as JSON) over the configured [grading] policy, and the audit entry of who applied it,
-- when and why. The newest row is in force; an empty adjustment returns to the configuration.
CREATE TABLE policy_versions (
    id INTEGER PRIMARY KEY,
    created_at TIMESTAMP NOT NULL,
    author TEXT NOT NULL,
    reason TEXT NOT NULL,
    adjustment TEXT NOT NULL,
    -- Hashes of the effective policy before and after, as the grading runs record them.
    previous_hash TEXT NOT NULL,
    policy_hash TEXT NOT NULL
);
