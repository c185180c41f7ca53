//! Durable task records: an embedded SQLite database under `DATA_DIR` (the
//! default), or a PostgreSQL database ([`postgres`], `STORE=postgres`).
//!
//! Either way one writer owns the write connection and commits in groups:
//! whatever queued up while the previous commit was syncing goes into the
//! next transaction, so a burst of submissions costs one fsync, not one per
//! task. A submission is acknowledged to the client only after its commit;
//! results are written behind (a result lost in a crash just means the task
//! runs again, and is still recorded once).

pub mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;
use wire::TaskId;

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
}

enum Write {
    Insert(Vec<Task>, oneshot::Sender<Result<(), String>>),
    Finished(Task),
    Attempts(TaskId, u32),
    Flush(oneshot::Sender<()>),
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

pub struct Store {
    /// Held (locked) for as long as the store is open.
    _lock: Option<std::fs::File>,
    writer: Option<mpsc::Sender<Write>>,
    reader: Option<Mutex<rusqlite::Connection>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The next id to hand out (SQLite and memory stores; PostgreSQL takes
    /// ids from a sequence).
    next_id: AtomicU64,
    postgres: Option<postgres::PgStore>,
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
        let recovered = sqlite::recover(&conn, recent_finished)?;
        let reader = sqlite::open(&path)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(conn, rx))?;
        let store = Self {
            _lock: Some(lock),
            writer: Some(tx),
            reader: Some(Mutex::new(reader)),
            thread: Mutex::new(Some(thread)),
            next_id: AtomicU64::new(recovered.next_id),
            postgres: None,
        };
        Ok((store, recovered))
    }

    pub fn is_durable(&self) -> bool {
        self.writer.is_some() || self.postgres.is_some()
    }

    /// Persists new tasks; resolves once they are committed to disk.
    pub async fn insert(&self, tasks: Vec<Task>) -> Result<(), StoreError> {
        if let Some(pg) = &self.postgres {
            return Ok(pg.insert(tasks).await?);
        }
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let (ack, done) = oneshot::channel();
        writer
            .send(Write::Insert(tasks, ack))
            .map_err(|_| StoreError::Stopped)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Db(rusqlite::Error::ToSqlConversionFailure(
                message.into(),
            ))),
            Err(_) => Err(StoreError::Stopped),
        }
    }

    /// Records a final state, written behind.
    pub fn finished(&self, task: Task) {
        if let Some(pg) = &self.postgres {
            pg.finished(task);
        } else if let Some(writer) = &self.writer {
            let _ = writer.send(Write::Finished(task));
        }
    }

    pub fn attempts(&self, id: TaskId, attempts: u32) {
        if let Some(pg) = &self.postgres {
            pg.attempts(id, attempts);
        } else if let Some(writer) = &self.writer {
            let _ = writer.send(Write::Attempts(id, attempts));
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
            if writer.send(Write::Flush(tx)).is_ok() {
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
        self.writer.take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Most writes in one transaction.
const MAX_BATCH: usize = 8192;

fn write_loop(mut conn: rusqlite::Connection, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let result = sqlite::apply(&mut conn, &batch).map_err(|e| e.to_string());
        if let Err(err) = &result {
            tracing::error!(error = %err, writes = batch.len(), "store commit failed");
        }
        for write in batch {
            match write {
                Write::Insert(_, ack) => {
                    let _ = ack.send(result.clone());
                }
                Write::Flush(ack) => {
                    let _ = ack.send(());
                }
                Write::Finished(_) | Write::Attempts(..) => {}
            }
        }
    }
}
