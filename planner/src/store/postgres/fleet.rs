//! What replicas share besides tasks, so that any of them shows the whole
//! system: the workers each one has registered, the modules uploaded
//! through any of them, and the task counts.

use std::collections::BTreeMap;

use super::rows::{self, COLUMNS};
use super::{PgError, PgStore, listen};
use crate::task::Task;

/// A module as the database keeps it.
pub struct StoredModule {
    pub name: String,
    pub digest: String,
    pub bytes: Vec<u8>,
    pub stored_at_ms: u64,
}

impl PgStore {
    /// Writes the views of this replica's workers that changed and removes
    /// those that left, in one transaction. Views are JSON text.
    pub async fn publish_workers(
        &self,
        changed: &[(String, String)],
        removed: &[String],
    ) -> Result<(), PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !changed.is_empty() {
            let ids: Vec<&str> = changed.iter().map(|(id, _)| id.as_str()).collect();
            let views: Vec<&str> = changed.iter().map(|(_, v)| v.as_str()).collect();
            tx.execute(
                "INSERT INTO workers (id, replica, view, updated_at)
                 SELECT id, $1, view::jsonb, now() FROM unnest($2::text[], $3::text[]) AS u(id, view)
                 ON CONFLICT (id) DO UPDATE
                 SET replica = EXCLUDED.replica, view = EXCLUDED.view, updated_at = now()",
                &[&&*self.owner, &ids, &views],
            )
            .await?;
        }
        if !removed.is_empty() {
            // Only rows this replica wrote: a worker that moved to another
            // replica is that one's now.
            tx.execute(
                "DELETE FROM workers WHERE replica = $1 AND id = ANY($2)",
                &[&&*self.owner, &removed],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The views (JSON text) of the workers registered with the other live
    /// replicas.
    pub async fn other_workers(&self) -> Result<Vec<String>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT w.view::text FROM workers w JOIN replicas r ON r.name = w.replica
                 WHERE w.replica <> $1 AND r.expires_at > now()
                 ORDER BY w.id",
                &[&&*self.owner],
            )
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(PgError::from))
            .collect()
    }

    /// Makes `module` the fleet's version of its op and wakes the other
    /// replicas to roll it out to their workers.
    pub async fn store_module(&self, module: &StoredModule) -> Result<(), PgError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO modules (name, digest, bytes, stored_at)
             VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000))
             ON CONFLICT (name) DO UPDATE
             SET digest = EXCLUDED.digest, bytes = EXCLUDED.bytes, stored_at = EXCLUDED.stored_at",
            &[
                &module.name,
                &module.digest,
                &module.bytes,
                &(module.stored_at_ms as f64),
            ],
        )
        .await?;
        tx.execute("SELECT pg_notify('modules_changed', $1)", &[&module.name])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every stored module's name and digest (cheap: no bytes).
    pub async fn module_digests(&self) -> Result<BTreeMap<String, String>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query("SELECT name, digest FROM modules", &[])
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// The stored modules named in `names` (all of them when `None`).
    pub async fn modules(&self, names: Option<&[String]>) -> Result<Vec<StoredModule>, PgError> {
        let client = self.pool.get().await?;
        let select = "SELECT name, digest, bytes, (extract(epoch FROM stored_at) * 1000)::bigint FROM modules";
        let rows = match names {
            Some(names) => {
                client
                    .query(&format!("{select} WHERE name = ANY($1)"), &[&names])
                    .await?
            }
            None => client.query(select, &[]).await?,
        };
        rows.iter()
            .map(|r| {
                Ok(StoredModule {
                    name: r.try_get(0)?,
                    digest: r.try_get(1)?,
                    bytes: r.try_get(2)?,
                    stored_at_ms: r.try_get::<_, i64>(3)?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Tasks that finished at or after `from_ms` (unix ms), oldest first,
    /// at most `limit`: what the event streams show of the other replicas.
    pub async fn finished_since(&self, from_ms: u64, limit: usize) -> Result<Vec<Task>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tasks WHERE {} AND finished_at_ms >= $1
                     ORDER BY finished_at_ms LIMIT $2",
                    crate::store::pg_retention::FINISHED
                ),
                &[&(from_ms as i64), &(limit as i64)],
            )
            .await?;
        Ok(rows::to_tasks(&rows)?)
    }

    /// Fails up to `batch` queued, unclaimed tasks whose op is not in
    /// `offered`, submitted before `cutoff_ms`, unless their own timeout is
    /// longer than `limit_ms` (they asked to wait longer: their deadline
    /// ends them). The janitor's duty: run by the lease holder only.
    pub async fn expire_unoffered(
        &self,
        offered: &[String],
        cutoff_ms: u64,
        limit_ms: u64,
        batch: usize,
    ) -> Result<u64, PgError> {
        let client = self.pool.get().await?;
        let seconds = format!("{}", limit_ms as f64 / 1000.0);
        let failed = client
            .execute(
                "UPDATE tasks SET status = 'failed', result = NULL,
                     error = 'no worker offered op `' || op || '` within ' || $4 || ' s (UNOFFERED_OP_TIMEOUT_MS)',
                     finished_at_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 WHERE id IN (
                     SELECT id FROM tasks
                     WHERE status = 'queued' AND owner IS NULL AND submitted_at_ms < $2
                       AND NOT (op = ANY($1))
                       AND (timeout_ms IS NULL OR timeout_ms <= $3)
                     LIMIT $5 FOR UPDATE SKIP LOCKED)
                   AND status = 'queued' AND owner IS NULL",
                &[
                    &offered,
                    &(cutoff_ms as i64),
                    &(limit_ms as i64),
                    &seconds,
                    &(batch as i64),
                ],
            )
            .await?;
        if failed > 0 {
            listen::notify_finished(&client).await?;
        }
        Ok(failed)
    }

    /// Tasks in the store by op and status, across every replica.
    pub async fn status_counts(&self) -> Result<Vec<(String, String, u64)>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT op, status, count(*) FROM tasks GROUP BY op, status",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get::<_, i64>(2)?.max(0) as u64,
                ))
            })
            .collect()
    }
}
