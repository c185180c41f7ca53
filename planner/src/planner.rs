//! The planner's core: the board, the store and the dispatcher, tied together.
//!
//! Every change follows one path: lock the board, change it, unlock; then
//! persist and wake waiters for what finished, and pump (hand queued tasks to
//! free slots, each send in its own tokio task). Dispatch is driven by these
//! events only: a task leaves the moment a capable slot is free, no polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wire::TaskId;
use wire::planner::{
    NewTask, OpRollout, Registration, RolloutReport, TaskView, WorkerChange, WorkerEvent,
};

use crate::board::{Assignment, Board, CancelError, Effects};
use crate::dispatch::Dispatcher;
use crate::events::{Event, Events};
use crate::modules::{Module, Modules};
use crate::rollout::{PushError, Pusher};
use crate::store::{Store, StoreError};
use crate::task::Task;
use crate::telemetry;

/// Most arguments a task may carry.
pub const MAX_ARGS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error("the queue is full ({limit} tasks waiting); retry later")]
    QueueFull { limit: usize },
    #[error("could not persist the task: {0}")]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("worker {worker} refused the module: {error}")]
    Refused { worker: String, error: String },
    #[error("could not store the module: {0:#}")]
    Store(anyhow::Error),
}

pub struct Limits {
    pub queue: usize,
    pub heartbeat_timeout: Duration,
}

pub struct Planner {
    board: Mutex<Board>,
    store: Store,
    dispatcher: Dispatcher,
    next_id: AtomicU64,
    waiters: Mutex<HashMap<TaskId, Vec<oneshot::Sender<TaskView>>>>,
    limits: Limits,
    gaps: crate::latency::Recorder,
    modules: Modules,
    pusher: Pusher,
    events: Events,
}

/// What a planner is made of, for [`Planner::new`].
pub struct Parts {
    pub board: Board,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub next_id: TaskId,
    pub limits: Limits,
    pub modules: Modules,
    pub pusher: Pusher,
}

