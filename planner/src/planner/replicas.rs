//! Running as one of several replicas on a shared PostgreSQL store.
//!
//! Submissions go to the database, free for any replica. Each replica
//! claims the oldest tasks its own workers can run, in batches sized to
//! their free slots, and dispatches them as before; it gives back what it
//! can no longer run. It renews its liveness row; the holder of the janitor
//! lease gives the tasks of replicas presumed dead back to the queue. A
//! `?wait=true` for a task another replica ran is answered from the
//! database. NOTIFY wakes the loops early; each also polls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wire::TaskId;
use wire::planner::TaskView;

use super::Planner;
use crate::events::Event;
use crate::store::postgres::{PgStore, Renewal, Wakeups};
use crate::task::Task;

/// How often each loop looks without being woken.
const CLAIM_POLL: Duration = Duration::from_millis(200);
const RESULT_POLL: Duration = Duration::from_millis(250);
/// Tasks per worker slot claimed ahead of the free slots (see
/// [`crate::board::Board::demand`]).
const CLAIM_AHEAD: u32 = 1;
/// How often the janitor looks for queued tasks of ops nobody offers.
const EXPIRY_EVERY: Duration = Duration::from_secs(5);
/// Least time between two recounts of a full queue.
const RECOUNT_SPACING: Duration = Duration::from_millis(250);
/// Most ids asked about in one query by the result watcher.
const WATCH_BATCH: usize = 10_000;

/// This replica's part in the shared store.
pub struct Replica {
    /// The lease on this replica's liveness row; others presume it dead
    /// once it is this long without a renewal.
    pub lease: Duration,
    /// The address workers should heartbeat (this replica's own, not the
    /// Service's), if known.
    pub advertise: Option<String>,
    pub(super) wake: Wakeups,
    /// The other replicas' workers, the stored modules, the store's counts.
    pub(super) fleet: super::fleet::Fleet,
    /// The last claim took all it asked for: more may be waiting, so a
    /// freed slot should claim again at once.
    backlog: AtomicBool,
    /// Renewals are succeeding and this replica was not fenced.
    healthy: AtomicBool,
    /// Tasks queued in the whole system: counted with each renewal, raised
    /// by submissions here and lowered by tasks finished here in between
    /// (the queue limit's measure: an estimate across replicas).
    queued: AtomicUsize,
    /// Tasks ever submitted here, so a count can add those that came while
    /// it ran.
    submitted: AtomicUsize,
    last_recount: tokio::sync::Mutex<Option<Instant>>,
}

impl Replica {
    pub fn new(lease: Duration, advertise: Option<String>) -> Self {
        Self {
            lease,
            advertise,
            wake: Wakeups::default(),
            fleet: Default::default(),
            backlog: AtomicBool::new(true),
            healthy: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            submitted: AtomicUsize::new(0),
            last_recount: tokio::sync::Mutex::new(None),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

impl Planner {
    /// This replica's own address, when several share the store.
    pub fn advertised(&self) -> Option<&str> {
        self.replica.as_ref()?.advertise.as_deref()
    }

    fn shared_parts(&self) -> Option<(&Replica, &PgStore)> {
        Some((self.replica.as_ref()?, self.store.shared()?))
    }

    /// Starts the shared-store loops (nothing with another store).
    pub fn start_replica(self: &Arc<Self>) {
        let Some((replica, pg)) = self.shared_parts() else {
            return;
        };
        pg.listen(replica.wake.clone());
        tokio::spawn(self.clone().renew_forever());
        tokio::spawn(self.clone().claim_forever());
        tokio::spawn(self.clone().watch_results_forever());
        tokio::spawn(self.clone().fleet_forever());
        tokio::spawn(self.clone().fleet_events_forever());
        tokio::spawn(self.clone().cancel_requests_forever());
    }

    /// Asks the claim loop to look now (a slot freed, a worker joined).
    pub(super) fn slots_freed(&self) {
        if let Some(replica) = &self.replica
            && replica.backlog.load(Ordering::Relaxed)
        {
            replica.wake.queued.notify_one();
        }
    }

    /// Submitted tasks: in the database, for whichever replica claims them.
    pub(super) fn submitted_shared(&self, count: usize) {
        if let Some(replica) = &self.replica {
            replica.submitted.fetch_add(count, Ordering::AcqRel);
            replica.queued.fetch_add(count, Ordering::AcqRel);
            replica.backlog.store(true, Ordering::Relaxed);
            replica.wake.queued.notify_one();
        }
    }

    /// Tasks this replica held finished: they left the system's queue.
    pub(super) fn finished_shared(&self, count: usize) {
        if let Some(replica) = &self.replica {
            let _ = replica
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(count))
                });
        }
    }

