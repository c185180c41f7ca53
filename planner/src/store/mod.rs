//! Durable task records: an embedded SQLite database under `DATA_DIR` (the
//! default), or a PostgreSQL database ([`postgres`], `STORE=postgres`).
//!
//! Either way one writer owns the write connection and commits in groups:
//! whatever queued up while the previous commit was syncing goes into the
//! next transaction, so a burst of submissions costs one fsync, not one per
//! task. A submission is acknowledged to the client only after its commit;
//! results are written behind (a result lost in a crash just means the task
//! runs again, and is still recorded once).

mod inbox;
pub mod pg_retention;
pub mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use inbox::Inbox;

use tokio::sync::oneshot;
use wire::TaskId;

use crate::board::Progress;
use crate::task::Task;

#[derive(Debug, Clone)]
pub enum Durability {
    /// SQLite in this directory, fsync on every commit.
    Durable(PathBuf),
    /// Nothing survives a restart.
    Memory,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("the store's writer has stopped")]
    Stopped,
    #[error("cannot open the data dir: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the data dir {dir} is in use by another planner ({holder}); two planners on one data dir would lose tasks"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("database error: {0}")]
    Postgres(#[from] postgres::PgError),
    #[error(
        "the planner's disk is full: no new tasks are accepted until space is freed (every task already accepted is kept)"
    )]
    DiskFull,
    #[error("database error: {0}")]
    Commit(String),
}

/// Why a commit failed, as the writer reports it to those waiting on it.
#[derive(Debug, Clone)]
enum CommitError {
    DiskFull,
    Other(String),
}

impl From<CommitError> for StoreError {
    fn from(err: CommitError) -> Self {
        match err {
            CommitError::DiskFull => StoreError::DiskFull,
            CommitError::Other(message) => StoreError::Commit(message),
        }
    }
}

impl From<rusqlite::Error> for CommitError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => CommitError::DiskFull,
            _ => CommitError::Other(err.to_string()),
        }
    }
}

/// Which finished tasks one retention step deletes.
#[derive(Debug, Clone, Copy)]
pub struct Expiry {
    /// Those that finished before this time (unix ms).
    pub finished_before_ms: Option<u64>,
    /// Then the oldest beyond this many finished tasks.
    pub keep_at_most: Option<u64>,
    /// Most rows deleted in this step (one short transaction).
    pub chunk: usize,
    /// Idempotency keys stored before this time (unix ms) are deleted too
    /// (IDEMPOTENCY_TTL, its own window: keys stay bounded even when
    /// results are kept forever).
    pub keys_before_ms: Option<u64>,
}

/// An idempotency key as stored: digests only, so any bytes a client sends
/// take the same small room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    /// Hex sha256 of the key.
    pub key: String,
    /// Hex sha256 of the submission it came with (its canonical JSON).
    pub request: String,
    pub created_at_ms: u64,
}

/// What became of an insertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insertion {
    Inserted,
    /// Its idempotency key was used before: nothing was inserted; these are
    /// the first submission's ids and digest.
    Replay {
        ids: Vec<TaskId>,
        request: String,
    },
}

/// Ids as runs of consecutive ids, `[[first, count], ...]`: a batch's ids
/// are usually one run.
fn ids_to_runs(ids: &[TaskId]) -> String {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some([first, count]) if *first + *count == id => *count += 1,
            _ => runs.push([id, 1]),
        }
    }
    serde_json::to_string(&runs).unwrap_or_else(|_| "[]".into())
}

fn runs_to_ids(text: &str) -> Vec<TaskId> {
    let runs: Vec<[u64; 2]> = serde_json::from_str(text).unwrap_or_default();
    runs.iter()
        .flat_map(|[first, count]| *first..first.saturating_add(*count))
        .collect()
}

/// A task's earlier attempts' errors as stored (JSON), `None` when none.
fn errors_json(task_errors: &[wire::planner::AttemptError]) -> Option<String> {
    (!task_errors.is_empty()).then(|| serde_json::to_string(task_errors).unwrap_or_default())
}

