//! The SQLite schema and queries.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use wire::Output;
use wire::planner::TaskStatus;

use super::{Insertion, Recovered, SqliteWrite as Write};
use crate::task::{Controls, Task};

/// The WAL is truncated back to this after a checkpoint, so a burst does
/// not leave a large file behind.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Freed pages returned to the file system per expiry pass, at most (4 MiB
/// of 4 KiB pages): small steps, so the writer is never held for long.
const VACUUM_PAGES: i64 = 1024;

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Takes effect on a new database only (before its first table); an
    // older one is switched once by `enable_incremental_vacuum`.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    // WAL: readers don't block the writer. synchronous=FULL: a commit is on
    // disk when it returns, which is what acknowledging a task promises.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tasks (
            id INTEGER PRIMARY KEY,
            op TEXT NOT NULL,
            args TEXT NOT NULL,
            status TEXT NOT NULL,
            result INTEGER,
            error TEXT,
            worker TEXT,
            digest TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            submitted_at_ms INTEGER NOT NULL,
            started_at_ms INTEGER,
            finished_at_ms INTEGER
        );
        CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks(status) WHERE status IN ('queued', 'running');
        CREATE TABLE IF NOT EXISTS counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        );",
    )?;
    add_control_columns(&conn)?;
    conn.execute_batch(
        "-- Retention deletes the oldest finished tasks first. (Replaces
        -- `tasks_expiry`, which did not cover `expired`.)
        DROP INDEX IF EXISTS tasks_expiry;
        CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(finished_at_ms)
            WHERE status NOT IN ('queued', 'running');
        -- Idempotency keys (sha256 of the key) → the ids of the submission
        -- that first used them, for RESULT_TTL.
        CREATE TABLE IF NOT EXISTS idempotency (
            key TEXT PRIMARY KEY,
            request TEXT NOT NULL,
            ids TEXT NOT NULL,
            first_id INTEGER NOT NULL,
            created_at_ms INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency(created_at_ms);
        CREATE INDEX IF NOT EXISTS idempotency_first_id ON idempotency(first_id);
        CREATE INDEX IF NOT EXISTS tasks_batch ON tasks(batch) WHERE batch IS NOT NULL;",
    )?;
    Ok(conn)
}

/// The task controls' columns (issue 13), added to a data dir created by
/// an older planner; its tasks get the defaults.
const CONTROL_COLUMNS: &[(&str, &str)] = &[
    ("priority", "INTEGER NOT NULL DEFAULT 0"),
    ("retries", "INTEGER NOT NULL DEFAULT 0"),
    ("retried", "INTEGER NOT NULL DEFAULT 0"),
    ("timeout_ms", "INTEGER"),
    ("deadline_ms", "INTEGER"),
    ("attempt_errors", "TEXT"),
    ("batch", "INTEGER"),
    // A retry waiting out its backoff, until this time (unix ms): a restart
    // keeps it waiting.
    ("retry_at_ms", "INTEGER"),
];

fn add_control_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut query = conn.prepare("SELECT name FROM pragma_table_info('tasks')")?;
    let present: Vec<String> = query
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, kind) in CONTROL_COLUMNS {
        if !present.iter().any(|p| p == name) {
            conn.execute_batch(&format!("ALTER TABLE tasks ADD COLUMN {name} {kind}"))?;
        }
    }
    Ok(())
}

/// A database created before retention has `auto_vacuum=NONE`: deleted rows'
/// pages are reused, but the file never shrinks. Switching needs one full
/// VACUUM (a rewrite of the file, needing as much free space again); if that
/// fails (a full disk), the planner runs on without shrinking and tries
/// again at its next start.
pub fn enable_incremental_vacuum(conn: &Connection) {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn
        .pragma_query_value(None, "auto_vacuum", |row| row.get(0))
        .unwrap_or(INCREMENTAL);
    if mode == INCREMENTAL {
        return;
    }
    let started = std::time::Instant::now();
    tracing::info!("switching the task database to incremental vacuum (a one-time VACUUM)");
    match conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;") {
        Ok(()) => tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "task database switched to incremental vacuum"
        ),
        Err(err) => tracing::warn!(
            error = %err,
            "could not VACUUM the task database; expired tasks' space is reused but the file will not shrink"
        ),
    }
}

