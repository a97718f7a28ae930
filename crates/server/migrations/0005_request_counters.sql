-- The highest request counter accepted from each machine (docs/PROTOCOL.md, "Signed requests"):
-- a request at or below it is refused, also after a restart. Kept when a machine is removed, so
-- requests of its key stay refused should it enroll again.
CREATE TABLE request_counters (
    machine TEXT PRIMARY KEY,
    counter BIGINT NOT NULL
);
