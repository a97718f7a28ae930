-- The relays a machine's last check-in came through (docs/RELAY.md), nearest the machine
-- first, comma-separated; a machine that checks in straight to the server has no row.
CREATE TABLE machine_relays (
    machine TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    seen_at BIGINT NOT NULL
);

-- The relays the admin placed a machine under (`fleet move --relay`), comma-separated URLs in
-- the order it tries them; told in its check-in answers.
CREATE TABLE machine_placement (
    machine TEXT PRIMARY KEY,
    upstreams TEXT NOT NULL
);
