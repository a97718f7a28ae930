-- The audit log (docs/PROTOCOL.md, "Audit log"): every request of the admin API that asks for
-- a change (every method but GET and HEAD), allowed or refused, with who sent it.
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    -- `admin:FINGERPRINT` (the first 8 bytes of the token's BLAKE3, in hex) or `refused` for a
    -- wrong or missing token
    actor TEXT NOT NULL,
    -- what the client says its user is (X-Semithin-User): told, not proven
    user_name TEXT,
    ip TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    -- the request body when it is JSON, at most 4 KiB of it
    request TEXT NOT NULL,
    status INTEGER NOT NULL,
    -- the machines the answer names (a JSON array), and the error of a refused request
    machines TEXT NOT NULL,
    error TEXT
);
CREATE INDEX audit_by_time ON audit (at);
