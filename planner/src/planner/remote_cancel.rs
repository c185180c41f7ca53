//! Cancelling tasks another replica holds (PostgreSQL store).
//!
//! Only the replica holding a task can stop it: it knows the worker and the
//! dispatch, and only its result write is accepted for the task. So the
//! replica asked records a cancel request on the task's row and NOTIFYs the
//! owner (`tasks_cancel`); the owner, woken (or by its poll), ends the task
//! on its board, interrupting the worker as for a local cancel, and records
//! it cancelled. The replica asked waits a bounded time for that: a
//! `DELETE /tasks/{id}` answers 200 with the cancelled task once it is
//! recorded, or 202 with the task as it stands after [`CANCEL_WAIT`] (the
//! request stays and is carried out when the owner sees it). A request on a
//! task whose owner gave it back or died is carried out by whichever
//! replica looks first (see [`Planner::settle_released_cancels`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::TaskId;
use wire::planner::{TaskStatus, TaskView};

use super::Planner;
use crate::board::{CancelError, Effects};
use crate::store::StoreError;
use crate::store::postgres::{CancelScope, PgError};

/// How long a cancel of a task held by another replica waits for it to
/// end before answering with the task as it stands.
pub const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How often, while waiting, the database is asked how the request stands.
const RECHECK: Duration = Duration::from_millis(25);
/// How often the owner looks for requests without being woken.
const REQUESTS_POLL: Duration = Duration::from_millis(500);

/// What a cancel did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The task is cancelled (recorded).
    Done(TaskView),
    /// Another replica holds the task and had not ended it within
    /// [`CANCEL_WAIT`]: the request stands; this is the task meanwhile.
    Requested(TaskView),
}

/// The outcome of bulk cancel requests to the replicas holding the tasks.
#[derive(Debug, Default)]
pub(super) struct RemoteCancels {
    pub cancelled: u64,
    /// Requested by id, but they had finished otherwise first.
    pub finished: Vec<TaskId>,
    /// Still requested when the answer was due.
    pub pending: u64,
    /// Every id a request was recorded on.
    pub requested: Vec<TaskId>,
}

fn store_error(err: PgError) -> CancelError {
    CancelError::Store(err.to_string())
}