/// The writer's count of finished rows, for the count cap; `None` until
/// counted (and after a failed commit, whose changes it may have counted).
#[derive(Default)]
pub struct Retained {
    finished_rows: Option<u64>,
}

impl Retained {
    /// Counted when the store opens, before the planner serves: counting
    /// millions of rows takes a moment that the writer must not spend later.
    pub fn counted(conn: &Connection) -> Self {
        let mut retained = Self::default();
        if let Err(err) = retained.count(conn) {
            tracing::warn!(error = %err, "could not count the finished tasks; counting later");
        }
        retained
    }

    fn count(&mut self, tx: &Connection) -> rusqlite::Result<u64> {
        if let Some(n) = self.finished_rows {
            return Ok(n);
        }
        let n: i64 = tx.query_row(
            "SELECT count(*) FROM tasks INDEXED BY tasks_finished WHERE status NOT IN ('queued', 'running')",
            [],
            |row| row.get(0),
        )?;
        self.finished_rows = Some(n as u64);
        Ok(n as u64)
    }
}

/// What one transaction did beyond writing.
#[derive(Debug, Default)]
pub struct Applied {
    /// The rows each `Expire` of the batch deleted, in order.
    pub expired: Vec<u64>,
    /// Inserts (by their place in the batch) whose idempotency key was
    /// already stored: nothing was inserted for them.
    pub replays: std::collections::HashMap<usize, Insertion>,
}

/// Applies a batch in one transaction.
pub fn apply(
    conn: &mut Connection,
    batch: &[Write],
    retained: &mut Retained,
) -> rusqlite::Result<Applied> {
    // What the count was, should the transaction not commit.
    let counted = retained.finished_rows;
    let result = apply_in_transaction(conn, batch, retained);
    if result.is_err() {
        retained.finished_rows = counted;
    }
    result
}

fn apply_in_transaction(
    conn: &mut Connection,
    batch: &[Write],
    retained: &mut Retained,
) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO tasks (id, op, args, status, attempts, submitted_at_ms, priority, retries, timeout_ms, deadline_ms, batch)
             VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut claim_key = tx.prepare_cached(
            "INSERT OR IGNORE INTO idempotency (key, request, ids, first_id, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        // The id counter survives even when every task row is gone.
        let mut next_id = tx.prepare_cached(
            "INSERT INTO counters (name, value) VALUES ('next_id', ?1)
             ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        )?;
        let mut finish = tx.prepare_cached(
            "UPDATE tasks SET status = ?2, result = ?3, error = ?4, worker = ?5, digest = ?6, attempts = ?7,
             started_at_ms = ?8, finished_at_ms = ?9, retried = ?10, attempt_errors = ?11 WHERE id = ?1",
        )?;
        let mut progress = tx.prepare_cached(
            "UPDATE tasks SET attempts = ?2, retried = ?3, attempt_errors = ?4, retry_at_ms = ?5 WHERE id = ?1",
        )?;
        for (index, write) in batch.iter().enumerate() {
            match write {
                Write::Insert(tasks, key, _) => {
                    if let Some(key) = key {
                        let ids: Vec<u64> = tasks.iter().map(|t| t.id).collect();
                        let first = ids.first().copied().unwrap_or(0);
                        let stored = claim_key.execute(params![
                            &key.key,
                            &key.request,
                            super::ids_to_runs(&ids),
                            first as i64,
                            key.created_at_ms as i64
                        ])?;
                        if stored == 0 {
                            let replay = idempotent(&tx, &key.key)?.unwrap_or(Insertion::Inserted);
                            applied.replays.insert(index, replay);
                            continue;
                        }
                    }
                    for t in tasks {
                        insert.execute(params![
                            t.id as i64,
                            &*t.op,
                            args_json(&t.args),
                            t.submitted_at_ms as i64,
                            t.controls.priority,
                            t.controls.retries,
                            t.controls.timeout_ms.map(|v| v as i64),
                            t.controls.deadline_ms.map(|v| v as i64),
                            t.controls.batch.map(|v| v as i64),
                        ])?;
                    }
                    if let Some(last) = tasks.iter().map(|t| t.id).max() {
                        next_id.execute([last as i64 + 1])?;
                    }
                }
                Write::Finished(t) => {
                    let (result, error) = match &t.output {
                        Some(Output::Result(v)) => (Some(*v), None),
                        Some(Output::Error(e)) => (None, Some(e.as_str())),
                        None => (None, None),
                    };
                    let changed = finish.execute(params![
                        t.id as i64,
                        t.status.as_str(),
                        result,
                        error,
                        t.worker.as_deref(),
                        t.digest.as_deref(),
                        t.attempts,
                        t.started_at_ms.map(|v| v as i64),
                        t.finished_at_ms.map(|v| v as i64),
                        t.retried,
                        super::errors_json(&t.attempt_errors),
                    ])?;
                    if let Some(n) = &mut retained.finished_rows {
                        *n += changed as u64;
                    }
                }
                Write::Progress(p) => {
                    progress.execute(params![
                        p.id as i64,
                        p.attempts,
                        p.retried,
                        super::errors_json(&p.attempt_errors),
                        p.retry_at_ms.map(|v| v as i64)
                    ])?;
                }
                Write::Expire(expiry, _) => {
                    applied.expired.push(expire(&tx, expiry, retained)?);
                }
                Write::Flush(_) => {}
            }
        }
    }
    tx.commit()?;
    Ok(applied)
}

