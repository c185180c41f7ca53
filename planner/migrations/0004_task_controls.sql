-- Task controls (issue 13): deadlines, retries, priorities, idempotency keys.
ALTER TABLE tasks
    ADD COLUMN priority SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN retries INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN retried INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN timeout_ms BIGINT,
    ADD COLUMN deadline_ms BIGINT,
    ADD COLUMN attempt_errors JSONB;

-- Claims take the free tasks of an op by priority, then age.
CREATE INDEX tasks_claimable_by_priority ON tasks (op, priority DESC, id)
    WHERE status = 'queued' AND owner IS NULL;
DROP INDEX IF EXISTS tasks_claimable;

-- Unclaimed queued tasks past their deadline are expired in the database.
CREATE INDEX tasks_deadline ON tasks (deadline_ms)
    WHERE status = 'queued' AND owner IS NULL AND deadline_ms IS NOT NULL;

-- Idempotency keys (sha256 of the key) → the ids of the submission that
-- first used them; deleted with the results (RESULT_TTL).
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    ids JSONB NOT NULL,
    first_id BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at_ms);
