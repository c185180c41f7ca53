//! Retention on the PostgreSQL store: finished tasks older than
//! `RESULT_TTL` are deleted in small batches, each its own short statement.
//!
//! Batched deletes rather than partitions: a task's row changes from queued
//! to finished in place, so partitioning by finish time would move every row
//! between partitions on its last update, and partitioning by id (submission
//! order) can only drop a partition once every task in it has finished (one
//! long-queued task pins a whole partition); both need partitions created
//! ahead of time and the partition key in the primary key. A batch of at
//! most `chunk` rows, picked through an index on the finish time with `SKIP
//! LOCKED` (so replicas expiring at once never wait on each other), holds
//! its locks for milliseconds; autovacuum then makes the dead tuples'
//! space reusable, so the table stops growing at about `RESULT_TTL` of
//! tasks (plus what autovacuum has not reached yet). Tune it per table if
//! the delete rate is high: `ALTER TABLE tasks SET
//! (autovacuum_vacuum_scale_factor = 0.02)`.
//!
//! Kept apart from `postgres.rs` (which only lends its pool) so that the
//! store's core can change without touching retention.

use deadpool_postgres::Pool;

use super::postgres::PgError;

/// The index the batches are picked through: the oldest finished first.
/// Built concurrently (never locking the table against writes) by
/// [`prepare`]; belongs in a migration once the schema settles.
/// (`tasks_finished` replaces `tasks_expiry`, which did not cover the
/// `expired` status: dropped once the new one is in.)
const EXPIRY_INDEX: &str = "CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_finished \
     ON tasks (finished_at_ms) WHERE status NOT IN ('queued', 'running')";
const OLD_EXPIRY_INDEX: &str = "DROP INDEX CONCURRENTLY IF EXISTS tasks_expiry";
/// The predicate of that index: queries that use it repeat it exactly.
pub const FINISHED: &str = "status NOT IN ('queued', 'running')";

/// Makes sure the expiry index exists. Idempotent; safe with several
/// planners starting at once (one builds it, the others wait or see it).
pub async fn prepare(pool: &Pool) -> Result<(), PgError> {
    let client = pool.get().await?;
    client.batch_execute(EXPIRY_INDEX).await?;
    client.batch_execute(OLD_EXPIRY_INDEX).await?;
    Ok(())
}

/// Deletes up to `chunk` tasks that finished before `before_ms` (unix ms),
/// and idempotency keys stored before `keys_before_ms`; returns how many
/// tasks.
pub async fn expire(
    pool: &Pool,
    before_ms: Option<u64>,
    keys_before_ms: Option<u64>,
    chunk: usize,
) -> Result<u64, PgError> {
    let client = pool.get().await?;
    let deleted = match before_ms {
        Some(before_ms) => {
            client
                .execute(
                    "DELETE FROM tasks WHERE id IN (
                        SELECT id FROM tasks
                        WHERE status NOT IN ('queued', 'running') AND finished_at_ms < $1
                        ORDER BY finished_at_ms LIMIT $2
                        FOR UPDATE SKIP LOCKED)",
                    &[&(before_ms as i64), &(chunk as i64)],
                )
                .await?
        }
        None => 0,
    };
    // Idempotency keys have their own window (IDEMPOTENCY_TTL); small rows,
    // so a larger step keeps up with many keyed submissions per second.
    if let Some(keys_before_ms) = keys_before_ms {
        client
            .execute(
                "DELETE FROM idempotency WHERE key IN (
                    SELECT key FROM idempotency WHERE created_at_ms < $1 LIMIT $2
                    FOR UPDATE SKIP LOCKED)",
                &[&(keys_before_ms as i64), &(8 * chunk as i64)],
            )
            .await?;
    }
    Ok(deleted)
}
