//! Submitting, reading and cancelling tasks; the clock of their controls
//! (deadlines, retry backoff).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use wire::TaskId;
use wire::planner::{NewTask, TaskView};

use super::{CancelOutcome, Planner};
use crate::board::{CancelError, Interrupt};
use crate::events::Event;
use crate::store::{Commit, Idempotency, Insertion, StoreError};
use crate::task::{Controls, Task};
use crate::telemetry;

/// Most arguments a task may carry.
pub const MAX_ARGS: usize = 64;

/// The longest the controls' clock sleeps without looking (a task may have
/// got an earlier deadline meanwhile).
const CONTROLS_TICK: Duration = Duration::from_millis(50);
/// How often the shared store is asked for unclaimed tasks past their deadline.
const SHARED_EXPIRY_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error("the queue is full ({limit} tasks waiting); retry later")]
    QueueFull { limit: usize },
    #[error("could not persist the task: {0}")]
    Store(#[from] StoreError),
    #[error(
        "this Idempotency-Key was used with a different submission; a key names one submission (use a new key for new work)"
    )]
    KeyReused,
}

/// What a submission got.
pub struct Submitted {
    pub ids: Vec<TaskId>,
    /// With `wait`: one per task, resolving when it reaches a final state.
    pub receivers: Vec<oneshot::Receiver<TaskView>>,
    /// The idempotency key had been used by this same submission: these
    /// are the first one's tasks; nothing new was queued.
    pub replayed: bool,
    /// The batch's id, for a submission of an array.
    pub batch: Option<TaskId>,
}

impl Planner {
    /// Validates, persists, queues. With `wait`, also returns a receiver per
    /// task that resolves when it reaches a final state.
    pub async fn submit(
        self: &Arc<Self>,
        new: Vec<NewTask>,
        wait: bool,
    ) -> Result<(Vec<TaskId>, Vec<oneshot::Receiver<TaskView>>), SubmitError> {
        let submitted = self.submit_keyed(new, wait, None, false).await?;
        Ok((submitted.ids, submitted.receivers))
    }

    /// [`Planner::submit`] with an idempotency key: a submission repeating
    /// a stored key gets the first one's ids (if it is the same submission)
    /// and queues nothing.
    pub async fn submit_keyed(
        self: &Arc<Self>,
        new: Vec<NewTask>,
        wait: bool,
        key: Option<Idempotency>,
        as_batch: bool,
    ) -> Result<Submitted, SubmitError> {
        if new.is_empty() {
            return Err(SubmitError::Invalid("no tasks in the submission".into()));
        }
        if let Some(key) = &key
            && let Some(replay) = self.store.idempotent(&key.key).await?
        {
            return self.replay(replay, key, wait, as_batch).await;
        }
        self.validate(&new)?;
        let mut queued = self
            .queued_shared()
            .unwrap_or_else(|| self.board().queued());
        if queued + new.len() > self.limits.queue
            && let Some(recounted) = self.recount_shared().await
        {
            queued = recounted;
        }
        if queued + new.len() > self.limits.queue {
            return Err(SubmitError::QueueFull {
                limit: self.limits.queue,
            });
        }
        let ids = self.store.new_ids(new.len()).await?;
        let now = serve::now_ms();
        let batch = as_batch.then(|| ids.first().copied()).flatten();
        let tasks: Vec<Task> = new
            .into_iter()
            .zip(ids)
            .map(|(t, id)| {
                let mut controls = self.controls_of(&t, now);
                controls.batch = batch;
                Task::new(id, t.op.into(), t.args.into(), now).with_controls(controls)
            })
            .collect();
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        // Waiters first: with a shared store another replica (or this one's
        // claim loop) may run a task the moment its insert commits.
        let receivers = if wait {
            self.subscribe(&ids)
        } else {
            Vec::new()
        };
        if key.is_none()
            && self.replica.is_none()
            && let Some(commit) = self.store.begin_insert(tasks.clone())
        {
            return self
                .submit_overlapped(commit, tasks, receivers, batch)
                .await;
        }
        let inserted = self.store.insert(tasks.clone(), key.clone()).await;
        if !matches!(inserted, Ok(Insertion::Inserted)) {
            self.forget_waiters(&ids);
        }
        if let Insertion::Replay { .. } = inserted? {
            // Another submission with this key won the race: answer as it did.
            let Some(key) = &key else {
                return Err(SubmitError::Invalid("a replay without a key".into()));
            };
            let replay = self
                .store
                .idempotent(&key.key)
                .await?
                .ok_or_else(|| SubmitError::Invalid("the idempotency key vanished".into()))?;
            return self.replay(replay, key, wait, as_batch).await;
        }
        let queued = self.queued_views(&tasks);
        for task in &tasks {
            telemetry::submitted(&task.op);
        }
        for view in queued {
            self.events.publish(Event::Task(view));
        }
        if self.replica.is_some() {
            // In the database for whichever replica claims it first.
            self.submitted_shared(tasks.len());
        } else {
            self.board().insert(tasks);
            self.pump();
        }
        Ok(Submitted {
            ids,
            receivers,
            replayed: false,
            batch,
        })
    }

