//! The PostgreSQL store (`STORE=postgres`): any number of planner replicas
//! on one database.
//!
//! - Ids come from the `task_ids` sequence, so none is ever handed out twice.
//! - [`writer`]: submissions are group-committed and acknowledged after their
//!   commit; results are written behind under the claim this replica holds.
//! - [`replicas`]: submitted tasks are free for any replica; each claims the
//!   oldest it can run, in batches sized to its free worker slots (`FOR
//!   UPDATE SKIP LOCKED`), renews its liveness row, and the holder of the
//!   `janitor` lease gives the tasks of replicas presumed dead back.
//! - [`fleet`]: the workers, modules and counts every replica shows.
//! - [`listen`]: NOTIFY wake-ups between replicas (hints; everything polls).
//! - [`migrate`]: versioned schema files, applied once however many start.
//!
//! The design, and what is still missing, is in `../README.md`.

mod claims;
mod connect;
mod controls;
mod fleet;
mod listen;
mod migrate;
mod replicas;
mod rows;
mod writer;

pub use connect::Target;
pub use controls::{CancelScope, RequestState};
pub use fleet::StoredModule;
pub use listen::Wakeups;
pub use replicas::{Demand, Renewal};

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use wire::TaskId;

use super::{Recovered, Write};
use crate::task::Task;
use claims::Claims;
use rows::COLUMNS;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("the store's writer has stopped")]
    Stopped,
    #[error("{0}")]
    Commit(String),
    #[error("schema migration: {0}")]
    Migration(String),
}

pub struct PgStore {
    pool: Pool,
    target: Target,
    writer: mpsc::UnboundedSender<Write>,
    /// This replica's name in the rows it owns.
    owner: Arc<str>,
    claims: Claims,
    renewed_once: AtomicBool,
}

/// Connects (retrying with backoff until `timeout`), applies migrations and
/// reads the most recent finished tasks. `owner` names this replica in the
/// rows it claims.
pub async fn open(
    target: &Target,
    timeout: Duration,
    owner: String,
    recent_finished: usize,
) -> Result<(PgStore, Recovered), String> {
    let pool = connect::pool(target).map_err(|e| format!("{e:#}"))?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        match prepare(&pool, recent_finished).await {
            Ok(recovered) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let owner: Arc<str> = owner.into();
                let claims = Claims::default();
                tokio::spawn(writer::write_loop(
                    pool.clone(),
                    owner.clone(),
                    claims.clone(),
                    rx,
                ));
                let store = PgStore {
                    pool,
                    target: target.clone(),
                    writer: tx,
                    owner,
                    claims,
                    renewed_once: AtomicBool::new(false),
                };
                return Ok((store, recovered));
            }
            Err(PgError::Migration(message)) => return Err(message),
            Err(err) if Instant::now() + backoff < deadline => {
                tracing::warn!(database = %target.shown, error = %err, retry_in_ms = backoff.as_millis() as u64, "database not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(format!(
                    "cannot reach the database at {} within {} ms: {err}",
                    target.shown,
                    timeout.as_millis()
                ));
            }
        }
    }
}

async fn prepare(pool: &Pool, recent_finished: usize) -> Result<Recovered, PgError> {
    let mut client = pool.get().await?;
    migrate::migrate(&mut client).await?;
    recent(&client, recent_finished).await
}

/// The most recent finished tasks, for the board's memory. Unfinished tasks
/// are not taken over here: they are claimed like any queued task, and
/// those of a replica that died come back when the janitor sees its lease
/// expire.
async fn recent(
    client: &deadpool_postgres::Client,
    recent_finished: usize,
) -> Result<Recovered, PgError> {
    let fresh: bool = client
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM tasks) AND NOT (SELECT is_called FROM task_ids)",
            &[],
        )
        .await?
        .try_get(0)?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE status NOT IN {} ORDER BY id DESC LIMIT $1",
                rows::UNFINISHED
            ),
            &[&(recent_finished as i64)],
        )
        .await?;
    let mut tasks = rows::to_tasks(&rows)?;
    tasks.reverse();
    Ok(Recovered {
        tasks,
        // Unused: ids come from the sequence.
        next_id: 0,
        fresh,
    })
}

impl PgStore {
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Starts LISTENing for the other replicas' wake-ups.
    pub fn listen(&self, wake: Wakeups) {
        tokio::spawn(listen::listen_forever(self.target.clone(), wake));
    }

    pub async fn new_ids(&self, n: usize) -> Result<Vec<TaskId>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT nextval('task_ids') FROM generate_series(1::bigint, $1::bigint)",
                &[&(n as i64)],
            )
            .await?;
        let mut ids = rows
            .iter()
            .map(|r| r.try_get::<_, i64>(0).map(|id| id as TaskId))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    pub async fn insert(
        &self,
        tasks: Vec<Task>,
        key: Option<crate::store::Idempotency>,
    ) -> Result<crate::store::Insertion, PgError> {
        let (ack, done) = oneshot::channel();
        self.writer
            .send(Write::Insert(tasks, key, ack))
            .map_err(|_| PgError::Stopped)?;
        match done.await {
            Ok(Ok(insertion)) => Ok(insertion),
            Ok(Err(message)) => Err(PgError::Commit(message)),
            Err(_) => Err(PgError::Stopped),
        }
    }

    pub fn finished(&self, task: Task) {
        let _ = self.writer.send(Write::Finished(task));
    }

    pub fn progress(&self, progress: crate::board::Progress) {
        let _ = self.writer.send(Write::Progress(progress));
    }

    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                &[&(id as i64)],
            )
            .await?;
        Ok(row.as_ref().map(rows::to_task).transpose()?)
    }

    /// Drops every claim: after being fenced, nothing held is ours.
    pub fn forget_claims(&self) {
        self.claims.clear();
    }

    /// Waits until everything sent so far has been tried once (results
    /// that could not be written are still retried in the background).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Write::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
