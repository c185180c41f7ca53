//! The SQLite schema and queries.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use wire::Output;
use wire::planner::TaskStatus;

use super::{Recovered, Write};
use crate::task::Task;

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // WAL: readers don't block the writer. synchronous=FULL: a commit is on
    // disk when it returns, which is what acknowledging a task promises.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
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
    Ok(conn)
}

pub fn apply(conn: &mut Connection, batch: &[Write]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO tasks (id, op, args, status, attempts, submitted_at_ms) VALUES (?1, ?2, ?3, 'queued', 0, ?4)",
        )?;
        // The id counter survives even when every task row is gone.
        let mut next_id = tx.prepare_cached(
            "INSERT INTO counters (name, value) VALUES ('next_id', ?1)
             ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
        )?;
        let mut finish = tx.prepare_cached(
            "UPDATE tasks SET status = ?2, result = ?3, error = ?4, worker = ?5, digest = ?6, attempts = ?7,
             started_at_ms = ?8, finished_at_ms = ?9 WHERE id = ?1",
        )?;
        let mut attempts = tx.prepare_cached("UPDATE tasks SET attempts = ?2 WHERE id = ?1")?;
        for write in batch {
            match write {
                Write::Insert(tasks, _) => {
                    for t in tasks {
                        insert.execute(params![
                            t.id as i64,
                            &*t.op,
                            args_json(&t.args),
                            t.submitted_at_ms as i64
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
                    finish.execute(params![
                        t.id as i64,
                        t.status.as_str(),
                        result,
                        error,
                        t.worker.as_deref(),
                        t.digest.as_deref(),
                        t.attempts,
                        t.started_at_ms.map(|v| v as i64),
                        t.finished_at_ms.map(|v| v as i64),
                    ])?;
                }
                Write::Attempts(id, n) => {
                    attempts.execute(params![*id as i64, n])?;
                }
                Write::Flush(_) => {}
            }
        }
    }
    tx.commit()
}

const COLUMNS: &str = "id, op, args, status, result, error, worker, digest, attempts, submitted_at_ms, started_at_ms, finished_at_ms";

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
    })
}
