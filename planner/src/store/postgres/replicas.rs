//! What several replicas on one database do to share the work: claim queued
//! tasks in batches, give back what they cannot run, renew their liveness,
//! and (one at a time, under the `janitor` lease) give the tasks of replicas
//! presumed dead back to the queue.

use std::time::Duration;

use wire::TaskId;

use super::rows::{self, COLUMNS, SHOWN_STATUS};
use super::{PgError, PgStore, listen};
use crate::board::{CancelError, TaskFilter};
use crate::task::Task;

/// What a replica may claim: per op, at most that many tasks; `total` at
/// most overall (a general worker's free slot counts for each of its ops).
pub struct Demand {
    pub ops: Vec<String>,
    pub per_op: Vec<i64>,
    pub total: i64,
    /// What the replica would hold with nothing queued on its board: `total`
    /// well below it means enough is already there.
    pub target: i64,
}

/// How a renewal went.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The row was there and is renewed.
    Renewed,
    /// The row was gone: presumed dead by another replica, which gave this
    /// one's tasks back to the queue. Whatever this replica holds is stale.
    Fenced,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl PgStore {
    /// Claims the free tasks this replica can run, highest priority first,
    /// then oldest, across ops, within each op's share. Rows another replica is claiming at the same
    /// moment are skipped, not waited for.
    pub async fn claim(&self, demand: &Demand) -> Result<Vec<Task>, PgError> {
        if demand.total <= 0 || demand.ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // A claim need not wait for the disk: if the database loses it in a
        // crash, the task is free again with its old claim number and the
        // result this replica sends is refused (the owner no longer
        // matches), so it is recorded once all the same; it may run twice,
        // as after any crash. Waiting for the flush made claims the bound
        // on throughput (one fsync per batch).
        tx.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
        let rows = tx
            .query(
                &format!(
                    "WITH picked AS (
                         SELECT t.id AS pid FROM unnest($1::text[], $2::bigint[]) AS w(op, n),
                         LATERAL (SELECT id, priority FROM tasks
                                  WHERE status = 'queued' AND owner IS NULL AND op = w.op
                                    AND cancel_requested IS NULL
                                    AND (retry_at_ms IS NULL OR retry_at_ms <= $5)
                                  ORDER BY priority DESC, id LIMIT w.n FOR UPDATE SKIP LOCKED) t
                         ORDER BY t.priority DESC, t.id LIMIT $3)
                     UPDATE tasks SET owner = $4, claim = claim + 1
                     FROM picked WHERE tasks.id = picked.pid AND tasks.owner IS NULL
                     RETURNING claim, {COLUMNS}"
                ),
                &[
                    &demand.ops,
                    &demand.per_op,
                    &demand.total,
                    &&*self.owner,
                    &(serve::now_ms() as i64),
                ],
            )
            .await?;
        tx.commit().await?;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            let claim: i64 = row.try_get(0)?;
            // Claimed tasks are queued on this replica's board until sent.
            let mut task = rows::to_task_at(row, 1)?;
            task.status = wire::planner::TaskStatus::Queued;
            self.claims.hold(task.id, claim);
            tasks.push(task);
        }
        tasks.sort_by_key(|t| t.id);
        Ok(tasks)
    }

    /// Gives tasks back to the queue for any replica (no capable worker
    /// here any more).
    pub async fn release(&self, tasks: &[(TaskId, u32)]) -> Result<u64, PgError> {
        let attempts: std::collections::HashMap<TaskId, u32> = tasks.iter().copied().collect();
        let ids: Vec<TaskId> = tasks.iter().map(|(id, _)| *id).collect();
        let held = self.claims.take(&ids);
        if held.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(held.len());
        let mut claims = Vec::with_capacity(held.len());
        let mut counts = Vec::with_capacity(held.len());
        for (id, claim) in held {
            ids.push(id as i64);
            claims.push(claim);
            counts.push(attempts.get(&id).copied().unwrap_or(0) as i32);
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let released = tx
            .execute(
                "UPDATE tasks SET owner = NULL, status = 'queued', worker = NULL, started_at_ms = NULL,
                     attempts = r.attempts
                 FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS r(id, claim, attempts)
                 WHERE tasks.id = r.id AND tasks.owner = $4 AND tasks.claim = r.claim
                   AND tasks.status IN ('queued', 'running')",
                &[&ids, &claims, &counts, &&*self.owner],
            )
            .await?;
        tx.execute("SELECT pg_notify('tasks_queued', '')", &[])
            .await?;
        tx.commit().await?;
        Ok(released)
    }

    /// On a clean stop: every unfinished task back to the queue, this
    /// replica's row and its workers' rows gone, so the others take over at
    /// once instead of after the lease.
    pub async fn leave(&self) -> Result<u64, PgError> {
        self.claims.clear();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let released = tx
            .execute(
                "UPDATE tasks SET owner = NULL, status = 'queued', worker = NULL, started_at_ms = NULL
                 WHERE owner = $1 AND status IN ('queued', 'running')",
                &[&&*self.owner],
            )
            .await?;
        tx.execute("DELETE FROM replicas WHERE name = $1", &[&&*self.owner])
            .await?;
        tx.execute("DELETE FROM workers WHERE replica = $1", &[&&*self.owner])
            .await?;
        tx.execute("SELECT pg_notify('tasks_queued', '')", &[])
            .await?;
        tx.commit().await?;
        Ok(released)
    }

    /// Says this replica is alive for `lease` more. The first call creates
    /// the row; a later call that has to create it again was fenced.
    pub async fn renew(&self, url: Option<&str>, lease: Duration) -> Result<Renewal, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO replicas (name, url, expires_at)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, expires_at = EXCLUDED.expires_at
                 RETURNING (xmax = 0) AS inserted",
                &[&&*self.owner, &url, &millis(lease)],
            )
            .await?;
        let inserted: bool = row.try_get(0)?;
        let first = !self
            .renewed_once
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        Ok(if inserted && !first {
            Renewal::Fenced
        } else {
            Renewal::Renewed
        })
    }

    /// Takes or keeps the `janitor` lease and, while holding it (the row
    /// stays locked until the transaction ends, so no other replica acts at
    /// the same time), gives the tasks of replicas presumed dead back to the
    /// queue. Returns how many tasks went back, `None` if another replica
    /// holds the lease.
    pub async fn janitor(&self, lease: Duration) -> Result<Option<u64>, PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let held = tx
            .query_opt(
                "INSERT INTO leases (name, holder, term, expires_at)
                 VALUES ('janitor', $1, 1, now() + $2 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE
                     SET holder = $1, expires_at = EXCLUDED.expires_at,
                         term = leases.term + CASE WHEN leases.holder = $1 THEN 0 ELSE 1 END
                     WHERE leases.holder = $1 OR leases.expires_at < now()
                 RETURNING term",
                &[&&*self.owner, &millis(lease)],
            )
            .await?;
        let Some(held) = held else {
            tx.rollback().await?;
            return Ok(None);
        };
        let term: i64 = held.try_get(0)?;
        let dead: Vec<String> = tx
            .query(
                "DELETE FROM replicas WHERE expires_at < now() RETURNING name",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let requeued = tx
            .execute(
                "UPDATE tasks SET owner = NULL, status = 'queued', worker = NULL, started_at_ms = NULL
                 WHERE owner IS NOT NULL AND status IN ('queued', 'running')
                   AND NOT EXISTS (SELECT 1 FROM replicas r WHERE r.name = tasks.owner)",
                &[],
            )
            .await?;
        tx.execute(
            "DELETE FROM workers w WHERE NOT EXISTS (SELECT 1 FROM replicas r WHERE r.name = w.replica)",
            &[],
        )
        .await?;
        if requeued > 0 {
            tx.execute("SELECT pg_notify('tasks_queued', '')", &[])
                .await?;
        }
        tx.commit().await?;
        if !dead.is_empty() || requeued > 0 {
            tracing::warn!(term, replicas = ?dead, requeued, "replicas presumed dead; their tasks are queued again");
        }
        Ok(Some(requeued))
    }

    /// True the first time it is called for `name` on this database, ever.
    pub async fn first_time(&self, name: &str) -> Result<bool, PgError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO markers (name) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&name],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Those of `ids` that reached a final state (recorded by any replica).
    pub async fn finished_among(&self, ids: &[TaskId]) -> Result<Vec<Task>, PgError> {
        let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tasks WHERE id = ANY($1) AND status NOT IN {}",
                    rows::UNFINISHED
                ),
                &[&ids],
            )
            .await?;
        Ok(rows::to_tasks(&rows)?)
    }

    /// Cancels a task no replica has claimed. A claimed one is about to run
    /// or running on the replica that holds it.
    pub async fn cancel_unclaimed(
        &self,
        id: TaskId,
        now_ms: u64,
    ) -> Result<Result<Task, CancelError>, PgError> {
        let client = self.pool.get().await?;
        let cancelled = client
            .query_opt(
                &format!(
                    "UPDATE tasks SET status = 'cancelled', finished_at_ms = $2
                     WHERE id = $1 AND status = 'queued' AND owner IS NULL RETURNING {COLUMNS}"
                ),
                &[&(id as i64), &(now_ms as i64)],
            )
            .await?;
        if let Some(row) = cancelled {
            listen::notify_finished(&client).await?;
            return Ok(Ok(rows::to_task(&row)?));
        }
        let found = client
            .query_opt(
                "SELECT status, owner IS NOT NULL FROM tasks WHERE id = $1",
                &[&(id as i64)],
            )
            .await?;
        Ok(Err(match found {
            None => CancelError::NotFound,
            Some(row) => {
                let status: String = row.try_get(0)?;
                let claimed: bool = row.try_get(1)?;
                let status = match status.as_str() {
                    "queued" if claimed => wire::planner::TaskStatus::Running,
                    other => rows::status(other),
                };
                CancelError::NotQueued(status)
            }
        }))
    }

    /// Tasks waiting in the whole system, counted up to `cap` (enough to
    /// enforce the queue limit without counting a huge backlog).
    pub async fn queued(&self, cap: usize) -> Result<usize, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE status = 'queued' LIMIT $1) q",
                &[&(cap as i64)],
            )
            .await?;
        Ok(row.try_get::<_, i64>(0)? as usize)
    }
}

