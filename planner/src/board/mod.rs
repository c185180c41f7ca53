//! The planner's scheduling state: tasks, per-op queues and workers.
//!
//! Pure state, no I/O: the [`crate::planner::Planner`] holds it behind one
//! mutex (every operation is a few map updates; nothing awaits while holding
//! it) and does the sending, the persisting and the waking around it. Being
//! pure, every scheduling rule is unit-tested here.

mod matching;
mod workers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::planner::{Registration, Stats, TaskStatus, TaskView, WorkerView};
use wire::{Output, TaskId};

pub use matching::Assignment;
pub use workers::Worker;

use crate::task::{DispatchId, Task};

/// How a worker answered a dispatch.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The op ran: a value or its error. Final.
    Done {
        output: Output,
        digest: Option<String>,
    },
    /// All its slots are busy (429, or 403 from a legacy worker).
    Busy,
    /// It is shutting down (503).
    Draining,
    /// It does not offer the op (404).
    Lacks,
    /// It refused our token (401): a misconfiguration, not the task's fault.
    Unauthorized,
    /// No usable answer: connection refused or reset, timeout, 5xx.
    Lost(String),
}

/// A task that reached a final state, for the store and for waiters.
pub type Finished = Task;

/// What the planner must do after a change on the board.
#[derive(Debug, Default)]
pub struct Effects {
    pub finished: Vec<Finished>,
    /// Tasks whose attempt count changed without finishing (persisted so a
    /// restart keeps counting).
    pub retried: Vec<(TaskId, u32)>,
    /// Tasks sent back to the queue (for the event stream).
    pub requeued: Vec<TaskId>,
    /// Workers dropped as dead.
    pub dropped: Vec<String>,
}

pub struct Board {
    tasks: HashMap<TaskId, Task>,
    queues: BTreeMap<Arc<str>, VecDeque<TaskId>>,
    workers: BTreeMap<Arc<str>, Worker>,
    next_dispatch: DispatchId,
    /// Finished tasks in the order they finished, oldest first, so memory
    /// keeps only the most recent `retain_finished` (the store keeps all).
    finished_order: VecDeque<TaskId>,
    retain_finished: usize,
    max_attempts: u32,
    /// Tasks per (op, status), kept as transitions happen.
    counts: BTreeMap<(Arc<str>, TaskStatus), u64>,
    queued: usize,
    /// Finish times of the last minute, for throughput.
    recent_finishes: VecDeque<Instant>,
}