fn errors_from_json(text: Option<&str>) -> Vec<wire::planner::AttemptError> {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default()
}

/// What the PostgreSQL store's writer takes.
enum Write {
    Insert(
        Vec<Task>,
        Option<Idempotency>,
        oneshot::Sender<Result<Insertion, String>>,
    ),
    Finished(Task),
    Progress(Progress),
    Flush(oneshot::Sender<()>),
}

/// What the SQLite store's writer takes: the same, plus retention's
/// deletes, with typed errors (a full disk is told apart).
enum SqliteWrite {
    Insert(
        Vec<Task>,
        Option<Idempotency>,
        oneshot::Sender<Result<Insertion, CommitError>>,
    ),
    Finished(Task),
    Progress(Progress),
    Expire(Expiry, oneshot::Sender<Result<u64, CommitError>>),
    Flush(oneshot::Sender<()>),
}

/// A commit under way (see [`Store::begin_insert`]).
pub struct Commit(oneshot::Receiver<Result<Insertion, CommitError>>);

impl Commit {
    fn send(
        writer: &Inbox<SqliteWrite>,
        tasks: Vec<Task>,
        key: Option<Idempotency>,
    ) -> Result<Self, StoreError> {
        let (ack, done) = oneshot::channel();
        send(writer, SqliteWrite::Insert(tasks, key, ack))?;
        Ok(Self(done))
    }

    /// Resolves once the tasks are on disk, or the commit failed.
    pub async fn done(self) -> Result<(), StoreError> {
        self.insertion().await.map(|_| ())
    }

