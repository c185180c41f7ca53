//! The whole system seen from any replica (PostgreSQL store).
//!
//! Each replica writes the views of its own workers when they change
//! (never per heartbeat: the time of the last heartbeat is left out of the
//! comparison), reads those of the others, rolls out the modules stored
//! through any replica to its own workers. One loop does it all, once a
//! second or when another replica announces a module. `/stats` counts the
//! tasks in the store when asked (after this replica's pending writes),
//! reusing a count for ten times as long as it took, so that a large table
//! costs the database at most a tenth of its time.
//!
//! While someone follows `/events`, a second loop reads the tasks finished
//! anywhere (through the store's finish-time index, looking back a few
//! seconds for results committed late) and publishes those this replica has
//! not: every replica's stream carries every task's end and every worker's
//! arrival and departure. Queued and running transitions are each
//! replica's own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use wire::TaskId;
use wire::planner::{Stats, WorkerChange, WorkerEvent, WorkerView, WorkersSummary};

use super::Planner;
use crate::board::{Page, SummaryBuilder, WorkerQuery};
use crate::events::Event;
use crate::modules::Module;
use crate::store::postgres::{PgStore, StoredModule};
use crate::telemetry;

/// How often the fleet's views are exchanged.
const SYNC: Duration = Duration::from_secs(1);
/// A count of the store's tasks is reused for this many times as long as
/// it took.
const COUNTS_REUSE: u32 = 10;
/// How often, and how far back, the event streams look for other
/// replicas' finished tasks (results are written within milliseconds of
/// finishing; the look-back covers a slow commit or a clock a little off).
const EVENTS_POLL: Duration = Duration::from_millis(250);
const EVENTS_LOOKBACK_MS: u64 = 5_000;
/// Most tasks of unoffered ops failed per janitor round.
const EXPIRE_BATCH: usize = 10_000;
/// Most finished tasks read per look.
const EVENTS_BATCH: usize = 5_000;

struct Counted {
    by_op: BTreeMap<String, BTreeMap<String, u64>>,
    at: Instant,
    took: Duration,
}

#[derive(Default)]
pub struct Fleet {
    /// What this replica last wrote for each of its workers (without the
    /// heartbeat time), so that only changes are written.
    published: Mutex<HashMap<String, String>>,
    /// The other replicas' workers, as last read.
    others: RwLock<Vec<WorkerView>>,
    /// Tasks by op and status across the store, when last counted, and how
    /// long that took. One count at a time.
    counts: tokio::sync::Mutex<Option<Counted>>,
    /// Finished tasks already on this replica's event stream, by id, with
    /// their finish time (forgotten past the look-back).
    streamed: Mutex<HashMap<TaskId, u64>>,
}

