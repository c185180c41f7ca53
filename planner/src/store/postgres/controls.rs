//! The task controls on the shared store: idempotency keys, and expiring
//! the unclaimed queued tasks whose deadline passed (a claimed task's
//! deadline is kept by the replica holding it).

use super::rows::{self, COLUMNS};
use super::{PgError, PgStore};
use crate::store::Insertion;
use crate::task::Task;

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

    /// A batch's tasks counted by stored status (a claimed task counts as
    /// queued until it finishes).
    pub async fn batch_counts(
        &self,
        batch: u64,
    ) -> Result<std::collections::BTreeMap<String, u64>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT status, count(*) FROM tasks WHERE batch = $1 GROUP BY status",
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
        if !rows.is_empty() {
            client
                .execute("SELECT pg_notify('tasks_finished', '')", &[])
                .await?;
        }
        Ok(rows::to_tasks(&rows)?)
    }
}
