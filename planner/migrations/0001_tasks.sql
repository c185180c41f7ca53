-- Tasks and their results. Ids come from a sequence, so no id is ever
-- handed out twice, by any replica, even after every row is gone.
CREATE SEQUENCE task_ids AS BIGINT START WITH 1;

CREATE TABLE tasks (
    id BIGINT PRIMARY KEY,
    op TEXT NOT NULL,
    args JSONB NOT NULL,
    status TEXT NOT NULL,
    result BIGINT,
    error TEXT,
    worker TEXT,
    digest TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted_at_ms BIGINT NOT NULL,
    started_at_ms BIGINT,
    finished_at_ms BIGINT,
    -- The replica whose board holds the task while it is unfinished: only it
    -- records the task's result (the exactly-once guard).
    owner TEXT NOT NULL
);

CREATE INDEX tasks_unfinished ON tasks (id) WHERE status IN ('queued', 'running');
