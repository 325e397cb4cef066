DROP TABLE override_events;
DROP TABLE overrides;
DROP TABLE grade_explanations;
DROP TABLE grades;
DROP TABLE grading_periods;
DROP TABLE grading_runs;
