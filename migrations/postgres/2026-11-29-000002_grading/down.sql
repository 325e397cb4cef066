DROP TABLE override_events;
DROP TABLE overrides;
DROP TABLE grades;
DROP TABLE grading_periods;
DROP TABLE grading_runs;
