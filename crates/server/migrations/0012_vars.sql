-- Per-machine configuration (docs/CONFIG.md): variable sets as the admin signed them, one per
-- scope, the order in which label scopes apply, and the facts each machine reports.
CREATE TABLE var_sets (
    scope TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    -- the signed set as received ({"set": ..., "signature": ...}), passed on unchanged
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE var_label_order (
    position BIGINT PRIMARY KEY,
    label_key TEXT NOT NULL
);
CREATE TABLE machine_facts (
    machine TEXT PRIMARY KEY,
    facts TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
