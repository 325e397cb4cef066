DROP TABLE job_probes;
DROP TABLE job_requests;
DROP TABLE job_runs;
