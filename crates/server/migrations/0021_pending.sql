-- Rollouts planned on the dashboard or through the API, awaiting the signature of an admin who
-- holds the targets key (`semithin rollout sign ID`; docs/PROTOCOL.md, "Rollouts awaiting a
-- signature").
CREATE TABLE pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- `awaiting` or `started`
    state TEXT NOT NULL,
    -- the StartRequest as JSON
    request TEXT NOT NULL,
    channel TEXT NOT NULL,
    -- the channel's published release when planned (NULL: none)
    base TEXT,
    rollout BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT
);
