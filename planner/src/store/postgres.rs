//! The PostgreSQL store (`STORE=postgres`): the same write-behind, group
//! committed design as the SQLite store, on a connection pool.
//!
//! - Ids come from the `task_ids` sequence, so none is ever handed out twice.
//! - Submissions are acknowledged after their commit; whatever queued up
//!   while the previous transaction ran goes into the next one, as one
//!   `INSERT ... SELECT FROM unnest(...)` per batch.
//! - Results are written behind and only by the task's owner, and only
//!   while the task is unfinished (`WHERE id = .. AND owner = $me AND status
//!   IN ('queued', 'running')`): a result is recorded once even if a stale
//!   writer tries again. A failed write of results is retried until it
//!   lands, so nothing acknowledged is lost while the database is away.
//! - Schema migrations (`planner/migrations/NNNN_name.sql`, embedded in the
//!   binary) are applied at start under a transaction-scoped advisory lock,
//!   so planners starting together on a fresh database apply each once.
//!
//! One replica per database for now: a starting planner takes over every
//! unfinished task. The design for several replicas (leases, claiming with
//! `FOR UPDATE SKIP LOCKED`) is in `planner/src/store/README.md`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use wire::planner::TaskStatus;
use wire::{Output, TaskId};

use super::{Recovered, Write};
use crate::task::Task;

/// The schema's versions, oldest first: (version, name, SQL). Applied ones
/// are recorded with a checksum; editing an applied file is refused.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "tasks", include_str!("../../migrations/0001_tasks.sql"))];

/// The advisory lock key serialising migrations ("planner" in ASCII).
const MIGRATION_LOCK: i64 = 0x0070_6c61_6e6e_6572;

/// Most writes in one transaction.
const MAX_BATCH: usize = 8192;

/// Connections in the pool: the writer, plus reads (`GET /tasks/{id}` of
/// tasks no longer in memory, id allocation).
const POOL_SIZE: usize = 16;

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

/// Where to connect: the URL and what may be shown of it.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    /// `host:port/database`, never the password.
    pub shown: String,
}

impl Target {
    /// Parses a `postgres://` URL (or key=value string).
    pub fn parse(url: &str) -> Result<Self, String> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports = config.get_ports();
        let port = ports.first().copied().unwrap_or(5432);
        let host = if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        };
        let database = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres");
        Ok(Self {
            shown: format!("{host}:{port}/{database}"),
            config,
        })
    }
}

pub struct PgStore {
    pool: Pool,
    writer: mpsc::UnboundedSender<Write>,
}

