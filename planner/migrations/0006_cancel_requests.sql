-- Cancelling a task another replica holds (issue 13): the request is
-- recorded on the task's row and its owner is told by NOTIFY `tasks_cancel`
-- (payload: the owner's name); the owner ends the task (interrupting its
-- worker) and records it cancelled. It also polls, as NOTIFY is a hint.
-- `cancel_requested` says what the request covers: 'any' (by id), or
-- 'queued' / 'running' (a bulk cancel by status, applied to the task as its
-- owner finds it).
ALTER TABLE tasks
    ADD COLUMN cancel_requested TEXT,
    -- A retry waiting out its backoff: not claimed before this time (unix
    -- ms), so a restart or a hand-over never runs it early.
    ADD COLUMN retry_at_ms BIGINT;

CREATE INDEX tasks_cancel_requested ON tasks (owner)
    WHERE cancel_requested IS NOT NULL AND status IN ('queued', 'running');