impl Board {
    pub fn new(max_attempts: u32, retain_finished: usize) -> Self {
        Self {
            tasks: HashMap::new(),
            queues: BTreeMap::new(),
            workers: BTreeMap::new(),
            next_dispatch: 1,
            finished_order: VecDeque::new(),
            retain_finished,
            max_attempts: max_attempts.max(1),
            counts: BTreeMap::new(),
            queued: 0,
            recent_finishes: VecDeque::new(),
        }
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Adds tasks to the back of their op's queue (or as they are, if final:
    /// a restart restoring recent history).
    pub fn insert(&mut self, tasks: impl IntoIterator<Item = Task>) {
        for task in tasks {
            self.count(&task.op, task.status, 1);
            if task.status.is_final() {
                self.finished_order.push_back(task.id);
            } else {
                self.queues
                    .entry(task.op.clone())
                    .or_default()
                    .push_back(task.id);
                self.queued += 1;
            }
            self.tasks.insert(task.id, task);
        }
        self.evict_old_finished();
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    pub fn view(&self, id: TaskId) -> Option<TaskView> {
        self.tasks.get(&id).map(|t| t.view(self.waiting_reason(t)))
    }

    /// Most recent first.
    pub fn list(
        &self,
        status: Option<TaskStatus>,
        op: Option<&str>,
        limit: usize,
    ) -> Vec<TaskView> {
        let mut ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| status.is_none_or(|s| t.status == s) && op.is_none_or(|o| &*t.op == o))
            .map(|t| t.id)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter()
            .take(limit)
            .filter_map(|id| self.view(id))
            .collect()
    }

    /// Why a queued task is not moving, if it is stuck rather than waiting its turn.
    fn waiting_reason(&self, task: &Task) -> Option<String> {
        if task.status != TaskStatus::Queued {
            return None;
        }
        let capable = self
            .workers
            .values()
            .filter(|w| !w.leaving && w.offers(&task.op))
            .count();
        (capable == 0).then(|| format!("no live worker offers op `{}`", task.op))
    }

    /// Cancels a queued task. Running and finished tasks can't be cancelled.
    pub fn cancel(&mut self, id: TaskId) -> Result<Finished, CancelError> {
        let task = self.tasks.get(&id).ok_or(CancelError::NotFound)?;
        if task.status != TaskStatus::Queued {
            return Err(CancelError::NotQueued(task.status));
        }
        let op = task.op.clone();
        if let Some(queue) = self.queues.get_mut(&op) {
            queue.retain(|&queued| queued != id);
        }
        self.queued -= 1;
        Ok(self.finish(id, TaskStatus::Cancelled, None, None))
    }

    // ----- workers -----

    /// Adds or updates a worker. Tasks in flight on it stay accounted for.
    pub fn register(&mut self, registration: Registration) {
        let ops = registration
            .ops
            .into_iter()
            .map(|info| (info.name.clone(), info))
            .collect();
        let id: Arc<str> = registration.id.into();
        match self.workers.get_mut(&id) {
            Some(worker) => {
                worker.url = registration.url.into();
                worker.ops = Some(ops);
                worker.slots = registration.slots;
                worker.leaving = false;
                worker.cooldown_until = None;
                touch(worker);
            }
            None => {
                let worker = Worker::new(
                    id.clone(),
                    registration.url.into(),
                    Some(ops),
                    registration.slots,
                );
                self.workers.insert(id, worker);
            }
        }
    }

    /// The exercise's `POST /register`: ops unknown, one slot.
    pub fn register_legacy(&mut self, id: String, url: String) {
        let id: Arc<str> = id.into();
        let worker = Worker::new(id.clone(), url.into(), None, 1);
        self.workers.entry(id).or_insert(worker);
    }

    /// Records a sign of life; false if the worker is unknown (it must register).
    pub fn heartbeat(&mut self, id: &str) -> bool {
        match self.workers.get_mut(id) {
            Some(worker) if !worker.leaving => {
                touch(worker);
                true
            }
            _ => false,
        }
    }

    /// A worker leaving on purpose: nothing new goes to it; it is forgotten
    /// once its tasks in flight have answered.
    pub fn deregister(&mut self, id: &str) -> bool {
        let Some(worker) = self.workers.get_mut(id) else {
            return false;
        };
        worker.leaving = true;
        if worker.in_flight.is_empty() {
            self.workers.remove(id);
        }
        true
    }

    /// Forgets workers silent for longer than `timeout`; their tasks in flight
    /// go back to the queue (counting the attempt).
    pub fn reap(&mut self, now: Instant, timeout: Duration) -> (Vec<String>, Effects) {
        let dead: Vec<Arc<str>> = self
            .workers
            .values()
            .filter(|w| !w.is_legacy() && now.duration_since(w.last_seen) > timeout)
            .map(|w| w.id.clone())
            .collect();
        let mut effects = Effects::default();
        for id in &dead {
            let reason = format!("worker {id} stopped answering heartbeats");
            self.drop_worker(id, &reason, &mut effects);
        }
        (dead.iter().map(|id| id.to_string()).collect(), effects)
    }

    fn drop_worker(&mut self, id: &str, reason: &str, effects: &mut Effects) {
        let Some(worker) = self.workers.remove(id) else {
            return;
        };
        effects.dropped.push(id.to_string());
        tracing::warn!(
            worker = id,
            reason,
            in_flight = worker.in_flight.len(),
            "worker dropped"
        );
        for task_id in worker.in_flight {
            if let Some(dispatch) = self.tasks.get(&task_id).and_then(|t| t.dispatch) {
                self.settle_lost(task_id, dispatch, reason, effects);
            }
        }
    }

    pub fn worker(&self, id: &str) -> Option<WorkerView> {
        self.workers.get(id).map(Worker::view)
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers.values().map(Worker::view).collect()
    }

    // ----- answers -----

    /// Applies a worker's answer to one dispatch. An answer for a dispatch
    /// that is no longer the task's current one is ignored: that is what makes
    /// recording exactly-once.
    pub fn settle(&mut self, assignment: &Assignment, answer: Answer) -> Effects {
        let mut effects = Effects::default();
        let current = self.tasks.get(&assignment.task).is_some_and(|t| {
            t.status == TaskStatus::Running && t.dispatch == Some(assignment.dispatch)
        });
        let worker_id = &*assignment.worker;
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.in_flight.remove(&assignment.task);
        }
        if !current {
            tracing::debug!(
                task = assignment.task,
                worker = worker_id,
                "ignoring a stale answer"
            );
            self.forget_if_left(worker_id);
            return effects;
        }
        match answer {
            Answer::Done { output, digest } => {
                if let Some(worker) = self.workers.get_mut(worker_id) {
                    worker.cooldown_until = None;
                    match output {
                        Output::Result(_) => worker.done += 1,
                        Output::Error(_) => worker.failed += 1,
                    }
                }
                let status = match output {
                    Output::Result(_) => TaskStatus::Done,
                    Output::Error(_) => TaskStatus::Failed,
                };
                let digest = digest.map(Into::into);
                effects
                    .finished
                    .push(self.finish(assignment.task, status, Some(output), digest));
            }
            Answer::Busy | Answer::Unauthorized => {
                let pause = if matches!(answer, Answer::Unauthorized) {
                    5_000
                } else {
                    50
                };
                if let Some(worker) = self.workers.get_mut(worker_id) {
                    worker.cooldown_until = Some(Instant::now() + Duration::from_millis(pause));
                }
                self.bounce(assignment.task);
                effects.requeued.push(assignment.task);
            }
            Answer::Draining => {
                if let Some(worker) = self.workers.get_mut(worker_id) {
                    worker.leaving = true;
                }
                self.bounce(assignment.task);
                effects.requeued.push(assignment.task);
            }
            Answer::Lacks => {
                if let Some(worker) = self.workers.get_mut(worker_id) {
                    worker.wrong_op += 1;
                    match &mut worker.ops {
                        Some(ops) => {
                            ops.remove(&*assignment.op);
                        }
                        None => {
                            worker.lacks.insert(assignment.op.to_string());
                        }
                    }
                }
                self.bounce(assignment.task);
                effects.requeued.push(assignment.task);
            }
            Answer::Lost(reason) => {
                let reason = format!("worker {worker_id}: {reason}");
                // A worker that can't be reached is presumed dead; its other
                // tasks go back too. If it lives, its heartbeat re-registers it.
                self.drop_worker(worker_id, &reason, &mut effects);
                self.settle_lost(assignment.task, assignment.dispatch, &reason, &mut effects);
            }
        }
        self.forget_if_left(worker_id);
        effects
    }

