-- A relay's last report of its own health (docs/RELAY.md): with each batch of check-ins it
-- sends and on its own every minute; `status` is the JSON of a `RelayStatus`.
CREATE TABLE relay_status (
    machine TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    status TEXT NOT NULL
);
