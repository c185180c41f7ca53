//! The planner's scheduling state: tasks, per-op queues and workers.
//!
//! Pure state, no I/O: the [`crate::planner::Planner`] holds it behind one
//! mutex (every operation is a few map updates; nothing awaits while holding
//! it) and does the sending, the persisting and the waking around it. Being
//! pure, every scheduling rule is unit-tested here.
//!
//! The rules live by concern: [`matching`] hands queued tasks to free slots,
//! [`answers`] applies what workers answer, [`membership`] tracks workers
//! joining, beating and leaving, [`tasks`] answers queries and cancels.

mod answers;
mod bulk;
mod controls;
mod demand;
mod listing;
mod matching;
mod membership;
mod queue;
mod roster;
mod tasks;
mod throughput;
mod worker;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use wire::planner::{Stats, TaskStatus};
use wire::{Output, TaskId};

pub use bulk::TaskFilter;
pub use controls::{Interrupt, Progress, RETRY_BACKOFF_CAP_MS};
pub use listing::{Page, SummaryBuilder, WorkerQuery};
pub use matching::Assignment;
pub use membership::IdTaken;
pub use queue::{OpQueue, QueueKey};
pub use tasks::CancelError;
pub use worker::Worker;

use crate::task::{DispatchId, Task};
use roster::Roster;
use throughput::Throughput;

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
    /// Tasks whose attempt count (and attempt errors) changed without
    /// finishing (persisted so a restart keeps counting).
    pub retried: Vec<Progress>,
    /// Running tasks that ended (cancelled, expired) whose workers should
    /// stop their calls.
    pub interrupts: Vec<Interrupt>,
    /// Tasks sent back to the queue (for the event stream).
    pub requeued: Vec<TaskId>,
    /// Workers dropped as dead.
    pub dropped: Vec<String>,
}

pub struct Board {
    tasks: rustc_hash::FxHashMap<TaskId, Task>,
    queues: BTreeMap<Arc<str>, OpQueue>,
    workers: Roster,
    next_dispatch: DispatchId,
    /// Finished tasks in the order they finished, oldest first, so memory
    /// keeps only the most recent `retain_finished` (the store keeps all).
    finished_order: VecDeque<TaskId>,
    retain_finished: usize,
    max_attempts: u32,
    /// Tasks per (op, status), kept as transitions happen.
    counts: BTreeMap<(Arc<str>, TaskStatus), u64>,
    queued: usize,
    throughput: Throughput,
    /// When this board was made (unix ms).
    started_ms: u64,
    /// Unfinished tasks with a deadline, soonest first.
    deadlines: BTreeSet<(u64, TaskId)>,
    /// Queued tasks waiting out a retry's backoff (not in their op's
    /// queue), soonest first.
    delayed: BTreeSet<(u64, TaskId)>,
    /// The next place in front of every queue (decreasing).
    front_seq: i64,
    /// Retry backoff: the first wait and the longest (ms).
    retry_backoff: (u64, u64),
}

impl Board {
    pub fn new(max_attempts: u32, retain_finished: usize) -> Self {
        Self {
            tasks: rustc_hash::FxHashMap::default(),
            queues: BTreeMap::new(),
            workers: Roster::default(),
            next_dispatch: 1,
            finished_order: VecDeque::new(),
            retain_finished,
            max_attempts: max_attempts.max(1),
            counts: BTreeMap::new(),
            queued: 0,
            throughput: Throughput::new(Instant::now()),
            started_ms: serve::now_ms(),
            deadlines: BTreeSet::new(),
            delayed: BTreeSet::new(),
            front_seq: 0,
            retry_backoff: (controls::RETRY_BACKOFF_MS, controls::RETRY_BACKOFF_CAP_MS),
        }
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Adds tasks to the back of their op's queue (or as they are, if final:
    /// a restart restoring recent history). A task still waiting out a
    /// retry's backoff (a restart found it so) waits until its time.
    pub fn insert(&mut self, tasks: impl IntoIterator<Item = Task>) {
        let now = serve::now_ms();
        for mut task in tasks {
            self.count(&task.op, task.status, 1);
            if task.status.is_final() {
                self.finished_order.push_back(task.id);
            } else if let Some(at) = task.retry_at_ms.filter(|at| *at > now) {
                self.delayed.insert((at, task.id));
                self.queued += 1;
                if let Some(deadline) = task.deadline_ms() {
                    self.deadlines.insert((deadline, task.id));
                }
            } else {
                task.retry_at_ms = None;
                task.queue_seq = QueueKey::back(task.priority(), task.id).seq();
                self.queues
                    .entry(task.op.clone())
                    .or_default()
                    .push(QueueKey::back(task.priority(), task.id), task.id);
                self.queued += 1;
                if let Some(deadline) = task.deadline_ms() {
                    self.deadlines.insert((deadline, task.id));
                }
            }
            self.tasks.insert(task.id, task);
        }
        self.evict_old_finished();
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
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
        if let Some(deadline) = task.controls.deadline_ms {
            self.deadlines.remove(&(deadline, id));
        }
        if let Some(at) = task.retry_at_ms.take() {
            self.delayed.remove(&(at, id));
        }
        let finished = task.clone();
        let op = finished.op.clone();
        self.count(&op, before, -1);
        self.count(&op, status, 1);
        self.finished_order.push_back(id);
        self.throughput.record(Instant::now());
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
        stats.workers_by_flavor = self.workers.flavors();
        stats.throughput_per_s = self.throughput.per_second(Instant::now());
        stats
    }
}

#[cfg(test)]
mod tests;
