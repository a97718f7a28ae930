-- The fleet: enrolled machines and enrollment tokens. Columns are i64, text and blobs only, so
-- the same schema runs on PostgreSQL.
CREATE TABLE machines (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    public_key  BLOB NOT NULL,
    status      TEXT NOT NULL,
    labels      TEXT NOT NULL,
    channel     TEXT,
    report      TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_seen   BIGINT
);

CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL UNIQUE,
    preauthorized BIGINT NOT NULL,
    labels        TEXT NOT NULL,
    uses_left     BIGINT,
    expires_at    BIGINT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    machine TEXT NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX events_machine ON events (machine, at);
