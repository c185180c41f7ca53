//! The task controls on the shared store: idempotency keys, expiring the
//! unclaimed queued tasks whose deadline passed (a claimed task's deadline
//! is kept by the replica holding it), and cancel requests for tasks
//! another replica holds (recorded on the row, its owner told by NOTIFY
//! `tasks_cancel`; see `migrations/0006_cancel_requests.sql`).

use super::rows::{self, COLUMNS};
use super::{PgError, PgStore, listen};
use crate::store::Insertion;
use crate::task::Task;
use wire::TaskId;
use wire::planner::TaskStatus;

/// What a cancel request covers, as stored in `tasks.cancel_requested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelScope {
    /// Named by id: cancelled whether queued or running.
    Any,
    /// A bulk cancel of queued tasks: only if still queued on its owner.
    Queued,
    /// A bulk cancel of running tasks: only if running on its owner.
    Running,
}

impl CancelScope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Queued => "queued",
            Self::Running => "running",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            _ => Self::Any,
        }
    }

    /// Whether a task in `status` is what the request asked to cancel.
    pub fn covers(self, status: TaskStatus) -> bool {
        match self {
            Self::Any => !status.is_final(),
            Self::Queued => status == TaskStatus::Queued,
            Self::Running => status == TaskStatus::Running,
        }
    }
}

/// Where a requested cancel stands, as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestState {
    pub id: TaskId,
    pub status: TaskStatus,
    /// The request is still there: its owner has not handled it yet.
    pub pending: bool,
}

/// Most cancel requests an owner handles per round (the rest next round).
const REQUESTS_PER_ROUND: i64 = 10_000;

/// Most unclaimed tasks expired in one statement.
const EXPIRE_CHUNK: i64 = 2_000;