impl Fleet {
    fn others(&self) -> Vec<WorkerView> {
        self.others
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Planner {
    fn fleet_parts(&self) -> Option<(&Fleet, &PgStore)> {
        Some((&self.replica.as_ref()?.fleet, self.store.shared()?))
    }

    /// Exchanges views with the other replicas until the process ends.
    pub(super) async fn fleet_forever(self: Arc<Self>) {
        let Some(replica) = self.replica.as_ref() else {
            return;
        };
        let wake = replica.wake.modules.clone();
        loop {
            self.sync_fleet().await;
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(SYNC) => {}
            }
        }
    }

    async fn sync_fleet(self: &Arc<Self>) {
        let Some((fleet, pg)) = self.fleet_parts() else {
            return;
        };
        if let Err(err) = self.publish_workers(fleet, pg).await {
            tracing::debug!(error = %err, "writing this replica's workers failed; retrying");
        }
        match pg.other_workers().await {
            Ok(rows) => self.take_other_workers(fleet, &rows),
            Err(err) => tracing::debug!(error = %err, "reading the other replicas' workers failed"),
        }
        if let Err(err) = self.sync_modules(pg).await {
            tracing::warn!(error = %err, "reading the stored modules failed; retrying");
        }
    }

    async fn publish_workers(
        &self,
        fleet: &Fleet,
        pg: &PgStore,
    ) -> Result<(), crate::store::postgres::PgError> {
        let views = self.workers_here();
        let mut changed = Vec::new();
        let mut current = HashMap::with_capacity(views.len());
        let removed: Vec<String> = {
            let published = fleet.published.lock().unwrap_or_else(|p| p.into_inner());
            for view in views {
                let key = serde_json::to_string(&WorkerView {
                    last_seen_ms: 0,
                    ..view.clone()
                })
                .unwrap_or_default();
                if published.get(&view.id) != Some(&key) {
                    let row = serde_json::to_string(&view).unwrap_or_default();
                    changed.push((view.id.clone(), row));
                }
                current.insert(view.id, key);
            }
            published
                .keys()
                .filter(|id| !current.contains_key(*id))
                .cloned()
                .collect()
        };
        if changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        // Only this loop writes `published`, so nothing changes it meanwhile.
        pg.publish_workers(&changed, &removed).await?;
        *fleet.published.lock().unwrap_or_else(|p| p.into_inner()) = current;
        Ok(())
    }

    fn take_other_workers(&self, fleet: &Fleet, rows: &[String]) {
        let mut views: Vec<WorkerView> = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_str::<WorkerView>(row) {
                Ok(view) => views.push(view),
                Err(err) => tracing::warn!(error = %err, "unreadable worker row; skipped"),
            }
        }
        for view in &views {
            for op in view.ops.iter().flatten() {
                telemetry::offered(&op.name);
            }
        }
        let before: BTreeSet<String> = fleet.others().into_iter().map(|w| w.id).collect();
        let after: BTreeSet<&String> = views.iter().map(|w| &w.id).collect();
        if self.events.active() {
            for view in views.iter().filter(|w| !before.contains(&w.id)) {
                self.events.publish(Event::Worker(WorkerEvent {
                    id: view.id.clone(),
                    change: WorkerChange::Registered,
                    worker: Some(view.clone()),
                }));
            }
            for id in before.iter().filter(|id| !after.contains(id)) {
                self.events.publish(Event::Worker(WorkerEvent {
                    id: id.clone(),
                    change: WorkerChange::Left,
                    worker: None,
                }));
            }
        }
        *fleet.others.write().unwrap_or_else(|p| p.into_inner()) = views;
    }

    /// Takes the modules stored through other replicas and pushes each to
    /// this replica's workers that offer its op.
    async fn sync_modules(
        self: &Arc<Self>,
        pg: &PgStore,
    ) -> Result<(), crate::store::postgres::PgError> {
        let stored = pg.module_digests().await?;
        let behind: Vec<String> = stored
            .into_iter()
            .filter(|(name, digest)| self.modules.get(name).is_none_or(|m| &m.digest != digest))
            .map(|(name, _)| name)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        for stored in pg.modules(Some(&behind)).await? {
            let Some(module) = self.adopt_module(stored) else {
                continue;
            };
            let targets = self.board().module_targets(&module.name);
            tracing::info!(op = %module.name, digest = %module.digest, workers = targets.len(), "rolling out a module stored through another replica");
            let pushes = targets.into_iter().map(|(id, url)| {
                let (planner, module) = (self.clone(), module.clone());
                async move {
                    if let Err(err) = planner.pusher.push(&url, &module).await {
                        tracing::warn!(worker = %id, op = %module.name, error = %err, "could not push the module");
                    }
                }
            });
            futures_util::future::join_all(pushes).await;
        }
        Ok(())
    }

    /// A module read from the database, made current here.
    fn adopt_module(&self, stored: StoredModule) -> Option<Arc<Module>> {
        let module = Module::restored(&stored.name, stored.bytes.into(), stored.stored_at_ms);
        if module.digest != stored.digest {
            tracing::error!(op = %stored.name, "a stored module's bytes do not match its digest; ignored");
            return None;
        }
        match self.modules.put(module) {
            Ok(module) => Some(module),
            Err(err) => {
                tracing::warn!(op = %stored.name, error = %err, "could not keep a stored module");
                None
            }
        }
    }

