-- Captures (docs/PROTOCOL.md, "Captures"): machines' writable layers as tar.zst files under
-- DATA/captures/HASH.tar.zst (one file for identical captures), a row each, the last few kept
-- per machine.
CREATE TABLE captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine TEXT NOT NULL,
    machine_name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    size BIGINT NOT NULL,
    unpacked BIGINT NOT NULL,
    entries BIGINT NOT NULL,
    hash TEXT NOT NULL,
    -- set by an automatic bake (`serve --auto-bake`)
    baked_channel TEXT,
    baked_commit TEXT
);
CREATE INDEX captures_by_machine ON captures (machine, id);