/// Connects (retrying with backoff until `timeout`), applies migrations and
/// recovers this replica's tasks. `owner` names this replica in the rows it
/// owns.
pub async fn open(
    target: &Target,
    timeout: Duration,
    owner: String,
    recent_finished: usize,
) -> Result<(PgStore, Recovered), String> {
    let pool = pool(target).map_err(|e| format!("{e:#}"))?;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(100);
    loop {
        match prepare(&pool, &owner, recent_finished).await {
            Ok(recovered) => {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_loop(pool.clone(), owner, rx));
                return Ok((PgStore { pool, writer: tx }, recovered));
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

fn pool(target: &Target) -> anyhow::Result<Pool> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
    let mut config = target.config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(POOL_SIZE).build()?)
}

async fn prepare(pool: &Pool, owner: &str, recent_finished: usize) -> Result<Recovered, PgError> {
    let mut client = pool.get().await?;
    migrate(&mut client).await?;
    recover(&mut client, owner, recent_finished).await
}

/// Applies the migrations this database lacks, one planner at a time.
async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            checksum TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied: HashMap<i64, String> = tx
        .query("SELECT version, checksum FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for &(version, name, sql) in MIGRATIONS {
        let checksum = wire::digest_hex(sql.as_bytes());
        match applied.get(&version) {
            Some(seen) if *seen == checksum => continue,
            Some(_) => {
                return Err(PgError::Migration(format!(
                    "migration {version} ({name}) differs from the one applied to this database"
                )));
            }
            None => {}
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| PgError::Migration(format!("migration {version} ({name}): {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&version, &name, &checksum],
        )
        .await?;
        tracing::info!(version, name, "applied schema migration");
    }
    if let Some(newest) = applied.keys().max()
        && *newest > MIGRATIONS.last().map_or(0, |m| m.0)
    {
        tracing::warn!(
            newest,
            "the database has migrations this planner does not know (a newer planner ran here)"
        );
    }
    tx.commit().await?;
    Ok(())
}

const COLUMNS: &str = "id, op, args::text, status, result, error, worker, digest, attempts, submitted_at_ms, started_at_ms, finished_at_ms";

/// Takes over every unfinished task (one replica per database for now) and
/// loads the most recent finished ones.
async fn recover(
    client: &mut deadpool_postgres::Client,
    owner: &str,
    recent_finished: usize,
) -> Result<Recovered, PgError> {
    let tx = client.transaction().await?;
    let fresh: bool = tx
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM tasks) AND NOT (SELECT is_called FROM task_ids)",
            &[],
        )
        .await?
        .get(0);
    let mut tasks: Vec<Task> = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM tasks WHERE status NOT IN ('queued', 'running') ORDER BY id DESC LIMIT $1"
            ),
            &[&(recent_finished as i64)],
        )
        .await?
        .iter()
        .map(row_to_task)
        .collect();
    tasks.reverse();
    let unfinished = tx
        .query(
            &format!(
                "UPDATE tasks SET owner = $1, status = 'queued', worker = NULL, started_at_ms = NULL
                 WHERE status IN ('queued', 'running') RETURNING {COLUMNS}"
            ),
            &[&owner],
        )
        .await?;
    let mut unfinished: Vec<Task> = unfinished.iter().map(row_to_task).collect();
    unfinished.sort_by_key(|t| t.id);
    tasks.extend(unfinished);
    tx.commit().await?;
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

    pub async fn new_ids(&self, n: usize) -> Result<Vec<TaskId>, PgError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT nextval('task_ids') FROM generate_series(1::bigint, $1::bigint)",
                &[&(n as i64)],
            )
            .await?;
        let mut ids: Vec<TaskId> = rows.iter().map(|r| r.get::<_, i64>(0) as TaskId).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    pub async fn insert(&self, tasks: Vec<Task>) -> Result<(), PgError> {
        let (ack, done) = oneshot::channel();
        self.writer
            .send(Write::Insert(tasks, ack))
            .map_err(|_| PgError::Stopped)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(PgError::Commit(message)),
            Err(_) => Err(PgError::Stopped),
        }
    }

    pub fn finished(&self, task: Task) {
        let _ = self.writer.send(Write::Finished(task));
    }

    pub fn attempts(&self, id: TaskId, attempts: u32) {
        let _ = self.writer.send(Write::Attempts(id, attempts));
    }

    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, PgError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                &[&(id as i64)],
            )
            .await?;
        Ok(row.as_ref().map(row_to_task))
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

