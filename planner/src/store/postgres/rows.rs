//! Mapping `tasks` rows to the planner's [`Task`].

use tokio_postgres::Row;
use wire::Output;
use wire::planner::TaskStatus;

use crate::task::{Controls, Task};

/// The columns [`to_task`] reads, in its order.
pub const COLUMNS: &str = "id, op, args::text, status, result, error, worker, digest, attempts, submitted_at_ms, started_at_ms, finished_at_ms, priority, retries, retried, timeout_ms, deadline_ms, attempt_errors::text, batch, retry_at_ms, owner IS NOT NULL";

/// A task's status as the API shows it: a queued task some replica has
/// claimed is on that replica's board, dispatched as soon as one of its
/// workers has a free slot (a replica claims at most one task per slot
/// ahead), so it counts as running, unless it is waiting out a retry's
/// backoff. The database itself only ever stores `queued` for unfinished
/// tasks. ([`to_task_at`] decides the same.)
pub const SHOWN_STATUS: &str = "CASE WHEN status = 'queued' AND owner IS NOT NULL
         AND (retry_at_ms IS NULL OR retry_at_ms <= (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
     THEN 'running' ELSE status END";

/// The statuses a task is unfinished in, as SQL.
pub const UNFINISHED: &str = "('queued', 'running')";

pub fn status(name: &str) -> TaskStatus {
    TaskStatus::parse(name).unwrap_or(TaskStatus::Queued)
}

pub fn to_task(row: &Row) -> Result<Task, tokio_postgres::Error> {
    to_task_at(row, 0)
}

/// [`COLUMNS`] starting at column `at`.
pub fn to_task_at(row: &Row, at: usize) -> Result<Task, tokio_postgres::Error> {
    let args: String = row.try_get(at + 2)?;
    let mut status = status(row.try_get::<_, &str>(at + 3)?);
    let retry_at_ms = row.try_get::<_, Option<i64>>(at + 19)?.map(|v| v as u64);
    let backing_off = retry_at_ms.is_some_and(|at| at > serve::now_ms());
    if status == TaskStatus::Queued && row.try_get::<_, bool>(at + 20)? && !backing_off {
        status = TaskStatus::Running;
    }
    let result: Option<i64> = row.try_get(at + 4)?;
    let error: Option<String> = row.try_get(at + 5)?;
    let output = match (result, error) {
        (Some(v), _) => Some(Output::Result(v)),
        (None, Some(e)) => Some(Output::Error(e)),
        _ => None,
    };
    Ok(Task {
        id: row.try_get::<_, i64>(at)? as u64,
        op: row.try_get::<_, String>(at + 1)?.into(),
        args: serde_json::from_str::<Vec<i64>>(&args)
            .unwrap_or_default()
            .into(),
        status,
        output,
        worker: row.try_get::<_, Option<String>>(at + 6)?.map(Into::into),
        digest: row.try_get::<_, Option<String>>(at + 7)?.map(Into::into),
        attempts: row.try_get::<_, i32>(at + 8)? as u32,
        submitted_at_ms: row.try_get::<_, i64>(at + 9)? as u64,
        started_at_ms: row.try_get::<_, Option<i64>>(at + 10)?.map(|v| v as u64),
        finished_at_ms: row.try_get::<_, Option<i64>>(at + 11)?.map(|v| v as u64),
        dispatch: None,
        controls: Box::new(Controls {
            priority: row
                .try_get::<_, i16>(at + 12)?
                .clamp(i8::MIN.into(), i8::MAX.into()) as i8,
            retries: row.try_get::<_, i32>(at + 13)?.max(0) as u32,
            timeout_ms: row.try_get::<_, Option<i64>>(at + 15)?.map(|v| v as u64),
            deadline_ms: row.try_get::<_, Option<i64>>(at + 16)?.map(|v| v as u64),
            batch: row.try_get::<_, Option<i64>>(at + 18)?.map(|v| v as u64),
        }),
        retried: row.try_get::<_, i32>(at + 14)?.max(0) as u32,
        attempt_errors: crate::store::errors_from_json(row.try_get::<_, Option<&str>>(at + 17)?),
        retry_at_ms,
        queue_seq: 0,
    })
}

pub fn to_tasks(rows: &[Row]) -> Result<Vec<Task>, tokio_postgres::Error> {
    rows.iter().map(to_task).collect()
}