    /// Queues tasks whose commit is under way (see [`Store::begin_insert`]):
    /// they may be dispatched, even run, while their fsync is in progress,
    /// and the client is answered only once they are on disk. A commit that
    /// fails withdraws them: never acknowledged, they vanish from the board
    /// (a call in progress is interrupted, its answer ignored), and the
    /// event stream, which saw them queued, sees them fail.
    ///
    /// [`Store::begin_insert`]: crate::store::Store::begin_insert
    async fn submit_overlapped(
        self: &Arc<Self>,
        commit: Result<Commit, StoreError>,
        tasks: Vec<Task>,
        receivers: Vec<oneshot::Receiver<TaskView>>,
        batch: Option<TaskId>,
    ) -> Result<Submitted, SubmitError> {
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        let commit = match commit {
            Ok(commit) => commit,
            Err(err) => {
                self.forget_waiters(&ids);
                return Err(err.into());
            }
        };
        // Published before any dispatch can publish them running.
        let queued = self.queued_views(&tasks);
        for view in &queued {
            self.events.publish(Event::Task(view.clone()));
        }
        let ops: Vec<Arc<str>> = tasks.iter().map(|t| t.op.clone()).collect();
        self.board().insert(tasks);
        self.pump();
        if let Err(err) = commit.done().await {
            self.forget_waiters(&ids);
            let effects = self.board().withdraw(&ids);
            self.interrupt(effects.interrupts);
            tracing::warn!(tasks = ids.len(), error = %err, "a submission was not committed; its tasks are withdrawn");
            for mut view in queued {
                view.status = wire::planner::TaskStatus::Failed;
                view.error = Some(format!("not accepted: {err}"));
                self.events.publish(Event::Task(view));
            }
            return Err(err.into());
        }
        for op in &ops {
            telemetry::submitted(op);
        }
        Ok(Submitted {
            ids,
            receivers,
            replayed: false,
            batch,
        })
    }

    /// New tasks as the event stream shows them (none without a listener).
    fn queued_views(&self, tasks: &[Task]) -> Vec<TaskView> {
        if self.events.active() {
            tasks.iter().map(|t| t.view(None)).collect()
        } else {
            Vec::new()
        }
    }

