-- Rollouts and publishes planned on the dashboard or through the API, awaiting the signature of
-- an admin who holds the targets key (`semithin rollout sign ID`, `semithin publish --request
-- ID`; docs/PROTOCOL.md, "Awaiting a signature").
CREATE TABLE pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- `rollout` or `publish`
    kind TEXT NOT NULL,
    -- `awaiting` or `started`
    state TEXT NOT NULL,
    -- the StartRequest as JSON (a publish: its channel and release only)
    request TEXT NOT NULL,
    channel TEXT NOT NULL,
    -- the channel's published release when planned (NULL: none)
    base TEXT,
    rollout BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT
);
