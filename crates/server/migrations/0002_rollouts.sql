-- Rollouts: a release moved to the machines of a channel wave by wave (crates/server/src/rollout/).
-- At most one active rollout per channel (publishing, running, paused or halted).
CREATE TABLE rollouts (
    id         INTEGER PRIMARY KEY,
    uid        TEXT NOT NULL UNIQUE,
    channel    TEXT NOT NULL,
    release    TEXT NOT NULL,
    selector   TEXT NOT NULL,
    spec       TEXT NOT NULL,
    state      TEXT NOT NULL,
    reason     TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX rollouts_channel ON rollouts (channel, id);
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (channel)
    WHERE state IN ('publishing', 'running', 'paused', 'halted');

-- Every machine that followed the channel when the rollout started: wave NULL for those the
-- selector left out (held on their release), from_release what each ran then.
CREATE TABLE rollout_machines (
    rollout      BIGINT NOT NULL,
    machine      TEXT NOT NULL,
    name         TEXT NOT NULL,
    position     BIGINT NOT NULL,
    wave         BIGINT,
    from_release TEXT,
    admitted_at  BIGINT,
    settled_at   BIGINT,
    acknowledged BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout, machine)
);