impl PgStore {
    /// A page of the task list, newest first, from the database (every
    /// replica's tasks).
    pub async fn page(&self, filter: &TaskFilter, limit: usize) -> Result<Vec<Task>, PgError> {
        let client = self.pool.get().await?;
        let status = filter.status.map(|s| s.as_str().to_string());
        let before = filter.before.map(|b| b as i64);
        let since = filter.since_ms.map(|s| s as i64);
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tasks
                     WHERE ($1::text IS NULL OR {SHOWN_STATUS} = $1) AND ($2::text IS NULL OR op = $2)
                       AND ($3::bigint IS NULL OR id < $3) AND ($4::bigint IS NULL OR submitted_at_ms >= $4)
                     ORDER BY id DESC LIMIT $5"
                ),
                &[&status, &filter.op, &before, &since, &(limit as i64)],
            )
            .await?;
        Ok(rows::to_tasks(&rows)?)
    }

    /// Cancels the unclaimed queued tasks among `ids`, or (without ids)
    /// every unclaimed queued task of `op` (of any op without one).
    pub async fn cancel_unclaimed_many(
        &self,
        ids: Option<&[TaskId]>,
        op: Option<&str>,
        now_ms: u64,
    ) -> Result<Vec<Task>, PgError> {
        let ids: Option<Vec<i64>> = ids.map(|ids| ids.iter().map(|id| *id as i64).collect());
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE tasks SET status = 'cancelled', finished_at_ms = $3
                     WHERE status = 'queued' AND owner IS NULL
                       AND ($1::bigint[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR op = $2)
                     RETURNING {COLUMNS}"
                ),
                &[&ids, &op, &(now_ms as i64)],
            )
            .await?;
        listen::finished_tasks(&client, &rows).await
    }
}