    fn forget_if_left(&mut self, worker_id: &str) {
        if self
            .workers
            .get(worker_id)
            .is_some_and(|w| w.leaving && w.in_flight.is_empty())
        {
            self.workers.remove(worker_id);
        }
    }

    /// Back to the front of the queue without counting an attempt.
    fn bounce(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.attempts = task.attempts.saturating_sub(1);
        }
        self.requeue_front(id);
    }

    fn settle_lost(
        &mut self,
        id: TaskId,
        dispatch: DispatchId,
        reason: &str,
        effects: &mut Effects,
    ) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        if task.status != TaskStatus::Running || task.dispatch != Some(dispatch) {
            return;
        }
        if task.attempts >= self.max_attempts {
            let message = format!("gave up after {} attempts; last: {reason}", task.attempts);
            effects.finished.push(self.finish(
                id,
                TaskStatus::Failed,
                Some(Output::Error(message)),
                None,
            ));
        } else {
            effects.retried.push((id, task.attempts));
            effects.requeued.push(id);
            self.requeue_front(id);
        }
    }

    fn requeue_front(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let op = task.op.clone();
        task.status = TaskStatus::Queued;
        task.dispatch = None;
        task.worker = None;
        task.started_at_ms = None;
        self.count(&op, TaskStatus::Running, -1);
        self.count(&op, TaskStatus::Queued, 1);
        self.queues.entry(op).or_default().push_front(id);
        self.queued += 1;
    }

    fn finish(
        &mut self,
        id: TaskId,
        status: TaskStatus,
        output: Option<Output>,
        digest: Option<Arc<str>>,
    ) -> Finished {
        let task = self
            .tasks
            .get_mut(&id)
            .expect("finish() is only called for known tasks");
        let before = task.status;
        task.status = status;
        task.output = output;
        if digest.is_some() {
            task.digest = digest;
        }
        task.dispatch = None;
        task.finished_at_ms = Some(serve::now_ms());
        let finished = task.clone();
        let op = finished.op.clone();
        self.count(&op, before, -1);
        self.count(&op, status, 1);
        self.finished_order.push_back(id);
        let now = Instant::now();
        self.recent_finishes.push_back(now);
        while self
            .recent_finishes
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.recent_finishes.pop_front();
        }
        self.evict_old_finished();
        finished
    }

    fn evict_old_finished(&mut self) {
        while self.finished_order.len() > self.retain_finished {
            if let Some(id) = self.finished_order.pop_front() {
                self.tasks.remove(&id);
            }
        }
    }

    fn count(&mut self, op: &Arc<str>, status: TaskStatus, delta: i64) {
        let entry = self.counts.entry((op.clone(), status)).or_default();
        *entry = entry.saturating_add_signed(delta);
    }

    pub fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for ((op, status), &n) in &self.counts {
            *stats.by_status.entry(status.as_str().into()).or_default() += n;
            *stats
                .by_op
                .entry(op.to_string())
                .or_default()
                .entry(status.as_str().into())
                .or_default() += n;
        }
        for worker in self.workers.values() {
            *stats.workers_by_flavor.entry(worker.flavor()).or_default() += 1;
        }
        let now = Instant::now();
        let last_minute = self
            .recent_finishes
            .iter()
            .filter(|t| now.duration_since(**t) <= Duration::from_secs(60))
            .count();
        stats.throughput_per_s = last_minute as f64 / 60.0;
        stats
    }
}