    async fn insertion(self) -> Result<Insertion, StoreError> {
        match self.0.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

/// What a restart finds in the data dir.
pub struct Recovered {
    /// Unfinished tasks (to run again) and the most recent finished ones.
    pub tasks: Vec<Task>,
    pub next_id: TaskId,
    /// Nothing was ever stored here: a new planner, not a restarted one.
    pub fresh: bool,
}

/// Where a fresh store starts numbering tasks: the time, in units of 2^20
/// per second. A planner that lost its store (a memory store, an emptyDir
/// volume) must never hand out an id it handed out before, or old ids would
/// point to other tasks; counting from the clock guarantees that unless the
/// previous incarnation sustained over a million tasks per second. Ids stay
/// below 2^53, so JavaScript clients read them exactly, until the year 2242.
pub fn first_id() -> TaskId {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (seconds << 20).max(1)
}

/// An idempotency key held by a memory store: (request digest, ids, created).
type MemoryKey = (String, Vec<TaskId>, u64);

pub struct Store {
    /// Held (locked) for as long as the store is open.
    _lock: Option<std::fs::File>,
    writer: Option<Arc<Inbox<SqliteWrite>>>,
    reader: Option<Mutex<rusqlite::Connection>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The next id to hand out (SQLite and memory stores; PostgreSQL takes
    /// ids from a sequence).
    next_id: AtomicU64,
    postgres: Option<postgres::PgStore>,
    /// Idempotency keys of a memory store: key → (request, ids, created).
    memory_keys: Mutex<std::collections::HashMap<String, MemoryKey>>,
}

impl Store {
    /// A store on PostgreSQL (already connected and migrated).
    pub fn postgres(store: postgres::PgStore) -> Self {
        Self {
            _lock: None,
            writer: None,
            reader: None,
            thread: Mutex::new(None),
            next_id: AtomicU64::new(0),
            postgres: Some(store),
            memory_keys: Mutex::default(),
        }
    }

    /// Ids for `n` new tasks, never handed out before, ascending.
    pub async fn new_ids(&self, n: usize) -> Result<Vec<TaskId>, StoreError> {
        if let Some(pg) = &self.postgres {
            return Ok(pg.new_ids(n).await?);
        }
        let first = self.next_id.fetch_add(n as u64, Ordering::Relaxed);
        Ok((first..first + n as u64).collect())
    }

    pub fn open(
        durability: &Durability,
        recent_finished: usize,
    ) -> Result<(Self, Recovered), StoreError> {
        let dir = match durability {
            Durability::Memory => {
                let next_id = first_id();
                let store = Self {
                    _lock: None,
                    writer: None,
                    reader: None,
                    thread: Mutex::new(None),
                    next_id: AtomicU64::new(next_id),
                    postgres: None,
                    memory_keys: Mutex::default(),
                };
                return Ok((
                    store,
                    Recovered {
                        tasks: Vec::new(),
                        next_id,
                        fresh: true,
                    },
                ));
            }
            Durability::Durable(dir) => dir,
        };
        std::fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let path = dir.join("planner.sqlite3");
        let conn = sqlite::open(&path)?;
        sqlite::enable_incremental_vacuum(&conn);
        let recovered = sqlite::recover(&conn, recent_finished)?;
        let retained = sqlite::Retained::counted(&conn);
        let reader = sqlite::open(&path)?;
        let inbox = Arc::new(Inbox::default());
        let thread = {
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || write_loop(conn, inbox, retained))?
        };
        let store = Self {
            _lock: Some(lock),
            writer: Some(inbox),
            reader: Some(Mutex::new(reader)),
            thread: Mutex::new(Some(thread)),
            next_id: AtomicU64::new(recovered.next_id),
            postgres: None,
            memory_keys: Mutex::default(),
        };
        Ok((store, recovered))
    }

    /// The PostgreSQL store, shared with other replicas, if that is the kind.
    pub fn shared(&self) -> Option<&postgres::PgStore> {
        self.postgres.as_ref()
    }

    pub fn is_durable(&self) -> bool {
        self.writer.is_some() || self.postgres.is_some()
    }

    /// Persists new tasks; resolves once they are committed to disk. With
    /// an idempotency key already stored, inserts nothing and answers the
    /// first submission's ids (decided in the same transaction, so two
    /// submissions racing with one key insert once).
    pub async fn insert(
        &self,
        tasks: Vec<Task>,
        key: Option<Idempotency>,
    ) -> Result<Insertion, StoreError> {
        if let Some(pg) = &self.postgres {
            return Ok(pg.insert(tasks, key).await?);
        }
        let Some(writer) = &self.writer else {
            return Ok(self.insert_key_in_memory(&tasks, key));
        };
        Commit::send(writer, tasks, key)?.insertion().await
    }

    /// Sends new tasks (with no idempotency key) to be committed and returns
    /// at once; the [`Commit`] resolves once they are on disk. For a caller
    /// that starts work on them meanwhile (and acknowledges only after). `None`
    /// unless this is the SQLite store: PostgreSQL's tasks are claimed from
    /// the database by any replica, so they must be in it first.
    pub fn begin_insert(&self, tasks: Vec<Task>) -> Option<Result<Commit, StoreError>> {
        let writer = self.writer.as_ref()?;
        Some(Commit::send(writer, tasks, None))
    }

    fn insert_key_in_memory(&self, tasks: &[Task], key: Option<Idempotency>) -> Insertion {
        let Some(key) = key else {
            return Insertion::Inserted;
        };
        let mut keys = self.memory_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((request, ids, _)) = keys.get(&key.key) {
            return Insertion::Replay {
                ids: ids.clone(),
                request: request.clone(),
            };
        }
        let ids = tasks.iter().map(|t| t.id).collect();
        keys.insert(key.key, (key.request, ids, key.created_at_ms));
        Insertion::Inserted
    }

    /// A batch's tasks counted by stored status, after everything sent to
    /// the store is in (`None` for a memory store: the board has them).
    pub async fn batch_counts(
        &self,
        batch: TaskId,
    ) -> Result<Option<std::collections::BTreeMap<String, u64>>, StoreError> {
        if let Some(pg) = &self.postgres {
            pg.flush().await;
            return Ok(Some(pg.batch_counts(batch).await?));
        }
        let Some(reader) = &self.reader else {
            return Ok(None);
        };
        self.flush().await;
        let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(sqlite::batch_counts(&conn, batch)?))
    }

    /// The ids and request digest stored under an idempotency key, if any.
    pub async fn idempotent(&self, key: &str) -> Result<Option<Insertion>, StoreError> {
        if let Some(pg) = &self.postgres {
            return Ok(pg.idempotent(key).await?);
        }
        let Some(reader) = &self.reader else {
            let keys = self.memory_keys.lock().unwrap_or_else(|p| p.into_inner());
            return Ok(keys.get(key).map(|(request, ids, _)| Insertion::Replay {
                ids: ids.clone(),
                request: request.clone(),
            }));
        };
        let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(sqlite::idempotent(&conn, key)?)
    }

    /// Deletes one chunk of expired finished tasks; returns how many. Goes
    /// through the writer (SQLite has one writer at a time), as one short
    /// transaction grouped with whatever else is waiting, so submissions and
    /// results never wait behind a long delete.
    pub async fn expire(&self, expiry: Expiry) -> Result<u64, StoreError> {
        if let Some(pg) = &self.postgres {
            return Ok(pg_retention::expire(
                pg.pool(),
                expiry.finished_before_ms,
                expiry.keys_before_ms,
                expiry.chunk,
            )
            .await?);
        }
        let Some(writer) = &self.writer else {
            if let Some(before) = expiry.keys_before_ms {
                self.memory_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, (_, _, created)| *created >= before);
            }
            return Ok(0);
        };
        let (ack, done) = oneshot::channel();
        send(writer, SqliteWrite::Expire(expiry, ack))?;
        match done.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// What retention needs before its first pass (PostgreSQL: its index).
    pub async fn prepare_retention(&self) -> Result<(), StoreError> {
        if let Some(pg) = &self.postgres {
            pg_retention::prepare(pg.pool()).await?;
        }
        Ok(())
    }

    /// Whether this store can delete by count (the PostgreSQL store deletes
    /// by age only: counting a large table is not cheap there).
    pub fn supports_count_cap(&self) -> bool {
        self.postgres.is_none()
    }

    /// Records a final state, written behind.
    pub fn finished(&self, task: Task) {
        if let Some(pg) = &self.postgres {
            pg.finished(task);
        } else if let Some(writer) = &self.writer {
            let _ = send(writer, SqliteWrite::Finished(task));
        }
    }

    /// Records a task's attempts and their errors (it runs again), written behind.
    pub fn progress(&self, progress: Progress) {
        if let Some(pg) = &self.postgres {
            pg.progress(progress);
        } else if let Some(writer) = &self.writer {
            let _ = send(writer, SqliteWrite::Progress(progress));
        }
    }

    /// A task no longer kept in memory.
    pub async fn get(&self, id: TaskId) -> Result<Option<Task>, StoreError> {
        if let Some(pg) = &self.postgres {
            return Ok(pg.get(id).await?);
        }
        let Some(reader) = &self.reader else {
            return Ok(None);
        };
        let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
        Ok(sqlite::get(&conn, id)?)
    }

    /// Waits until everything sent so far is committed.
    pub async fn flush(&self) {
        if let Some(pg) = &self.postgres {
            pg.flush().await;
        } else if let Some(writer) = &self.writer {
            let (tx, rx) = oneshot::channel();
            if send(writer, SqliteWrite::Flush(tx)).is_ok() {
                let _ = rx.await;
            }
        }
    }
}

/// Takes the data dir's exclusive lock (released by the OS when the process
/// ends, however it ends) and writes who holds it, for the next one to name.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("planner.lock"))?;
    if let Err(err) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => format!("lock held: {err}"),
            who => who.to_string(),
        };
        return Err(StoreError::Locked {
            dir: dir.to_path_buf(),
            holder,
        });
    }
    file.set_len(0)?;
    file.rewind()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    write!(file, "pid {} on {}", std::process::id(), host.trim())?;
    file.flush()?;
    Ok(file)
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.close();
        }
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Most writes in one transaction.
const MAX_BATCH: usize = 8192;