    /// Notes a finished task put on this replica's event stream, so the
    /// store's copy is not put there again.
    pub(super) fn streamed_finish(&self, task: &crate::task::Task) {
        if let Some((fleet, _)) = self.fleet_parts() {
            fleet
                .streamed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task.id, task.finished_at_ms.unwrap_or_else(serve::now_ms));
        }
    }

    /// Puts the other replicas' finished tasks on this replica's event
    /// stream while anyone follows it.
    pub(super) async fn fleet_events_forever(self: Arc<Self>) {
        let Some((fleet, pg)) = self.fleet_parts() else {
            return;
        };
        // Where the next look starts: a few seconds back, or, after a look
        // that hit the batch limit, where that one ended.
        let mut since: Option<u64> = None;
        let mut resume: Option<u64> = None;
        loop {
            tokio::time::sleep(EVENTS_POLL).await;
            if !self.events.active() {
                since = None;
                resume = None;
                fleet
                    .streamed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                continue;
            }
            let newest = *since.get_or_insert_with(serve::now_ms);
            let from = resume.unwrap_or(newest.saturating_sub(EVENTS_LOOKBACK_MS));
            let tasks = match pg.finished_since(from, EVENTS_BATCH).await {
                Ok(tasks) => tasks,
                Err(err) => {
                    tracing::debug!(error = %err, "reading finished tasks for the event stream failed");
                    continue;
                }
            };
            let full = tasks.len() >= EVENTS_BATCH;
            let mut latest = newest;
            let fresh: Vec<_> = {
                let mut streamed = fleet.streamed.lock().unwrap_or_else(|p| p.into_inner());
                let fresh = tasks
                    .into_iter()
                    .filter(|task| {
                        let at = task.finished_at_ms.unwrap_or(0);
                        latest = latest.max(at);
                        streamed.insert(task.id, at).is_none()
                    })
                    .collect();
                let horizon = latest.saturating_sub(2 * EVENTS_LOOKBACK_MS);
                streamed.retain(|_, at| *at >= horizon);
                fresh
            };
            for task in fresh {
                self.events.publish(Event::Task(task.view(None)));
            }
            since = Some(latest);
            resume = full.then_some(latest);
        }
    }

    /// Every worker: this replica's as they are now, the others' as last
    /// read (at most about a second old).
    pub fn workers(&self) -> Vec<WorkerView> {
        let mut workers = self.workers_here();
        if let Some((fleet, _)) = self.fleet_parts() {
            let here: BTreeSet<String> = workers.iter().map(|w| w.id.clone()).collect();
            workers.extend(fleet.others().into_iter().filter(|w| !here.contains(&w.id)));
            workers.sort_by(|a, b| a.id.cmp(&b.id));
        }
        workers
    }

    /// A page of the fleet's workers in id order. Without other replicas
    /// the board walks only the page; with them, every worker is merged.
    pub fn workers_page(&self, query: &WorkerQuery) -> Page {
        let mut page = match self.fleet_parts() {
            None => self.board().workers_page(query),
            Some(_) => Page::of(self.workers().into_iter(), query),
        };
        if let Some(here) = self.advertised() {
            for worker in page.workers.iter_mut().filter(|w| w.planner.is_none()) {
                worker.planner = Some(here.to_string());
            }
        }
        page
    }

    /// The fleet by flavor, with the first `top` workers of each.
    pub fn workers_summary(&self, top: usize) -> WorkersSummary {
        let mut summary = SummaryBuilder::new(top);
        match self.fleet_parts() {
            None => self.board().summarize(&mut summary),
            Some(_) => {
                for worker in self.workers() {
                    summary.add_view(worker);
                }
            }
        }
        summary.finish()
    }

    /// This replica's own workers, each saying it is held here.
    fn workers_here(&self) -> Vec<WorkerView> {
        let mut workers = self.board().workers();
        if let Some(here) = self.advertised() {
            for worker in &mut workers {
                worker.planner = Some(here.to_string());
            }
        }
        workers
    }

    /// The ops some live worker of the fleet offers.
    fn fleet_offered(&self) -> Vec<String> {
        let mut ops: BTreeSet<String> = self
            .board()
            .workers()
            .into_iter()
            .filter_map(|w| w.ops)
            .flatten()
            .map(|o| o.name)
            .collect();
        if let Some((fleet, _)) = self.fleet_parts() {
            ops.extend(
                fleet
                    .others()
                    .into_iter()
                    .filter_map(|w| w.ops)
                    .flatten()
                    .map(|o| o.name),
            );
        }
        ops.into_iter().collect()
    }

    /// The janitor's share of `UNOFFERED_OP_TIMEOUT_MS`: queued tasks in the
    /// database that no replica claims because no worker anywhere offers
    /// their op fail once they waited the limit, counted from their
    /// submission or this replica's start, the later (workers get time to
    /// come back after a restart). Each replica fails its own board's.
    pub(super) async fn expire_unoffered_shared(&self, started_ms: u64) {
        let (Some(limit), Some(pg)) = (self.limits.unoffered_op, self.store.shared()) else {
            return;
        };
        let limit_ms = limit.as_millis() as u64;
        let now = serve::now_ms();
        if now.saturating_sub(started_ms) < limit_ms {
            return;
        }
        let offered = self.fleet_offered();
        match pg
            .expire_unoffered(&offered, now - limit_ms, limit_ms, EXPIRE_BATCH)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                tasks = n,
                "failed queued tasks whose op no worker of any replica offered in time"
            ),
            Err(err) => tracing::warn!(error = %err, "expiring tasks of unoffered ops failed"),
        }
    }

    /// Op → worker id → digest, for the whole fleet.
    pub(super) fn fleet_digests(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut digests = self.board().digests();
        if let Some((fleet, _)) = self.fleet_parts() {
            for worker in fleet.others() {
                for info in worker.ops.iter().flatten() {
                    digests
                        .entry(info.name.clone())
                        .or_default()
                        .entry(worker.id.clone())
                        .or_insert_with(|| info.digest.clone());
                }
            }
        }
        digests
    }

    /// With a shared store, the counts are the store's (every replica's
    /// tasks) and the workers the fleet's; throughput and dispatch gaps
    /// stay this replica's own.
    pub(super) async fn fleet_stats(&self, stats: &mut Stats) {
        let Some((fleet, pg)) = self.fleet_parts() else {
            return;
        };
        let mut counts = fleet.counts.lock().await;
        let reusable = counts
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < c.took * COUNTS_REUSE);
        if !reusable {
            // This replica's own results first, so that what it answered
            // as finished is counted so.
            pg.flush().await;
            let started = Instant::now();
            match pg.status_counts().await {
                Ok(rows) => {
                    let mut by_op: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
                    for (op, status, n) in rows {
                        *by_op.entry(op).or_default().entry(status).or_default() += n;
                    }
                    *counts = Some(Counted {
                        by_op,
                        at: Instant::now(),
                        took: started.elapsed(),
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "counting the store's tasks failed; showing the last count")
                }
            }
        }
        if let Some(counted) = counts.as_ref() {
            stats.by_status.clear();
            stats.by_op.clear();
            for (op, statuses) in &counted.by_op {
                for (status, &n) in statuses {
                    *stats.by_status.entry(status.clone()).or_default() += n;
                    *stats
                        .by_op
                        .entry(op.clone())
                        .or_default()
                        .entry(status.clone())
                        .or_default() += n;
                }
            }
        }
        drop(counts);
        let others = fleet.others();
        let board = self.board();
        for worker in others.into_iter().filter(|w| !board.has_worker(&w.id)) {
            *stats.workers_by_flavor.entry(worker.flavor).or_default() += 1;
        }
    }
}
