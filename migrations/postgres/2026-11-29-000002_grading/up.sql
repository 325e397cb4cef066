-- Grading: runs, the published run of each period, one grade row per customer and run, and
-- the manual overrides (red/black list) with their audit trail.

-- One row per attempt to grade a period. status: running | succeeded | failed | superseded.
CREATE TABLE grading_runs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    period TEXT NOT NULL,
    status TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    policy TEXT NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    customers BIGINT NOT NULL DEFAULT 0,
    graded BIGINT NOT NULL DEFAULT 0,
    tier_changes BIGINT NOT NULL DEFAULT 0,
    timings TEXT NOT NULL DEFAULT '{}',
    summary TEXT,
    error TEXT
);
CREATE INDEX grading_runs_period_idx ON grading_runs (period, id);

-- The snapshot readers see: exactly one published run per period. Re-grading writes a new run's
-- rows beside the old ones and switches this pointer in one transaction.
CREATE TABLE grading_periods (
    period TEXT PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES grading_runs (id),
    published_at TIMESTAMP NOT NULL
);

-- Tiers are stored by name so a later policy with other tiers can still read history.
-- One partition per run (grades_r<id>): a run loads its rows into a bare table, builds the key
-- afterwards and attaches it (about twice as fast as maintaining the index row by row), and a
-- superseded run is dropped rather than deleted row by row.
CREATE TABLE grades (
    run_id BIGINT NOT NULL,
    customer_id BIGINT NOT NULL,
    graded BOOLEAN NOT NULL,
    recency_days INTEGER,
    frequency INTEGER NOT NULL,
    monetary BIGINT NOT NULL,
    r_score INTEGER,
    f_score INTEGER,
    m_score INTEGER,
    segment TEXT,
    abc_class TEXT,
    credit_score DOUBLE PRECISION,
    credit_grade TEXT NOT NULL,
    profit BIGINT,
    composite DOUBLE PRECISION,
    computed_tier TEXT,
    tier TEXT,
    tier_reason TEXT NOT NULL,
    periods_below INTEGER NOT NULL,
    loyalty TEXT,
    lifecycle TEXT NOT NULL,
    clv BIGINT,
    PRIMARY KEY (run_id, customer_id)
) PARTITION BY LIST (run_id);

-- Why each grade is what it is (component values, credit figures, tier reason), as JSON. Apart
-- from grades so that reading a run's tiers (hysteresis, migrations, dashboards) scans narrow
-- rows; only drill-downs and exports read this.
CREATE TABLE grade_explanations (
    run_id BIGINT NOT NULL,
    customer_id BIGINT NOT NULL,
    explanation TEXT NOT NULL,
    PRIMARY KEY (run_id, customer_id)
) PARTITION BY LIST (run_id);

-- The current override of a customer (at most one); history is in override_events.
CREATE TABLE overrides (
    customer_id BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    tier TEXT,
    reason TEXT NOT NULL,
    author TEXT NOT NULL,
    until DATE,
    created_at TIMESTAMP NOT NULL
);

-- action: pin | block | clear.
CREATE TABLE override_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    tier TEXT,
    reason TEXT NOT NULL,
    author TEXT NOT NULL,
    until DATE,
    at TIMESTAMP NOT NULL
);
CREATE INDEX override_events_customer_idx ON override_events (customer_id, id);