    /// Tasks queued system-wide, as last counted (shared store only).
    pub(super) fn queued_shared(&self) -> Option<usize> {
        Some(self.replica.as_ref()?.queued.load(Ordering::Acquire))
    }

    /// Counts the system's queue again, after this replica's pending
    /// writes: the estimate is refreshed with each renewal only, so a
    /// submission it would refuse asks first. At most one count per
    /// [`RECOUNT_SPACING`] (a client hammering a full queue must not turn
    /// each refusal into a scan); `None` when none was made.
    pub(super) async fn recount_shared(&self) -> Option<usize> {
        let (replica, pg) = self.shared_parts()?;
        let mut last = replica.last_recount.lock().await;
        if last.is_some_and(|at| at.elapsed() < RECOUNT_SPACING) {
            return None;
        }
        *last = Some(Instant::now());
        pg.flush().await;
        let before = replica.submitted.load(Ordering::Acquire);
        let n = pg.queued(self.limits.queue.saturating_add(1)).await.ok()?;
        let since = replica.submitted.load(Ordering::Acquire) - before;
        replica.queued.store(n + since, Ordering::Release);
        Some(n + since)
    }

    async fn claim_forever(self: Arc<Self>) {
        let Some((replica, _)) = self.shared_parts() else {
            return;
        };
        let wake = replica.wake.queued.clone();
        loop {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(CLAIM_POLL) => {}
            }
            self.give_back_orphans().await;
            if !replica.is_healthy() {
                continue;
            }
            self.claim_round().await;
        }
    }

    /// Claims until the free slots are covered or nothing more is queued.
    async fn claim_round(self: &Arc<Self>) {
        let Some((replica, pg)) = self.shared_parts() else {
            return;
        };
        loop {
            let demand = self.board().demand(Instant::now(), CLAIM_AHEAD);
            // A claim is a committed write: wait until it can take a batch,
            // unless the board is about to run dry.
            let held = demand.target - demand.total;
            if demand.total == 0 || (held > 0 && demand.total * 2 < demand.target) {
                return;
            }
            let tasks = match pg.claim(&demand).await {
                Ok(tasks) => tasks,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming tasks failed; retrying shortly");
                    return;
                }
            };
            let full = tasks.len() as i64 >= demand.total;
            replica.backlog.store(full, Ordering::Relaxed);
            if tasks.is_empty() {
                return;
            }
            self.take_claimed(tasks);
            if !full {
                return;
            }
        }
    }

    fn take_claimed(self: &Arc<Self>, tasks: Vec<Task>) {
        let views: Vec<TaskView> = if self.events.active() {
            tasks.iter().map(|t| t.view(None)).collect()
        } else {
            Vec::new()
        };
        tracing::debug!(count = tasks.len(), "claimed tasks");
        self.board().insert(tasks);
        for view in views {
            self.events.publish(Event::Task(view));
        }
        self.pump();
    }

    async fn give_back_orphans(&self) {
        let Some((_, pg)) = self.shared_parts() else {
            return;
        };
        let orphans = self.board().take_orphans();
        if orphans.is_empty() {
            return;
        }
        match pg.release(&orphans).await {
            Ok(n) => tracing::info!(
                released = n,
                "gave back tasks no worker here can run any more"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "could not give back tasks; the lease covers them")
            }
        }
    }

    async fn renew_forever(self: Arc<Self>) {
        let Some((replica, pg)) = self.shared_parts() else {
            return;
        };
        let mut ticker = tokio::time::interval(replica.lease / 4);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed = Instant::now();
        let started_ms = serve::now_ms();
        let mut last_expiry = Instant::now();
        loop {
            ticker.tick().await;
            match pg.renew(replica.advertise.as_deref(), replica.lease).await {
                Ok(Renewal::Renewed) => {
                    last_renewed = Instant::now();
                    if !replica.healthy.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            lease_ms = replica.lease.as_millis() as u64,
                            "replica live; claiming tasks"
                        );
                        replica.wake.queued.notify_one();
                    }
                }
                Ok(Renewal::Fenced) => {
                    last_renewed = Instant::now();
                    let dropped = self.board().forget_unfinished();
                    pg.forget_claims();
                    tracing::error!(
                        dropped = dropped.len(),
                        "this replica was presumed dead (no renewal within the lease); its tasks went to others, dropping them here"
                    );
                    replica.healthy.store(true, Ordering::Release);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not renew this replica's lease");
                    if last_renewed.elapsed() >= replica.lease
                        && replica.healthy.swap(false, Ordering::AcqRel)
                    {
                        tracing::error!(
                            "lease lost: not claiming, not ready, until the database answers"
                        );
                    }
                    continue;
                }
            }
            match pg.janitor(replica.lease).await {
                Ok(Some(requeued)) => {
                    if requeued > 0 {
                        replica.wake.queued.notify_one();
                    }
                    let every = self
                        .limits
                        .unoffered_op
                        .map_or(EXPIRY_EVERY, |limit| limit.min(EXPIRY_EVERY));
                    if last_expiry.elapsed() >= every {
                        last_expiry = Instant::now();
                        self.expire_unoffered_shared(started_ms).await;
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "janitor round failed"),
            }
            // Submissions acknowledged while the count runs may or may not be
            // in it: added on top (an over-estimate is the safe side).
            let before = replica.submitted.load(Ordering::Acquire);
            match pg.queued(self.limits.queue.saturating_add(1)).await {
                Ok(n) => {
                    let since = replica.submitted.load(Ordering::Acquire) - before;
                    replica.queued.store(n + since, Ordering::Release);
                }
                Err(err) => {
                    tracing::debug!(error = %err, "counting queued tasks failed")
                }
            }
        }
    }

    /// Answers the waiters of tasks this replica does not hold when the
    /// database says they finished.
    async fn watch_results_forever(self: Arc<Self>) {
        let Some((replica, pg)) = self.shared_parts() else {
            return;
        };
        let wake = replica.wake.finished.clone();
        loop {
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(RESULT_POLL) => {}
            }
            let watched: Vec<TaskId> = {
                let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                if waiters.is_empty() {
                    continue;
                }
                let board = self.board();
                waiters
                    .keys()
                    .filter(|id| board.task(**id).is_none())
                    .take(WATCH_BATCH)
                    .copied()
                    .collect()
            };
            if watched.is_empty() {
                continue;
            }
            match pg.finished_among(&watched).await {
                Ok(finished) => {
                    for task in finished {
                        self.answer_waiters(&task);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "reading results failed; retrying"),
            }
        }
    }

    /// On a clean stop: the tasks this replica holds go back to the queue
    /// for the others at once.
    pub async fn leave_replicas(&self) {
        let Some((_, pg)) = self.shared_parts() else {
            return;
        };
        match pg.leave().await {
            Ok(released) => {
                tracing::info!(released, "left the replicas; unfinished tasks handed back")
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not hand back tasks; the lease expiry will")
            }
        }
    }
}
