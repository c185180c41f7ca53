//! The one writer: group-commits submissions, results and attempt counts.
//!
//! Submissions are acknowledged after their commit; whatever queued up while
//! the previous transaction ran goes into the next one, as one `INSERT ...
//! SELECT FROM unnest(...)` per batch. Results are written behind, and only
//! under the claim this replica holds (`owner = $me AND claim = ..`): a
//! result of a task that was given to another replica meanwhile is dropped,
//! so each task is recorded once. A failed write of results is retried until
//! it lands, so nothing acknowledged is lost while the database is away.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use wire::{Output, TaskId};

use super::claims::Claims;
use super::{PgError, Write};
use crate::board::Progress;
use crate::store::Insertion;
use crate::task::Task;

/// Most writes in one transaction.
const MAX_BATCH: usize = 8192;

pub async fn write_loop(
    pool: Pool,
    owner: std::sync::Arc<str>,
    claims: Claims,
    mut rx: mpsc::UnboundedReceiver<Write>,
) {
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
        let result = apply(&pool, &owner, &claims, &batch)
            .await
            .map_err(|e| e.to_string());
        if let Err(err) = &result {
            tracing::error!(error = %err, writes = batch.len(), "store commit failed; results are retried");
        }
        let mut replays = result.clone().unwrap_or_default();
        for (index, write) in batch.into_iter().enumerate() {
            match write {
                Write::Insert(_, _, ack) => {
                    let answer = match &result {
                        Err(err) => Err(err.clone()),
                        Ok(_) => Ok(replays.remove(&index).unwrap_or(Insertion::Inserted)),
                    };
                    let _ = ack.send(answer);
                }
                Write::Flush(ack) => {
                    let _ = ack.send(());
                }
                Write::Finished(task) => {
                    if result.is_err() {
                        pending.push(Write::Finished(task));
                    } else {
                        claims.forget(task.id);
                    }
                }
                write @ Write::Progress(..) => {
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

/// Inserts (by their place in the batch) whose idempotency key was already
/// stored: nothing was inserted for them.
type Replays = HashMap<usize, Insertion>;

/// One transaction for a batch: idempotency keys, inserts, then attempt
/// counts, then results; then a wake-up for the other replicas (a hint:
/// they poll as well).
async fn apply(
    pool: &Pool,
    owner: &str,
    claims: &Claims,
    batch: &[Write],
) -> Result<Replays, PgError> {
    let mut progress: HashMap<TaskId, &Progress> = HashMap::new();
    let mut finished: HashMap<TaskId, &Task> = HashMap::new();
    let mut any_insert = false;
    for write in batch {
        match write {
            Write::Insert(..) => any_insert = true,
            Write::Progress(p) => {
                let seen = progress.entry(p.id).or_insert(p);
                if p.attempts >= seen.attempts {
                    *seen = p;
                }
            }
            Write::Finished(t) => {
                finished.insert(t.id, t);
            }
            Write::Flush(_) => {}
        }
    }
    let mut replays = Replays::new();
    if !any_insert && progress.is_empty() && finished.is_empty() {
        return Ok(replays);
    }
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let mut insert = Inserts::default();
    for (index, write) in batch.iter().enumerate() {
        let Write::Insert(tasks, key, _) = write else {
            continue;
        };
        // The key's row decides, inside this transaction: a second
        // submission with it (here or on another replica) finds it and
        // inserts nothing.
        if let Some(key) = key {
            let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
            let stored = tx
                .execute(
                    "INSERT INTO idempotency (key, request, ids, first_id, created_at_ms)
                     VALUES ($1, $2, $3::text::jsonb, $4, $5) ON CONFLICT (key) DO NOTHING",
                    &[
                        &key.key,
                        &key.request,
                        &crate::store::ids_to_runs(&ids),
                        &(ids.first().copied().unwrap_or(0) as i64),
                        &(key.created_at_ms as i64),
                    ],
                )
                .await?;
            if stored == 0 {
                let row = tx
                    .query_opt(
                        "SELECT request, ids::text FROM idempotency WHERE key = $1",
                        &[&key.key],
                    )
                    .await?;
                if let Some(row) = row {
                    replays.insert(
                        index,
                        Insertion::Replay {
                            request: row.try_get(0)?,
                            ids: crate::store::runs_to_ids(row.try_get(1)?),
                        },
                    );
                    continue;
                }
            }
        }
        for t in tasks {
            insert.push(t);
        }
    }
    if !insert.ids.is_empty() {
        tx.execute(
            "INSERT INTO tasks (id, op, args, status, attempts, submitted_at_ms, priority, retries, timeout_ms, deadline_ms, batch)
             SELECT id, op, args::jsonb, 'queued', 0, submitted_at_ms, priority, retries, timeout_ms, deadline_ms, batch
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::smallint[], $6::int[], $7::bigint[], $8::bigint[], $9::bigint[])
                  AS t(id, op, args, submitted_at_ms, priority, retries, timeout_ms, deadline_ms, batch)",
            &[
                &insert.ids,
                &insert.ops,
                &insert.args,
                &insert.submitted,
                &insert.priority,
                &insert.retries,
                &insert.timeout,
                &insert.deadline,
                &insert.batch,
            ],
        )
        .await?;
        tx.execute("SELECT pg_notify('tasks_queued', '')", &[])
            .await?;
    }
    if !progress.is_empty() {
        let mut ids = Vec::with_capacity(progress.len());
        let mut counts = Vec::with_capacity(progress.len());
        let mut retried = Vec::with_capacity(progress.len());
        let mut errors = Vec::with_capacity(progress.len());
        let mut held = Vec::with_capacity(progress.len());
        let mut retry_at = Vec::with_capacity(progress.len());
        for (id, p) in &progress {
            retry_at.push(p.retry_at_ms.map(|v| v as i64));
            ids.push(*id as i64);
            counts.push(p.attempts as i32);
            retried.push(p.retried as i32);
            errors.push(crate::store::errors_json(&p.attempt_errors));
            held.push(claims.of(*id));
        }
        tx.execute(
            "UPDATE tasks SET attempts = a.n, retried = a.retried, attempt_errors = a.errors::jsonb,
                 retry_at_ms = a.retry_at
             FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::int[], $5::text[], $7::bigint[])
                  AS a(id, n, claim, retried, errors, retry_at)
             WHERE tasks.id = a.id AND tasks.owner = $6 AND tasks.claim = a.claim
               AND tasks.status IN ('queued', 'running')",
            &[&ids, &counts, &held, &retried, &errors, &owner, &retry_at],
        )
        .await?;
    }
    if !finished.is_empty() {
        let mut r = Results::default();
        for t in finished.values() {
            r.push(t, claims.of(t.id));
        }
        let recorded = tx
            .execute(
                "UPDATE tasks SET status = f.status, result = f.result, error = f.error, worker = f.worker,
                     digest = f.digest, attempts = f.attempts, started_at_ms = f.started,
                     finished_at_ms = f.finished, owner = NULL, retried = f.retried,
                     attempt_errors = f.errors::jsonb
                 FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                             $7::int[], $8::bigint[], $9::bigint[], $10::bigint[], $12::int[], $13::text[])
                      AS f(id, status, result, error, worker, digest, attempts, started, finished, claim, retried, errors)
                 WHERE tasks.id = f.id AND tasks.owner = $11 AND tasks.claim = f.claim
                   AND tasks.status IN ('queued', 'running')",
                &[
                    &r.ids, &r.status, &r.result, &r.error, &r.worker, &r.digest, &r.attempts,
                    &r.started, &r.finished, &r.claims, &owner, &r.retried, &r.errors,
                ],
            )
            .await?;
        if recorded < r.ids.len() as u64 {
            tracing::info!(
                dropped = r.ids.len() as u64 - recorded,
                "results of tasks this replica no longer holds were not recorded (another replica has them, or they were cancelled)"
            );
        }
        tx.execute("SELECT pg_notify('tasks_finished', '')", &[])
            .await?;
    }
    tx.commit().await?;
    Ok(replays)
}

#[derive(Default)]
struct Inserts {
    ids: Vec<i64>,
    ops: Vec<String>,
    args: Vec<String>,
    submitted: Vec<i64>,
    priority: Vec<i16>,
    retries: Vec<i32>,
    timeout: Vec<Option<i64>>,
    deadline: Vec<Option<i64>>,
    batch: Vec<Option<i64>>,
}

impl Inserts {
    fn push(&mut self, t: &Task) {
        self.ids.push(t.id as i64);
        self.ops.push(t.op.to_string());
        self.args
            .push(serde_json::to_string(&*t.args).unwrap_or_else(|_| "[]".into()));
        self.submitted.push(t.submitted_at_ms as i64);
        self.priority.push(i16::from(t.controls.priority));
        self.retries.push(t.controls.retries as i32);
        self.timeout.push(t.controls.timeout_ms.map(|v| v as i64));
        self.deadline.push(t.controls.deadline_ms.map(|v| v as i64));
        self.batch.push(t.controls.batch.map(|v| v as i64));
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
    claims: Vec<i64>,
    retried: Vec<i32>,
    errors: Vec<Option<String>>,
}

impl Results {
    fn push(&mut self, t: &Task, claim: i64) {
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
        self.claims.push(claim);
        self.retried.push(t.retried as i32);
        self.errors
            .push(crate::store::errors_json(&t.attempt_errors));
    }
}
