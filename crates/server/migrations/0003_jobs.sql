-- Jobs for machines and the packages machines report. Migration 2 belongs to another feature;
-- the runner applies every migration not yet recorded, so the numbers need not be consecutive.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    selector     TEXT NOT NULL,
    spec         TEXT NOT NULL,
    signature    TEXT,
    created_at   BIGINT NOT NULL,
    cancelled_at BIGINT
);

-- The machines a job was given to: those its selector matched when it was made.
CREATE TABLE job_targets (
    job     TEXT NOT NULL,
    machine TEXT NOT NULL,
    PRIMARY KEY (job, machine)
);

-- One row per delivery (a job, or one occurrence of a scheduled job) and machine: delivered,
-- running, then its one result, which is never replaced.
CREATE TABLE job_runs (
    delivery     TEXT NOT NULL,
    machine      TEXT NOT NULL,
    job          TEXT NOT NULL,
    state        TEXT NOT NULL,
    delivered_at BIGINT,
    started_at   BIGINT,
    finished_at  BIGINT,
    duration_ms  BIGINT,
    exit_code    BIGINT,
    output       TEXT,
    PRIMARY KEY (delivery, machine)
);
CREATE INDEX job_runs_job ON job_runs (job);

CREATE TABLE inventory (
    machine    TEXT PRIMARY KEY,
    digest     TEXT NOT NULL,
    data       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