fn touch(worker: &mut Worker) {
    worker.last_seen = Instant::now();
    worker.last_seen_ms = serve::now_ms();
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("no such task")]
    NotFound,
    #[error("the task is {}, only queued tasks can be cancelled", .0.as_str())]
    NotQueued(TaskStatus),
}

#[cfg(test)]
mod tests;

impl Board {
    /// The arity a live worker advertises for `op`, if any does.
    pub fn known_arity(&self, op: &str) -> Option<u32> {
        self.workers
            .values()
            .find_map(|w| w.ops.as_ref()?.get(op).map(|info| info.arity))
    }
}

impl Board {
    /// Workers (id, url) that offer `op` and can take a module push.
    pub fn module_targets(&self, op: &str) -> Vec<(String, String)> {
        self.workers
            .values()
            .filter(|w| !w.leaving && w.digest_of(op).is_some())
            .map(|w| (w.id.to_string(), w.url.to_string()))
            .collect()
    }

    /// Op → worker id → the digest it runs.
    pub fn digests(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut digests: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for worker in self.workers.values() {
            for info in worker.ops.iter().flat_map(|ops| ops.values()) {
                digests
                    .entry(info.name.clone())
                    .or_default()
                    .insert(worker.id.to_string(), info.digest.clone());
            }
        }
        digests
    }
}
