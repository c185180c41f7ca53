//! The planner's core: the board, the store and the dispatcher, tied together.
//!
//! Every change follows one path: lock the board, change it, unlock; then
//! persist and wake waiters for what finished, and pump (hand queued tasks to
//! free slots, each send in its own tokio task). Dispatch is driven by these
//! events only: a task leaves the moment a capable slot is free, no polling.
//!
//! The operations are split by concern: [`tasks`] (submitting, reading,
//! cancelling), [`workers`] (membership), [`rollout`] (modules for the fleet,
//! pushed by [`push`]), and with a shared store [`replicas`] (sharing the
//! work) and [`fleet`] (showing the whole system from any replica).

mod bulk;
mod fleet;
mod push;
mod remote_cancel;
mod replicas;
mod rollout;
mod tasks;
mod workers;

pub use bulk::CancelTarget;
pub use push::Pusher;
pub use remote_cancel::{CANCEL_WAIT, CancelOutcome};
pub use replicas::Replica;
pub use rollout::ModuleError;
pub use tasks::{MAX_ARGS, SubmitError};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wire::TaskId;
use wire::planner::{TaskView, WorkerChange, WorkerEvent};

use crate::board::{Assignment, Board, Effects};
use crate::dispatch::Dispatcher;
use crate::dispatch::channel::Sent;
use crate::events::{Event, Events};
use crate::modules::Modules;
use crate::store::Store;
use crate::telemetry;

pub struct Limits {
    pub queue: usize,
    pub heartbeat_timeout: Duration,
    /// How long a task may wait for a worker offering its op (`None`: forever).
    pub unoffered_op: Option<Duration>,
    /// The deadline of a task that gives none (`TASK_TIMEOUT_MS`; `None`: none).
    pub task_timeout_ms: Option<u64>,
}

pub struct Planner {
    board: Mutex<Board>,
    store: Store,
    dispatcher: Dispatcher,
    waiters: Mutex<rustc_hash::FxHashMap<TaskId, Vec<oneshot::Sender<TaskView>>>>,
    limits: Limits,
    gaps: crate::latency::Recorder,
    modules: Modules,
    pusher: Pusher,
    events: Events,
    /// Set when the store is shared with other replicas (PostgreSQL).
    replica: Option<Replica>,
}

/// What a planner is made of, for [`Planner::new`].
pub struct Parts {
    pub board: Board,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub limits: Limits,
    pub modules: Modules,
    pub pusher: Pusher,
    pub replica: Option<Replica>,
}

impl Planner {
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts {
            board,
            store,
            dispatcher,
            limits,
            modules,
            pusher,
            replica,
        } = parts;
        let planner = Arc::new(Self {
            board: Mutex::new(board),
            store,
            dispatcher,
            modules,
            pusher,
            waiters: Mutex::default(),
            limits,
            gaps: crate::latency::Recorder::default(),
            events: Events::default(),
            replica,
        });
        planner.route_channel_answers();
        planner
    }

    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        // A panic while holding the lock would be a bug; the state it left is
        // still the best we have, so keep serving rather than poison forever.
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The workers' open dispatch channels.
    pub fn channels(&self) -> &Arc<crate::dispatch::channel::Channels> {
        self.dispatcher.channels()
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
            let gap = trigger.elapsed();
            self.gaps.record(gap);
            telemetry::dispatch_gap(gap);
            match self.dispatcher.send_on_channel(assignment) {
                Sent::Sent => {}
                // Settled from a task of its own: settling pumps again, and
                // this pump is not done handing out.
                Sent::Closed(assignment, reason) => {
                    let planner = self.clone();
                    tokio::spawn(async move {
                        planner.settle(&assignment, crate::board::Answer::Lost(reason));
                    });
                }
                Sent::NoChannel(assignment) => {
                    let planner = self.clone();
                    tokio::spawn(async move {
                        let answer = planner.dispatcher.send(&assignment).await;
                        planner.settle(&assignment, answer);
                    });
                }
            }
        }
        self.slots_freed();
    }

    /// Routes the answers read from workers' dispatch channels to the board.
    /// Held weakly: the channels belong to the planner.
    fn route_channel_answers(self: &Arc<Self>) {
        let planner = Arc::downgrade(self);
        self.dispatcher
            .channels()
            .settle_with(Arc::new(move |assignment, answer| {
                if let Some(planner) = planner.upgrade() {
                    planner.settle(&assignment, answer);
                }
            }));
    }

    /// Whether this planner can take work: always, unless it shares its
    /// store with other replicas and has lost its lease.
    pub fn is_healthy(&self) -> bool {
        self.replica.as_ref().is_none_or(Replica::is_healthy)
    }

    fn settle(self: &Arc<Self>, assignment: &Assignment, answer: crate::board::Answer) {
        telemetry::answer(&answer);
        let effects = self.board().settle(assignment, answer);
        self.apply(effects);
        self.pump();
    }

    fn apply(&self, effects: Effects) {
        for progress in effects.retried {
            self.store.progress(progress);
        }
        self.interrupt(effects.interrupts);
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
        self.finished_shared(effects.finished.len());
        for task in effects.finished {
            self.answer_waiters(&task);
            telemetry::finished(&task);
            self.store.finished(task);
        }
    }

    /// Tells whoever waits for `task` (and the event stream) that it ended.
    fn answer_waiters(&self, task: &crate::task::Task) {
        let list = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&task.id);
        if let Some(list) = list {
            let view = task.view(None);
            for waiter in list {
                let _ = waiter.send(view.clone());
            }
        }
        if self.events.active() {
            self.streamed_finish(task);
            self.events.publish(Event::Task(task.view(None)));
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

    /// Retention: forgets finished tasks that finished before `before_ms`,
    /// and gives back memory a burst left behind.
    pub fn forget_finished_before(&self, before_ms: u64) -> usize {
        let mut board = self.board();
        let forgotten = board.forget_finished_before(before_ms);
        board.compact();
        forgotten
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub async fn stats(&self) -> wire::planner::Stats {
        let mut stats = self.board().stats();
        stats.dispatch_gap_us = self.gaps.percentiles();
        self.fleet_stats(&mut stats).await;
        stats
    }
}