impl Planner {
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            board,
            store,
            dispatcher,
            next_id,
            limits,
            modules,
            pusher,
        } = parts;
        Arc::new(Self {
            board: Mutex::new(board),
            store,
            dispatcher,
            modules,
            pusher,
            next_id: AtomicU64::new(next_id),
            waiters: Mutex::new(HashMap::new()),
            limits,
            gaps: crate::latency::Recorder::default(),
            events: Events::default(),
        })
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        // A panic while holding the lock would be a bug; the state it left is
        // still the best we have, so keep serving rather than poison forever.
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Validates, persists, queues. With `wait`, also returns a receiver per
    /// task that resolves when it reaches a final state.
    pub async fn submit(
        self: &Arc<Self>,
        new: Vec<NewTask>,
        wait: bool,
    ) -> Result<(Vec<TaskId>, Vec<oneshot::Receiver<TaskView>>), SubmitError> {
        if new.is_empty() {
            return Err(SubmitError::Invalid("no tasks in the submission".into()));
        }
        self.validate(&new)?;
        if self.board().queued() + new.len() > self.limits.queue {
            return Err(SubmitError::QueueFull {
                limit: self.limits.queue,
            });
        }
        let first = self.next_id.fetch_add(new.len() as u64, Ordering::Relaxed);
        let now = serve::now_ms();
        let tasks: Vec<Task> = new
            .into_iter()
            .zip(first..)
            .map(|(t, id)| Task::new(id, t.op.into(), t.args.into(), now))
            .collect();
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        self.store.insert(tasks.clone()).await?;
        let receivers = if wait {
            self.subscribe(&ids)
        } else {
            Vec::new()
        };
        let queued: Vec<TaskView> = if self.events.active() {
            tasks.iter().map(|t| t.view(None)).collect()
        } else {
            Vec::new()
        };
        for task in &tasks {
            telemetry::submitted(&task.op);
        }
        self.board().insert(tasks);
        for view in queued {
            self.events.publish(Event::Task(view));
        }
        self.pump();
        Ok((ids, receivers))
    }

    fn validate(&self, new: &[NewTask]) -> Result<(), SubmitError> {
        let board = self.board();
        for (i, task) in new.iter().enumerate() {
            let at = if new.len() > 1 {
                format!("task {i}: ")
            } else {
                String::new()
            };
            if !wire::is_valid_op_name(&task.op) {
                return Err(SubmitError::Invalid(format!(
                    "{at}invalid op name `{}`: use lowercase letters, digits, `-` and `_`",
                    task.op.chars().take(80).collect::<String>()
                )));
            }
            if task.args.len() > MAX_ARGS {
                return Err(SubmitError::Invalid(format!(
                    "{at}too many arguments ({} > {MAX_ARGS})",
                    task.args.len()
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

    /// Hands every queued task that has a free capable slot to its worker.
    /// `trigger` is when the event that may have made a match possible (a
    /// task arriving, a slot freeing, a worker joining) happened: the time
    /// from it to the send is the dispatch gap.
    pub fn pump(self: &Arc<Self>) {
        let trigger = Instant::now();
        let (assignments, running) = {
            let mut board = self.board();
            let assignments = board.pump(trigger);
            let running: Vec<TaskView> = if self.events.active() {
                assignments
                    .iter()
                    .filter_map(|a| board.view(a.task))
                    .collect()
            } else {
                Vec::new()
            };
            (assignments, running)
        };
        for view in running {
            self.events.publish(Event::Task(view));
        }
        for assignment in assignments {
            let planner = self.clone();
            tokio::spawn(async move {
                let gap = trigger.elapsed();
                planner.gaps.record(gap);
                telemetry::dispatch_gap(gap);
                let answer = planner.dispatcher.send(&assignment).await;
                planner.settle(&assignment, answer);
            });
        }
    }

    fn settle(self: &Arc<Self>, assignment: &Assignment, answer: crate::board::Answer) {
        telemetry::answer(&answer);
        let effects = self.board().settle(assignment, answer);
        self.apply(effects);
        self.pump();
    }

    fn apply(&self, effects: Effects) {
        for (id, attempts) in effects.retried {
            self.store.attempts(id, attempts);
        }
        for id in effects.dropped {
            self.publish_worker(&id, WorkerChange::Dropped);
        }
        if self.events.active() && !effects.requeued.is_empty() {
            let views: Vec<TaskView> = {
                let board = self.board();
                effects
                    .requeued
                    .iter()
                    .filter_map(|id| board.view(*id))
                    .collect()
            };
            for view in views {
                self.events.publish(Event::Task(view));
            }
        }
        if effects.finished.is_empty() {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for task in effects.finished {
            if let Some(list) = waiters.remove(&task.id) {
                let view = task.view(None);
                for waiter in list {
                    let _ = waiter.send(view.clone());
                }
            }
            if self.events.active() {
                self.events.publish(Event::Task(task.view(None)));
            }
            telemetry::finished(&task);
            self.store.finished(task);
        }
    }

    /// Publishes a worker's change, with its current record unless it is gone.
    fn publish_worker(&self, id: &str, change: WorkerChange) {
        if !self.events.active() {
            return;
        }
        let worker = match change {
            WorkerChange::Registered => self.board().worker(id),
            WorkerChange::Left | WorkerChange::Dropped => None,
        };
        self.events.publish(Event::Worker(WorkerEvent {
            id: id.to_string(),
            change,
            worker,
        }));
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn view(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        if let Some(view) = self.board().view(id) {
            return Ok(Some(view));
        }
        Ok(self.store.get(id)?.map(|t| t.view(None)))
    }

    pub fn list(
        &self,
        status: Option<wire::planner::TaskStatus>,
        op: Option<&str>,
        limit: usize,
    ) -> Vec<TaskView> {
        self.board().list(status, op, limit)
    }

    pub fn cancel(&self, id: TaskId) -> Result<TaskView, CancelError> {
        let cancelled = self.board().cancel(id)?;
        let view = cancelled.view(None);
        self.apply(Effects {
            finished: vec![cancelled],
            ..Effects::default()
        });
        Ok(view)
    }

    pub fn register(self: &Arc<Self>, registration: Registration) {
        tracing::info!(worker = %registration.id, url = %registration.url, slots = registration.slots,
            ops = ?registration.ops.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), "worker registered");
        let (id, url) = (registration.id.clone(), registration.url.clone());
        let stale: Vec<Arc<Module>> = registration
            .ops
            .iter()
            .filter_map(|info| {
                self.modules
                    .get(&info.name)
                    .filter(|m| m.digest != info.digest)
            })
            .collect();
        self.board().register(registration);
        self.publish_worker(&id, WorkerChange::Registered);
        self.pump();
        // A worker that joins (or comes back) with an older version of an op
        // the fleet was moved on from gets the current one.
        for module in stale {
            let planner = self.clone();
            let (id, url) = (id.clone(), url.clone());
            tokio::spawn(async move {
                match planner.pusher.push(&url, &module).await {
                    Ok(_) => {
                        tracing::info!(worker = %id, op = %module.name, digest = %module.digest, "brought worker up to date")
                    }
                    Err(err) => {
                        tracing::warn!(worker = %id, op = %module.name, error = %err, "could not bring worker up to date")
                    }
                }
            });
        }
    }

    /// Makes `bytes` the fleet's module for `name`: checked on one worker
    /// first (a module every worker would refuse is refused here, and nothing
    /// changes), stored, then pushed to every worker offering the op.
    pub async fn put_module(
        &self,
        name: &str,
        bytes: axum::body::Bytes,
    ) -> Result<RolloutReport, ModuleError> {
        if !wire::is_valid_op_name(name) {
            return Err(ModuleError::Invalid(format!("invalid op name `{name}`")));
        }
        Modules::check(&bytes).map_err(ModuleError::Invalid)?;
        let module = Modules::prepare(name, bytes);
        let targets = self.board().module_targets(name);
        let mut reports = Vec::new();
        let mut rest = targets.into_iter();
        // The first worker that answers decides whether the module is good.
        for (id, url) in rest.by_ref() {
            let outcome = self.pusher.push(&url, &module).await;
            match &outcome {
                Err(PushError::Refused(error)) => {
                    return Err(ModuleError::Refused {
                        worker: id,
                        error: error.clone(),
                    });
                }
                Err(PushError::Failed(_)) => reports.push(crate::rollout::report(&id, &outcome)),
                Ok(_) => {
                    reports.push(crate::rollout::report(&id, &outcome));
                    break;
                }
            }
        }
        let module = self.modules.put(module).map_err(ModuleError::Store)?;
        let pushes: Vec<_> = rest
            .map(|(id, url)| {
                let (pusher, module) = (&self.pusher, module.clone());
                async move {
                    let outcome = pusher.push(&url, &module).await;
                    crate::rollout::report(&id, &outcome)
                }
            })
            .collect();
        reports.extend(futures_util::future::join_all(pushes).await);
        tracing::info!(op = name, digest = %module.digest, workers = reports.len(), "module rolled out");
        telemetry::rollout(name);
        Ok(RolloutReport {
            op: name.to_string(),
            digest: module.digest.clone(),
            workers: reports,
        })
    }

    /// Per op: the fleet's current module and which worker runs which digest.
    pub fn rollouts(&self) -> Vec<OpRollout> {
        let digests = self.board().digests();
        let mut names: std::collections::BTreeSet<String> = digests.keys().cloned().collect();
        names.extend(self.modules.all().iter().map(|m| m.name.clone()));
        names
            .into_iter()
            .map(|name| {
                let workers = digests.get(&name).cloned().unwrap_or_default();
                let current = self.modules.get(&name);
                let up_to_date = workers
                    .values()
                    .filter(|d| current.as_ref().is_none_or(|m| &m.digest == *d))
                    .count() as u32;
                OpRollout {
                    behind: workers.len() as u32 - up_to_date,
                    up_to_date,
                    digest: current.as_ref().map(|m| m.digest.clone()),
                    stored_at_ms: current.as_ref().map(|m| m.stored_at_ms),
                    name,
                    workers,
                }
            })
            .collect()
    }

    pub fn register_legacy(self: &Arc<Self>, id: String, url: String) {
        tracing::info!(worker = %id, %url, "legacy worker registered");
        self.board().register_legacy(id.clone(), url);
        self.publish_worker(&id, WorkerChange::Registered);
        self.pump();
    }

    pub fn heartbeat(&self, id: &str) -> bool {
        self.board().heartbeat(id)
    }

    pub fn deregister(self: &Arc<Self>, id: &str) -> bool {
        let known = self.board().deregister(id);
        if known {
            tracing::info!(worker = id, "worker deregistered");
            self.publish_worker(id, WorkerChange::Left);
        }
        known
    }

    pub fn workers(&self) -> Vec<wire::planner::WorkerView> {
        self.board().workers()
    }

    pub fn stats(&self) -> wire::planner::Stats {
        let mut stats = self.board().stats();
        stats.dispatch_gap_us = self.gaps.percentiles();
        stats
    }

    /// Drops workers whose heartbeats stopped, until the process ends.
    pub async fn reap_forever(self: Arc<Self>) {
        let timeout = self.limits.heartbeat_timeout;
        let mut ticker = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
        loop {
            ticker.tick().await;
            let (dead, effects) = self.board().reap(Instant::now(), timeout);
            if !dead.is_empty() {
                tracing::warn!(workers = ?dead, "dropped workers that stopped answering");
                self.apply(effects);
                self.pump();
            }
        }
    }
}