    fn forget_waiters(&self, ids: &[TaskId]) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            waiters.remove(id);
        }
    }

    /// The answer to a submission whose key was stored: the first one's
    /// ids, if it was the same submission.
    async fn replay(
        &self,
        replay: Insertion,
        key: &Idempotency,
        wait: bool,
        as_batch: bool,
    ) -> Result<Submitted, SubmitError> {
        let Insertion::Replay { ids, request } = replay else {
            return Err(SubmitError::Invalid("not a replay".into()));
        };
        if request != key.request {
            return Err(SubmitError::KeyReused);
        }
        let receivers = if wait {
            self.subscribe_existing(&ids).await?
        } else {
            Vec::new()
        };
        Ok(Submitted {
            batch: as_batch.then(|| ids.first().copied()).flatten(),
            ids,
            receivers,
            replayed: true,
        })
    }

    /// Receivers for tasks that may have finished already (a replayed
    /// submission's): those resolve at once.
    async fn subscribe_existing(
        &self,
        ids: &[TaskId],
    ) -> Result<Vec<oneshot::Receiver<TaskView>>, StoreError> {
        let receivers = self.subscribe(ids);
        for id in ids {
            if let Some(view) = self.view(*id).await?
                && view.status.is_final()
            {
                let list = self
                    .waiters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(id);
                for waiter in list.into_iter().flatten() {
                    let _ = waiter.send(view.clone());
                }
            }
        }
        Ok(receivers)
    }

    fn controls_of(&self, task: &NewTask, now_ms: u64) -> Controls {
        let timeout = task.timeout_ms.or(self.limits.task_timeout_ms);
        Controls {
            priority: task.priority.unwrap_or(0).clamp(
                wire::controls::MIN_PRIORITY.into(),
                wire::controls::MAX_PRIORITY.into(),
            ) as i8,
            retries: task
                .retries
                .unwrap_or(0)
                .min(wire::controls::MAX_RETRIES.into()) as u32,
            timeout_ms: task.timeout_ms,
            deadline_ms: timeout.map(|t| now_ms.saturating_add(t)),
            batch: None,
        }
    }

    fn validate(&self, new: &[NewTask]) -> Result<(), SubmitError> {
        use wire::controls::{MAX_PRIORITY, MAX_RETRIES, MAX_TIMEOUT_MS, MIN_PRIORITY};
        let board = self.board();
        for (i, task) in new.iter().enumerate() {
            let at = if new.len() > 1 {
                format!("task {i}: ")
            } else {
                String::new()
            };
            if let Err(why) = wire::check_op_name(&task.op) {
                return Err(SubmitError::Invalid(format!("{at}{why}")));
            }
            if task.args.len() > MAX_ARGS {
                return Err(SubmitError::Invalid(format!(
                    "{at}too many arguments ({} > {MAX_ARGS})",
                    task.args.len()
                )));
            }
            if let Some(timeout) = task.timeout_ms
                && !(1..=MAX_TIMEOUT_MS).contains(&timeout)
            {
                return Err(SubmitError::Invalid(format!(
                    "{at}`timeout_ms` is {timeout}: from 1 to {MAX_TIMEOUT_MS} (7 days)"
                )));
            }
            if let Some(retries) = task.retries
                && retries > u64::from(MAX_RETRIES)
            {
                return Err(SubmitError::Invalid(format!(
                    "{at}`retries` is {retries}: at most {MAX_RETRIES}"
                )));
            }
            if let Some(priority) = task.priority
                && !(i64::from(MIN_PRIORITY)..=i64::from(MAX_PRIORITY)).contains(&priority)
            {
                return Err(SubmitError::Invalid(format!(
                    "{at}`priority` is {priority}: from {MIN_PRIORITY} to {MAX_PRIORITY}"
                )));
            }
            if let Some(arity) = board.known_arity(&task.op)
                && arity as usize != task.args.len()
            {
                return Err(SubmitError::Invalid(format!(
                    "{at}op `{}` takes {arity} arguments, got {}",
                    task.op,
                    task.args.len()
                )));
            }
        }
        Ok(())
    }

    fn subscribe(&self, ids: &[TaskId]) -> Vec<oneshot::Receiver<TaskView>> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .map(|id| {
                let (tx, rx) = oneshot::channel();
                waiters.entry(*id).or_default().push(tx);
                rx
            })
            .collect()
    }

    pub async fn view(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        let on_board = self.board().view(id);
        if let Some(view) = on_board {
            return Ok(Some(view));
        }
        let Some(task) = self.store.get(id).await? else {
            return Ok(None);
        };
        let waiting_for = (task.status == wire::planner::TaskStatus::Queued)
            .then(|| self.board().unclaimed_reason(&task.op))
            .flatten();
        Ok(Some(task.view(waiting_for)))
    }

    /// Cancels a queued task, or a running one (its worker is told to stop
    /// the call at once). With a shared store, a task another replica holds
    /// is cancelled by that replica, asked through the database (see
    /// [`super::remote_cancel`]).
    pub async fn cancel(&self, id: TaskId) -> Result<CancelOutcome, CancelError> {
        let on_board = self.board().cancel(id);
        let effects = match on_board {
            Err(CancelError::NotFound) if self.replica.is_some() => {
                let Some(pg) = self.store.shared() else {
                    return Err(CancelError::NotFound);
                };
                // Not held here: cancel it in the database if no replica
                // has claimed it yet.
                let cancelled = match pg
                    .cancel_unclaimed(id, serve::now_ms())
                    .await
                    .map_err(|e| CancelError::Store(e.to_string()))?
                {
                    Err(CancelError::NotQueued(wire::planner::TaskStatus::Running)) => {
                        return self.cancel_elsewhere(id).await;
                    }
                    other => other?,
                };
                self.finished_shared(1);
                self.answer_waiters(&cancelled);
                return Ok(CancelOutcome::Done(cancelled.view(None)));
            }
            other => other?,
        };
        let view = effects
            .finished
            .first()
            .map(|t| t.view(None))
            .ok_or(CancelError::NotFound)?;
        // A running task's slot frees when its worker answers the dispatch
        // (at once, interrupted); that answer pumps.
        self.apply(effects);
        Ok(CancelOutcome::Done(view))
    }

    /// Tells workers to stop the calls of tasks that ended meanwhile
    /// (cancelled, expired). Best effort: a worker that does not hear it
    /// finishes the call, and its answer is ignored.
    pub(super) fn interrupt(&self, interrupts: Vec<Interrupt>) {
        for interrupt in interrupts {
            self.dispatcher.interrupt(interrupt);
        }
    }

    /// The clock of the task controls, until the process ends: expires
    /// tasks past their deadline (interrupting running ones) and requeues
    /// tasks whose retry backoff is over, each when it is due.
    pub async fn controls_forever(self: Arc<Self>) {
        let mut last_shared = std::time::Instant::now();
        loop {
            let next = self.board().next_due_ms();
            let wait = next.map_or(CONTROLS_TICK, |due| {
                Duration::from_millis(due.saturating_sub(serve::now_ms())).min(CONTROLS_TICK)
            });
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let effects = self.board().tick(serve::now_ms());
            if !effects.finished.is_empty() || !effects.requeued.is_empty() {
                let expired = effects.finished.len();
                if expired > 0 {
                    tracing::info!(tasks = expired, "tasks expired: their deadline passed");
                }
                self.apply(effects);
                self.pump();
            }
            if self.replica.is_some() && last_shared.elapsed() >= SHARED_EXPIRY_EVERY {
                last_shared = std::time::Instant::now();
                self.expire_shared().await;
            }
        }
    }

    /// Expires the tasks past their deadline that no replica has claimed,
    /// and cancels those whose cancel was asked while a replica held them.
    async fn expire_shared(&self) {
        let Some(pg) = self.store.shared() else {
            return;
        };
        self.settle_released_cancels().await;
        match pg.expire_unclaimed(serve::now_ms()).await {
            Ok(expired) if !expired.is_empty() => {
                self.finished_shared(expired.len());
                for task in &expired {
                    self.answer_waiters(task);
                    telemetry::finished(task);
                }
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "expiring unclaimed tasks failed; retrying"),
        }
    }
}