async fn write_loop(pool: Pool, owner: String, mut rx: mpsc::UnboundedReceiver<Write>) {
    // Results and attempt counts whose commit failed: retried first.
    let mut pending: Vec<Write> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut batch = std::mem::take(&mut pending);
        if batch.is_empty() {
            match rx.recv().await {
                Some(write) => batch.push(write),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let result = apply(&pool, &owner, &batch)
            .await
            .map_err(|e| e.to_string());
        if let Err(err) = &result {
            tracing::error!(error = %err, writes = batch.len(), "store commit failed; results are retried");
        }
        for write in batch {
            match write {
                Write::Insert(_, ack) => {
                    let _ = ack.send(result.clone());
                }
                Write::Flush(ack) => {
                    let _ = ack.send(());
                }
                write @ (Write::Finished(_) | Write::Attempts(..)) => {
                    if result.is_err() {
                        pending.push(write);
                    }
                }
            }
        }
        if result.is_err() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

/// One transaction for a batch: inserts, then attempt counts, then results.
async fn apply(pool: &Pool, owner: &str, batch: &[Write]) -> Result<(), PgError> {
    let mut insert = Inserts::default();
    let mut attempts: HashMap<TaskId, u32> = HashMap::new();
    let mut finished: HashMap<TaskId, &Task> = HashMap::new();
    for write in batch {
        match write {
            Write::Insert(tasks, _) => {
                for t in tasks {
                    insert.push(t);
                }
            }
            Write::Attempts(id, n) => {
                let seen = attempts.entry(*id).or_default();
                *seen = (*seen).max(*n);
            }
            Write::Finished(t) => {
                finished.insert(t.id, t);
            }
            Write::Flush(_) => {}
        }
    }
    if insert.ids.is_empty() && attempts.is_empty() && finished.is_empty() {
        return Ok(());
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if !insert.ids.is_empty() {
        tx.execute(
            "INSERT INTO tasks (id, op, args, status, attempts, submitted_at_ms, owner)
             SELECT id, op, args::jsonb, 'queued', 0, submitted_at_ms, $5
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) AS t(id, op, args, submitted_at_ms)",
            &[&insert.ids, &insert.ops, &insert.args, &insert.submitted, &owner],
        )
        .await?;
    }
    if !attempts.is_empty() {
        let (ids, counts): (Vec<i64>, Vec<i32>) = attempts
            .iter()
            .map(|(id, n)| (*id as i64, *n as i32))
            .unzip();
        tx.execute(
            "UPDATE tasks SET attempts = a.n FROM unnest($1::bigint[], $2::int[]) AS a(id, n)
             WHERE tasks.id = a.id AND tasks.owner = $3 AND tasks.status IN ('queued', 'running')",
            &[&ids, &counts, &owner],
        )
        .await?;
    }
    if !finished.is_empty() {
        let mut r = Results::default();
        for t in finished.values() {
            r.push(t);
        }
        tx.execute(
            "UPDATE tasks SET status = f.status, result = f.result, error = f.error, worker = f.worker,
                 digest = f.digest, attempts = f.attempts, started_at_ms = f.started, finished_at_ms = f.finished
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[],
                         $8::bigint[], $9::bigint[])
                  AS f(id, status, result, error, worker, digest, attempts, started, finished)
             WHERE tasks.id = f.id AND tasks.owner = $10 AND tasks.status IN ('queued', 'running')",
            &[
                &r.ids, &r.status, &r.result, &r.error, &r.worker, &r.digest, &r.attempts, &r.started,
                &r.finished, &owner,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Default)]
struct Inserts {
    ids: Vec<i64>,
    ops: Vec<String>,
    args: Vec<String>,
    submitted: Vec<i64>,
}

impl Inserts {
    fn push(&mut self, t: &Task) {
        self.ids.push(t.id as i64);
        self.ops.push(t.op.to_string());
        self.args
            .push(serde_json::to_string(&*t.args).unwrap_or_else(|_| "[]".into()));
        self.submitted.push(t.submitted_at_ms as i64);
    }
}

#[derive(Default)]
struct Results {
    ids: Vec<i64>,
    status: Vec<String>,
    result: Vec<Option<i64>>,
    error: Vec<Option<String>>,
    worker: Vec<Option<String>>,
    digest: Vec<Option<String>>,
    attempts: Vec<i32>,
    started: Vec<Option<i64>>,
    finished: Vec<Option<i64>>,
}

impl Results {
    fn push(&mut self, t: &Task) {
        let (result, error) = match &t.output {
            Some(Output::Result(v)) => (Some(*v), None),
            Some(Output::Error(e)) => (None, Some(e.clone())),
            None => (None, None),
        };
        self.ids.push(t.id as i64);
        self.status.push(t.status.as_str().to_string());
        self.result.push(result);
        self.error.push(error);
        self.worker.push(t.worker.as_deref().map(str::to_string));
        self.digest.push(t.digest.as_deref().map(str::to_string));
        self.attempts.push(t.attempts as i32);
        self.started.push(t.started_at_ms.map(|v| v as i64));
        self.finished.push(t.finished_at_ms.map(|v| v as i64));
    }
}

fn row_to_task(row: &Row) -> Task {
    let args: String = row.get(2);
    let status: String = row.get(3);
    let result: Option<i64> = row.get(4);
    let error: Option<String> = row.get(5);
    let status = match status.as_str() {
        "done" => TaskStatus::Done,
        "failed" => TaskStatus::Failed,
        "cancelled" => TaskStatus::Cancelled,
        "running" => TaskStatus::Running,
        _ => TaskStatus::Queued,
    };
    let output = match (result, error) {
        (Some(v), _) => Some(Output::Result(v)),
        (None, Some(e)) => Some(Output::Error(e)),
        _ => None,
    };
    Task {
        id: row.get::<_, i64>(0) as u64,
        op: row.get::<_, String>(1).into(),
        args: serde_json::from_str::<Vec<i64>>(&args)
            .unwrap_or_default()
            .into(),
        status,
        output,
        worker: row.get::<_, Option<String>>(6).map(Into::into),
        digest: row.get::<_, Option<String>>(7).map(Into::into),
        attempts: row.get::<_, i32>(8) as u32,
        submitted_at_ms: row.get::<_, i64>(9) as u64,
        started_at_ms: row.get::<_, Option<i64>>(10).map(|v| v as u64),
        finished_at_ms: row.get::<_, Option<i64>>(11).map(|v| v as u64),
        dispatch: None,
    }
}
