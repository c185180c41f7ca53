-- Several planner replicas on one database (issue #11).
--
-- A task is owned by the replica whose board holds it; `owner` NULL means
-- queued and free for any replica to claim. `claim` counts the claims, so a
-- replica records a result only for the claim it holds: a replica presumed
-- dead whose tasks were claimed again cannot record a late result.
ALTER TABLE tasks ALTER COLUMN owner DROP NOT NULL;
ALTER TABLE tasks ADD COLUMN claim BIGINT NOT NULL DEFAULT 0;

-- Claims take the oldest free tasks of an op.
CREATE INDEX tasks_claimable ON tasks (op, id) WHERE status = 'queued' AND owner IS NULL;
-- Finding the unfinished tasks of a replica (release, re-queue when it died).
CREATE INDEX tasks_owned ON tasks (owner) WHERE status IN ('queued', 'running');

-- Live replicas: each renews its row; a row past `expires_at` is a replica
-- presumed dead, whose tasks go back to the queue.
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    url TEXT,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);

-- Singleton duties: one holder at a time, with a term that grows with
-- every change of holder.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Things done once per database (seeding TASKS).
CREATE TABLE markers (
    name TEXT PRIMARY KEY,
    done_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The workers each replica has registered, for fleet-wide views. Written on
-- register and leave, not per heartbeat; rows of a dead replica go with it.
CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    replica TEXT NOT NULL,
    view JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Modules uploaded through any replica, for every replica to roll out.
CREATE TABLE modules (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    stored_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