impl PgStore {
    /// The submission an idempotency key (its digest) first came with.
    pub async fn idempotent(&self, key: &str) -> Result<Option<Insertion>, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT request, ids::text FROM idempotency WHERE key = $1",
                &[&key],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(Insertion::Replay {
            request: row.try_get(0)?,
            ids: crate::store::runs_to_ids(row.try_get(1)?),
        }))
    }

    /// A batch's tasks counted by status as the API shows it: a task a
    /// replica has claimed counts as running (see [`rows::SHOWN_STATUS`]).
    pub async fn batch_counts(
        &self,
        batch: u64,
    ) -> Result<std::collections::BTreeMap<String, u64>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {} AS shown, count(*) FROM tasks WHERE batch = $1 GROUP BY shown",
                    rows::SHOWN_STATUS
                ),
                &[&(batch as i64)],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get::<_, i64>(1)? as u64)))
            .collect()
    }

    /// Expires the unclaimed queued tasks whose deadline is at or before
    /// `now_ms`; returns them.
    pub async fn expire_unclaimed(&self, now_ms: u64) -> Result<Vec<Task>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE tasks SET status = 'expired', finished_at_ms = $1,
                         error = 'deadline passed: still queued ' || ($1 - submitted_at_ms)
                             || ' ms after submission (timeout_ms ' || (deadline_ms - submitted_at_ms) || ')'
                     WHERE id IN (SELECT id FROM tasks
                                  WHERE status = 'queued' AND owner IS NULL AND deadline_ms IS NOT NULL
                                    AND deadline_ms <= $1
                                  ORDER BY deadline_ms LIMIT $2 FOR UPDATE SKIP LOCKED)
                       AND status = 'queued' AND owner IS NULL
                     RETURNING {COLUMNS}"
                ),
                &[&(now_ms as i64), &EXPIRE_CHUNK],
            )
            .await?;
        listen::finished_tasks(&client, &rows).await
    }

    /// Records a cancel request on the unfinished tasks held by a replica
    /// (any replica with `ids`, the others otherwise) among `ids`, or of
    /// `op` (any op without one), and tells their owners. Returns the ids
    /// requested. A task not held by any replica is not touched: cancel it
    /// with [`PgStore::cancel_unclaimed`] instead.
    pub async fn request_cancel(
        &self,
        ids: Option<&[TaskId]>,
        op: Option<&str>,
        scope: CancelScope,
    ) -> Result<Vec<TaskId>, PgError> {
        let ids: Option<Vec<i64>> = ids.map(|ids| ids.iter().map(|id| *id as i64).collect());
        // By id, this replica's own rows count too (a claim racing with the
        // cancel: the task is about to be on this board); by filter, this
        // replica's board was cancelled directly.
        let skip_owner: Option<&str> = if ids.is_some() {
            None
        } else {
            Some(&*self.owner)
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                "UPDATE tasks SET cancel_requested = $3
                 WHERE status = 'queued' AND owner IS NOT NULL
                   AND ($1::bigint[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR op = $2)
                   AND ($4::text IS NULL OR owner <> $4)
                 RETURNING id, owner",
                &[&ids, &op, &scope.as_str(), &skip_owner],
            )
            .await?;
        let mut owners: Vec<String> = Vec::new();
        let mut requested = Vec::with_capacity(rows.len());
        for row in &rows {
            requested.push(row.try_get::<_, i64>(0)? as TaskId);
            let owner: String = row.try_get(1)?;
            if !owners.contains(&owner) {
                owners.push(owner);
            }
        }
        if !owners.is_empty() {
            tx.execute(
                "SELECT pg_notify('tasks_cancel', o) FROM unnest($1::text[]) AS o",
                &[&owners],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(requested)
    }

    /// The cancel requests on the unfinished tasks this replica holds.
    pub async fn cancel_requests(&self) -> Result<Vec<(TaskId, CancelScope)>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, cancel_requested FROM tasks
                 WHERE owner = $1 AND cancel_requested IS NOT NULL AND status IN ('queued', 'running')
                 LIMIT $2",
                &[&&*self.owner, &REQUESTS_PER_ROUND],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get::<_, i64>(0)? as TaskId,
                    CancelScope::parse(row.try_get(1)?),
                ))
            })
            .collect()
    }

    /// Drops the cancel requests on `ids` (what they asked for did not
    /// apply: the task was in another state).
    pub async fn clear_cancel_requests(&self, ids: &[TaskId]) -> Result<(), PgError> {
        let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        let client = self.pool.get().await?;
        client
            .execute(
                "UPDATE tasks SET cancel_requested = NULL WHERE id = ANY($1) AND owner = $2",
                &[&ids, &&*self.owner],
            )
            .await?;
        Ok(())
    }

    /// Cancels, in the database only, tasks this replica owns but does not
    /// hold on its board (nothing here would ever record them).
    pub async fn cancel_owned(&self, ids: &[TaskId], now_ms: u64) -> Result<Vec<Task>, PgError> {
        let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE tasks SET status = 'cancelled', finished_at_ms = $3, owner = NULL,
                         cancel_requested = NULL
                     WHERE id = ANY($1) AND owner = $2 AND status IN ('queued', 'running')
                     RETURNING {COLUMNS}"
                ),
                &[&ids, &&*self.owner, &(now_ms as i64)],
            )
            .await?;
        listen::finished_tasks(&client, &rows).await
    }

    /// Settles the cancel requests on tasks no replica holds any more (their
    /// owner gave them back or died before handling the request): the
    /// queued ones a request covers are cancelled (returned), the other
    /// requests dropped.
    pub async fn cancel_released(&self, now_ms: u64) -> Result<Vec<Task>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE tasks SET status = 'cancelled', finished_at_ms = $1, cancel_requested = NULL
                     WHERE id IN (SELECT id FROM tasks
                                  WHERE owner IS NULL AND cancel_requested IN ('any', 'queued')
                                    AND status IN ('queued', 'running')
                                  LIMIT $2 FOR UPDATE SKIP LOCKED)
                       AND owner IS NULL AND status = 'queued'
                     RETURNING {COLUMNS}"
                ),
                &[&(now_ms as i64), &EXPIRE_CHUNK],
            )
            .await?;
        client
            .execute(
                "UPDATE tasks SET cancel_requested = NULL
                 WHERE owner IS NULL AND cancel_requested = 'running' AND status IN ('queued', 'running')",
                &[],
            )
            .await?;
        listen::finished_tasks(&client, &rows).await
    }

    /// Where the cancel requests on `ids` stand.
    pub async fn request_states(&self, ids: &[TaskId]) -> Result<Vec<RequestState>, PgError> {
        let ids: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, {}, cancel_requested IS NOT NULL FROM tasks WHERE id = ANY($1)",
                    rows::SHOWN_STATUS
                ),
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RequestState {
                    id: row.try_get::<_, i64>(0)? as TaskId,
                    status: rows::status(row.try_get(1)?),
                    pending: row.try_get(2)?,
                })
            })
            .collect()
    }
}