/// A batch's tasks in the store, counted by stored status.
pub fn batch_counts(
    conn: &Connection,
    batch: u64,
) -> rusqlite::Result<std::collections::BTreeMap<String, u64>> {
    let mut query = conn.prepare_cached(
        "SELECT status, count(*) FROM tasks INDEXED BY tasks_batch WHERE batch = ?1 GROUP BY status",
    )?;
    query
        .query_map([batch as i64], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
        })?
        .collect()
}

/// The submission an idempotency key (its digest) first came with.
pub fn idempotent(conn: &Connection, key: &str) -> rusqlite::Result<Option<Insertion>> {
    conn.query_row(
        "SELECT request, ids FROM idempotency WHERE key = ?1",
        [key],
        |row| {
            let request: String = row.get(0)?;
            let ids: String = row.get(1)?;
            Ok(Insertion::Replay {
                ids: super::runs_to_ids(&ids),
                request,
            })
        },
    )
    .optional()
}

/// Deletes up to `expiry.chunk` finished tasks: those finished before the
/// cutoff, then the oldest beyond the count cap; then returns some freed
/// pages to the file system when many are free.
fn expire(
    tx: &Connection,
    expiry: &super::Expiry,
    retained: &mut Retained,
) -> rusqlite::Result<u64> {
    let mut by_age = tx.prepare_cached(
        "DELETE FROM tasks WHERE id IN (
            SELECT id FROM tasks INDEXED BY tasks_finished
            WHERE status NOT IN ('queued', 'running') AND finished_at_ms < ?1
            ORDER BY finished_at_ms LIMIT ?2)",
    )?;
    let mut oldest = tx.prepare_cached(
        "DELETE FROM tasks WHERE id IN (
            SELECT id FROM tasks INDEXED BY tasks_finished
            WHERE status NOT IN ('queued', 'running')
            ORDER BY finished_at_ms LIMIT ?1)",
    )?;
    // Idempotency keys live for IDEMPOTENCY_TTL (at most RESULT_TTL), or
    // until the tasks they named are all gone (RESULT_LIMIT).
    let mut keys_by_age = tx.prepare_cached(
        "DELETE FROM idempotency WHERE key IN (
            SELECT key FROM idempotency WHERE created_at_ms < ?1 LIMIT ?2)",
    )?;
    let mut keys_of_deleted = tx.prepare_cached(
        "DELETE FROM idempotency WHERE key IN (
            SELECT key FROM idempotency WHERE first_id < (SELECT min(id) FROM tasks) LIMIT ?1)",
    )?;
    let chunk = expiry.chunk as u64;
    if let Some(cutoff) = expiry.keys_before_ms {
        // Keys are small rows: a larger step, so keys keep up with a
        // planner taking many keyed submissions per second.
        keys_by_age.execute(params![cutoff as i64, (KEYS_PER_TASK_CHUNK * chunk) as i64])?;
    }
    let mut deleted = match expiry.finished_before_ms {
        Some(cutoff) => by_age.execute(params![cutoff as i64, chunk as i64])? as u64,
        None => 0,
    };
    if let Some(n) = &mut retained.finished_rows {
        *n = n.saturating_sub(deleted);
    }
    if let Some(keep) = expiry.keep_at_most {
        let excess = retained.count(tx)?.saturating_sub(keep);
        let now = excess.min(chunk.saturating_sub(deleted));
        if now > 0 {
            let gone = oldest.execute([now as i64])? as u64;
            deleted += gone;
            if let Some(n) = &mut retained.finished_rows {
                *n = n.saturating_sub(gone);
            }
            keys_of_deleted.execute([(KEYS_PER_TASK_CHUNK * chunk) as i64])?;
        }
    }
    // Under steady load freed pages are reused by new tasks; only a large
    // share of free pages (after a burst) is worth giving back.
    let free: i64 = tx.pragma_query_value(None, "freelist_count", |row| row.get(0))?;
    let total: i64 = tx.pragma_query_value(None, "page_count", |row| row.get(0))?;
    if free > 64 && free * 4 > total {
        // The pragma frees one page per step: step it to the end.
        let mut vacuum =
            tx.prepare_cached(&format!("PRAGMA incremental_vacuum({VACUUM_PAGES})"))?;
        let mut steps = vacuum.query([])?;
        while steps.next()?.is_some() {}
    }
    Ok(deleted)
}