impl Planner {
    /// Cancels task `id`, which another replica holds: see the module doc.
    pub(super) async fn cancel_elsewhere(&self, id: TaskId) -> Result<CancelOutcome, CancelError> {
        let Some(pg) = self.store.shared() else {
            return Err(CancelError::NotFound);
        };
        pg.request_cancel(Some(&[id]), None, CancelScope::Any)
            .await
            .map_err(store_error)?;
        let deadline = Instant::now() + CANCEL_WAIT;
        loop {
            // Given back by its owner meanwhile: cancelled here.
            match pg
                .cancel_unclaimed(id, serve::now_ms())
                .await
                .map_err(store_error)?
            {
                Ok(task) => {
                    self.finished_shared(1);
                    self.answer_waiters(&task);
                    return Ok(CancelOutcome::Done(task.view(None)));
                }
                // Still held by a replica.
                Err(CancelError::NotQueued(TaskStatus::Running)) => {}
                Err(CancelError::NotQueued(TaskStatus::Cancelled)) => {
                    let view = pg
                        .get(id)
                        .await
                        .map_err(store_error)?
                        .ok_or(CancelError::NotFound)?
                        .view(None);
                    return Ok(CancelOutcome::Done(view));
                }
                Err(other) => return Err(other),
            }
            if Instant::now() >= deadline {
                let view = self
                    .view(id)
                    .await
                    .map_err(|e| CancelError::Store(e.to_string()))?
                    .ok_or(CancelError::NotFound)?;
                tracing::info!(
                    task = id,
                    waited_ms = CANCEL_WAIT.as_millis() as u64,
                    "the replica holding the task has not cancelled it yet; the request stands"
                );
                return Ok(CancelOutcome::Requested(view));
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    /// Asks the replicas holding tasks (among `ids`, or of `op` in `scope`)
    /// to cancel them, and waits up to [`CANCEL_WAIT`] for the outcome.
    pub(super) async fn cancel_held_elsewhere(
        &self,
        ids: Option<&[TaskId]>,
        op: Option<&str>,
        scope: CancelScope,
    ) -> Result<RemoteCancels, StoreError> {
        let mut outcome = RemoteCancels::default();
        let Some(pg) = self.store.shared() else {
            return Ok(outcome);
        };
        if ids.is_some_and(<[TaskId]>::is_empty) {
            return Ok(outcome);
        }
        let requested = pg.request_cancel(ids, op, scope).await?;
        if requested.is_empty() {
            return Ok(outcome);
        }
        let deadline = Instant::now() + CANCEL_WAIT;
        let states = loop {
            let states = pg.request_states(&requested).await?;
            let settled = states.iter().all(|s| s.status.is_final() || !s.pending);
            if settled || Instant::now() >= deadline {
                break states;
            }
            tokio::time::sleep(RECHECK).await;
        };
        for state in states {
            match state.status {
                TaskStatus::Cancelled => outcome.cancelled += 1,
                status if status.is_final() => outcome.finished.push(state.id),
                _ if state.pending => outcome.pending += 1,
                // The request did not apply (a bulk cancel of running tasks
                // found it queued, or the other way round).
                _ => {}
            }
        }
        outcome.requested = requested;
        Ok(outcome)
    }

    /// Carries out the cancel requests on tasks this replica holds, until
    /// the process ends: woken by NOTIFY `tasks_cancel`, and polling.
    pub(super) async fn cancel_requests_forever(self: Arc<Self>) {
        let Some(replica) = &self.replica else {
            return;
        };
        let wake = replica.wake.cancel.clone();
        loop {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(REQUESTS_POLL) => {}
            }
            if let Err(err) = self.carry_out_cancel_requests().await {
                tracing::warn!(error = %err, "handling cancel requests failed; retrying");
            }
        }
    }

    async fn carry_out_cancel_requests(&self) -> Result<(), PgError> {
        let Some(pg) = self.store.shared() else {
            return Ok(());
        };
        let requests = pg.cancel_requests().await?;
        if requests.is_empty() {
            return Ok(());
        }
        let mut effects = Effects::default();
        let mut not_applicable = Vec::new();
        let mut not_held = Vec::new();
        {
            let mut board = self.board();
            for (id, scope) in requests {
                let Some(status) = board.task(id).map(|t| t.status) else {
                    not_held.push(id);
                    continue;
                };
                if status.is_final() {
                    // Its final state is on its way to the database.
                    continue;
                }
                if !scope.covers(status) {
                    not_applicable.push(id);
                    continue;
                }
                if let Ok(cancelled) = board.cancel(id) {
                    effects.finished.extend(cancelled.finished);
                    effects.interrupts.extend(cancelled.interrupts);
                }
            }
        }
        if !effects.finished.is_empty() {
            tracing::info!(
                tasks = effects.finished.len(),
                "cancelled tasks as another replica asked"
            );
            self.apply(effects);
        }
        if !not_applicable.is_empty() {
            pg.clear_cancel_requests(&not_applicable).await?;
        }
        if !not_held.is_empty() {
            let cancelled = pg.cancel_owned(&not_held, serve::now_ms()).await?;
            for task in &cancelled {
                self.answer_waiters(task);
            }
        }
        Ok(())
    }

    /// Cancels the tasks whose cancel was requested while some replica held
    /// them, and which are queued again, held by none (given back, or their
    /// replica died).
    pub(super) async fn settle_released_cancels(&self) {
        let Some(pg) = self.store.shared() else {
            return;
        };
        match pg.cancel_released(serve::now_ms()).await {
            Ok(cancelled) => {
                for task in &cancelled {
                    self.answer_waiters(task);
                }
            }
            Err(err) => tracing::debug!(error = %err, "settling cancel requests failed; retrying"),
        }
    }
}
