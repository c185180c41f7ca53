-- A batch submission's tasks carry its id (the array's first task id), for
-- GET /batches/{id}.
ALTER TABLE tasks ADD COLUMN batch BIGINT;
CREATE INDEX tasks_batch ON tasks (batch) WHERE batch IS NOT NULL;