/// After a failed commit, how long the writer waits before trying the
/// results it still holds again (when nothing new arrives meanwhile).
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a batch of results alone may wait for more before it commits.
/// Nobody waits on a result's commit (they are written behind), and each
/// commit costs an fsync: gathering a few milliseconds of results makes that
/// one fsync per few hundred results instead of one per handful. A result
/// still reaches the disk within this time (or it runs again after a crash,
/// recorded once).
const RESULT_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// Whether someone waits on this write's commit.
fn awaited(write: &SqliteWrite) -> bool {
    !matches!(write, SqliteWrite::Finished(_) | SqliteWrite::Progress(_))
}

/// Hands a write to the writer, waking it if someone waits on the commit.
fn send(writer: &Inbox<SqliteWrite>, write: SqliteWrite) -> Result<(), StoreError> {
    let awaited = awaited(&write);
    writer.send(write, awaited).map_err(|_| StoreError::Stopped)
}

fn write_loop(
    mut conn: rusqlite::Connection,
    inbox: Arc<Inbox<SqliteWrite>>,
    mut retained: sqlite::Retained,
) {
    // Results and attempt counts of a failed commit (a full disk): kept and
    // written with a later batch, so none is lost while the disk is full.
    let mut held: Vec<SqliteWrite> = Vec::new();
    loop {
        let retrying = !held.is_empty();
        let mut batch = std::mem::take(&mut held);
        let timeout = retrying.then_some(RETRY_AFTER);
        if inbox.wait(&mut batch, MAX_BATCH, timeout).is_err() {
            // Stopping: one last try for what is held, then give up on it
            // (those tasks run again after a restart, recorded once).
            if !batch.is_empty() {
                let _ = sqlite::apply(&mut conn, &batch, &mut retained);
            }
            return;
        }
        if !retrying && !batch.iter().any(awaited) {
            inbox.linger(&mut batch, MAX_BATCH, Instant::now() + RESULT_LINGER);
        }
        let result = sqlite::apply(&mut conn, &batch, &mut retained).map_err(CommitError::from);
        let mut replays = result
            .as_ref()
            .map(|applied| applied.replays.clone())
            .unwrap_or_default();
        if let Err(err) = &result {
            match err {
                CommitError::DiskFull => {
                    tracing::error!(
                        writes = batch.len(),
                        "store commit failed: the disk is full"
                    )
                }
                CommitError::Other(err) => {
                    tracing::error!(error = %err, writes = batch.len(), "store commit failed")
                }
            }
        }
        let mut expired = result.as_ref().map(|e| e.expired.iter()).ok();
        for (index, write) in batch.into_iter().enumerate() {
            match write {
                SqliteWrite::Insert(_, _, ack) => {
                    let answer = match &result {
                        Err(err) => Err(err.clone()),
                        Ok(_) => Ok(replays.remove(&index).unwrap_or(Insertion::Inserted)),
                    };
                    let _ = ack.send(answer);
                }
                SqliteWrite::Expire(_, ack) => {
                    let answer = match (&result, expired.as_mut()) {
                        (Err(err), _) => Err(err.clone()),
                        (Ok(_), Some(deleted)) => Ok(deleted.next().copied().unwrap_or(0)),
                        (Ok(_), None) => Ok(0),
                    };
                    let _ = ack.send(answer);
                }
                SqliteWrite::Flush(ack) => {
                    let _ = ack.send(());
                }
                write @ (SqliteWrite::Finished(_) | SqliteWrite::Progress(..)) => {
                    if result.is_err() {
                        held.push(write);
                    }
                }
            }
        }
    }
}