/// Idempotency keys deleted per expiry step, per finished task deleted.
const KEYS_PER_TASK_CHUNK: u64 = 8;

const COLUMNS: &str = "id, op, args, status, result, error, worker, digest, attempts, submitted_at_ms, started_at_ms, finished_at_ms, priority, retries, retried, timeout_ms, deadline_ms, attempt_errors, batch, retry_at_ms";

pub fn recover(conn: &Connection, recent_finished: usize) -> rusqlite::Result<Recovered> {
    let counted: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'next_id'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let after_max: Option<i64> =
        conn.query_row("SELECT MAX(id) + 1 FROM tasks", [], |row| row.get(0))?;
    let fresh = counted.is_none() && after_max.is_none();
    let next_id = match counted.max(after_max) {
        Some(next) => next as u64,
        None => super::first_id(),
    };
    let mut tasks = Vec::new();
    let mut finished = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE status NOT IN ('queued', 'running') ORDER BY id DESC LIMIT ?1"
    ))?;
    let recent: Vec<Task> = finished
        .query_map([recent_finished as i64], row_to_task)?
        .collect::<rusqlite::Result<_>>()?;
    tasks.extend(recent.into_iter().rev());
    let mut unfinished = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE status IN ('queued', 'running') ORDER BY id"
    ))?;
    for task in unfinished.query_map([], row_to_task)? {
        let mut task = task?;
        // Whatever was running when the planner stopped runs again.
        task.status = TaskStatus::Queued;
        task.started_at_ms = None;
        task.worker = None;
        tasks.push(task);
    }
    Ok(Recovered {
        tasks,
        next_id,
        fresh,
    })
}

pub fn get(conn: &Connection, id: u64) -> rusqlite::Result<Option<Task>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
        [id as i64],
        row_to_task,
    )
    .optional()
}

fn args_json(args: &[i64]) -> String {
    serde_json::to_string(args).unwrap_or_else(|_| "[]".into())
}

fn row_to_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    let args: String = row.get(2)?;
    let status: String = row.get(3)?;
    let result: Option<i64> = row.get(4)?;
    let error: Option<String> = row.get(5)?;
    let worker: Option<String> = row.get(6)?;
    let digest: Option<String> = row.get(7)?;
    let status = TaskStatus::parse(&status).unwrap_or(TaskStatus::Queued);
    let errors: Option<String> = row.get(17)?;
    let output = match (result, error) {
        (Some(v), _) => Some(Output::Result(v)),
        (None, Some(e)) => Some(Output::Error(e)),
        _ => None,
    };
    Ok(Task {
        id: row.get::<_, i64>(0)? as u64,
        op: row.get::<_, String>(1)?.into(),
        args: serde_json::from_str::<Vec<i64>>(&args)
            .unwrap_or_default()
            .into(),
        status,
        output,
        worker: worker.map(Into::into),
        digest: digest.map(Into::into),
        attempts: row.get(8)?,
        submitted_at_ms: row.get::<_, i64>(9)? as u64,
        started_at_ms: row.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        finished_at_ms: row.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        dispatch: None,
        controls: Box::new(Controls {
            priority: row.get::<_, i64>(12)?.clamp(i8::MIN.into(), i8::MAX.into()) as i8,
            retries: row.get(13)?,
            timeout_ms: row.get::<_, Option<i64>>(15)?.map(|v| v as u64),
            deadline_ms: row.get::<_, Option<i64>>(16)?.map(|v| v as u64),
            batch: row.get::<_, Option<i64>>(18)?.map(|v| v as u64),
        }),
        retried: row.get(14)?,
        attempt_errors: super::errors_from_json(errors.as_deref()),
        retry_at_ms: row.get::<_, Option<i64>>(19)?.map(|v| v as u64),
        queue_seq: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Expiry;

    /// `n` finished tasks, finished at 1000, 1001, ... ms.
    fn finished_tasks(conn: &Connection, n: u64) {
        let tx = conn.unchecked_transaction().expect("transaction");
        for id in 1..=n {
            tx.execute(
                "INSERT INTO tasks (id, op, args, status, result, attempts, submitted_at_ms, finished_at_ms)
                 VALUES (?1, 'add', '[1,2]', 'done', 3, 1, 0, ?2)",
                params![id as i64, 1000 + id as i64],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }

    fn ids(conn: &Connection) -> Vec<i64> {
        let mut query = conn
            .prepare("SELECT id FROM tasks ORDER BY id")
            .expect("prepare");
        query
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    fn expire_once(conn: &mut Connection, retained: &mut Retained, expiry: Expiry) -> u64 {
        let (ack, _) = tokio::sync::oneshot::channel();
        let applied = apply(conn, &[Write::Expire(expiry, ack)], retained).expect("apply");
        applied.expired[0]
    }

    #[test]
    fn expiry_deletes_by_age_then_by_count_in_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = open(&dir.path().join("t.sqlite3")).expect("open");
        finished_tasks(&conn, 100);
        conn.execute(
            "INSERT INTO tasks (id, op, args, status, attempts, submitted_at_ms) VALUES (101, 'add', '[1,2]', 'queued', 0, 0)",
            [],
        )
        .expect("a queued task");
        let mut retained = Retained::default();
        let by_age = Expiry {
            // Finished before 1031: tasks 1..=30.
            finished_before_ms: Some(1031),
            keep_at_most: None,
            chunk: 20,
            keys_before_ms: None,
        };
        assert_eq!(expire_once(&mut conn, &mut retained, by_age), 20);
        assert_eq!(expire_once(&mut conn, &mut retained, by_age), 10);
        assert_eq!(expire_once(&mut conn, &mut retained, by_age), 0);
        assert_eq!(ids(&conn).first(), Some(&31));
        let by_count = Expiry {
            finished_before_ms: None,
            keep_at_most: Some(50),
            chunk: 1000,
            keys_before_ms: None,
        };
        assert_eq!(expire_once(&mut conn, &mut retained, by_count), 20);
        let left = ids(&conn);
        assert_eq!(left.len(), 51, "50 finished and the queued one");
        assert_eq!(left.first(), Some(&51), "the oldest went first");
        assert_eq!(left.last(), Some(&101), "a queued task is never deleted");
    }

    #[test]
    fn a_data_dir_from_before_the_task_controls_opens_and_keeps_its_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sqlite3");
        {
            // The previous version's schema, with a queued and a finished task.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "PRAGMA auto_vacuum = INCREMENTAL;
                 CREATE TABLE tasks (id INTEGER PRIMARY KEY, op TEXT NOT NULL, args TEXT NOT NULL,
                 status TEXT NOT NULL, result INTEGER, error TEXT, worker TEXT, digest TEXT,
                 attempts INTEGER NOT NULL DEFAULT 0, submitted_at_ms INTEGER NOT NULL,
                 started_at_ms INTEGER, finished_at_ms INTEGER);
                 CREATE INDEX tasks_unfinished ON tasks(status) WHERE status IN ('queued', 'running');
                 CREATE INDEX tasks_expiry ON tasks(finished_at_ms) WHERE status IN ('done', 'failed', 'cancelled');
                 CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT INTO tasks (id, op, args, status, attempts, submitted_at_ms)
                     VALUES (1, 'mul', '[6,7]', 'queued', 0, 10);
                 INSERT INTO tasks (id, op, args, status, result, attempts, submitted_at_ms, finished_at_ms)
                     VALUES (2, 'add', '[1,2]', 'done', 3, 1, 10, 20);
                 INSERT INTO counters VALUES ('next_id', 3);",
            )
            .expect("old schema");
        }
        let mut conn = open(&path).expect("the old data dir opens");
        let recovered = recover(&conn, 10).expect("recover");
        assert_eq!(recovered.next_id, 3);
        let ids: Vec<u64> = recovered.tasks.iter().map(|t| t.id).collect();
        assert_eq!(ids, [2, 1]);
        assert!(
            recovered
                .tasks
                .iter()
                .all(|t| *t.controls == Controls::default() && t.attempt_errors.is_empty())
        );
        // New tasks with controls, and an idempotency key, go in beside them.
        let task = Task::new(3, "mul".into(), vec![2, 3].into(), 30).with_controls(Controls {
            priority: -4,
            retries: 2,
            timeout_ms: Some(500),
            deadline_ms: Some(530),
            batch: Some(3),
        });
        let key = crate::store::Idempotency {
            key: "k".into(),
            request: "r".into(),
            created_at_ms: 30,
        };
        let (ack, _) = tokio::sync::oneshot::channel();
        let batch = [Write::Insert(vec![task.clone()], Some(key.clone()), ack)];
        let applied = apply(&mut conn, &batch, &mut Retained::default()).expect("insert");
        assert!(applied.replays.is_empty());
        let stored = get(&conn, 3).expect("get").expect("stored");
        assert_eq!(*stored.controls, *task.controls);
        let (ack, _) = tokio::sync::oneshot::channel();
        let again = [Write::Insert(vec![task], Some(key), ack)];
        let applied = apply(&mut conn, &again, &mut Retained::default()).expect("replay");
        assert_eq!(
            applied.replays.get(&0),
            Some(&Insertion::Replay {
                ids: vec![3],
                request: "r".into()
            })
        );
        // Retention still finds finished tasks through its new index.
        let all = Expiry {
            finished_before_ms: Some(100),
            keep_at_most: None,
            chunk: 10,
            keys_before_ms: None,
        };
        assert_eq!(expire_once(&mut conn, &mut Retained::default(), all), 1);
        // Keys have their own window: kept above, deleted by it alone
        // (RESULT_TTL=0 deletes no task).
        assert!(idempotent(&conn, "k").expect("read").is_some());
        let keys = Expiry {
            finished_before_ms: None,
            keep_at_most: None,
            chunk: 10,
            keys_before_ms: Some(31),
        };
        assert_eq!(expire_once(&mut conn, &mut Retained::default(), keys), 0);
        assert_eq!(idempotent(&conn, "k").expect("read"), None);
    }

    #[test]
    fn an_older_database_switches_to_incremental_vacuum_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.sqlite3");
        {
            // As the planner created it before retention: auto_vacuum=NONE.
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE tasks (id INTEGER PRIMARY KEY, op TEXT NOT NULL, args TEXT NOT NULL,
                 status TEXT NOT NULL, result INTEGER, error TEXT, worker TEXT, digest TEXT,
                 attempts INTEGER NOT NULL DEFAULT 0, submitted_at_ms INTEGER NOT NULL,
                 started_at_ms INTEGER, finished_at_ms INTEGER);",
            )
            .expect("old schema");
            finished_tasks(&conn, 20_000);
        }
        let mut conn = open(&path).expect("reopen");
        let mode = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0))
                .expect("pragma")
        };
        assert_eq!(mode(&conn), 0, "opening alone cannot switch it");
        enable_incremental_vacuum(&conn);
        assert_eq!(mode(&conn), 2);
        assert_eq!(ids(&conn).len(), 20_000);
        // Deleting most rows gives the space back to the file system.
        let pages = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "page_count", |row| row.get(0))
                .expect("pragma")
        };
        let before = pages(&conn);
        let mut retained = Retained::default();
        let all = Expiry {
            finished_before_ms: Some(u64::MAX >> 1),
            keep_at_most: None,
            chunk: 100_000,
            keys_before_ms: None,
        };
        assert_eq!(expire_once(&mut conn, &mut retained, all), 20_000);
        // Each pass returns a bounded number of pages.
        for _ in 0..10 {
            expire_once(&mut conn, &mut retained, all);
        }
        let after = pages(&conn);
        assert!(after * 4 < before, "{before} pages before, {after} after");
    }
}
