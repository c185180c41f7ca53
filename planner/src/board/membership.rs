//! Workers joining, proving they are alive, and leaving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::planner::{Registration, WorkerView};

use super::{Board, Effects, Worker};

/// A registration refused because it would take over a live worker's id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "worker id `{id}` is registered from {current} and alive; a worker at another address \
     may take the id only once that one has left or stopped answering heartbeats"
)]
pub struct IdTaken {
    pub id: String,
    pub current: String,
}

impl Board {
    /// Adds or updates a worker. Tasks in flight on it stay accounted for.
    ///
    /// An id belongs to the address that registered it while that worker
    /// lives: a registration from another address is refused, so nobody can
    /// redirect a live worker's tasks to themselves by reusing its id.
    pub fn register(
        &mut self,
        registration: Registration,
        now: Instant,
        heartbeat_timeout: Duration,
    ) -> Result<(), IdTaken> {
        if let Some(worker) = self.workers.get(registration.id.as_str())
            && *worker.url != *registration.url
            && !worker.leaving
            && now.duration_since(worker.last_seen) <= heartbeat_timeout
        {
            return Err(IdTaken {
                id: registration.id,
                current: worker.url.to_string(),
            });
        }
        let ops = registration
            .ops
            .into_iter()
            .map(|info| (info.name.clone(), info))
            .collect();
        let id: Arc<str> = registration.id.into();
        if let Some(worker) = self.workers.get_mut(&id) {
            worker.url = registration.url.into();
            worker.ops = Some(ops);
            worker.slots = registration.slots;
            worker.leaving = false;
            worker.cooldown_until = None;
            worker.touch();
            return Ok(());
        }
        self.workers.insert(Worker::new(
            id,
            registration.url.into(),
            Some(ops),
            registration.slots,
        ));
        Ok(())
    }

    /// The exercise's `POST /register`: ops unknown, one slot.
    pub fn register_legacy(&mut self, id: String, url: String) {
        if !self.workers.contains_key(&id) {
            self.workers
                .insert(Worker::new(id.into(), url.into(), None, 1));
        }
    }

    /// Records a sign of life; false if the worker is unknown (it must
    /// register). A draining worker keeps beating while it finishes its
    /// tasks, so it is not reaped (and its tasks run again elsewhere) while
    /// it is still working on them.
    pub fn heartbeat(&mut self, id: &str) -> bool {
        match self.workers.get_mut(id) {
            Some(worker) => {
                worker.touch();
                true
            }
            None => false,
        }
    }

    /// A worker leaving on purpose: nothing new goes to it; it is forgotten
    /// once its tasks in flight have answered.
    pub fn deregister(&mut self, id: &str) -> bool {
        let Some(worker) = self.workers.get_mut(id) else {
            return false;
        };
        worker.leaving = true;
        let idle = worker.in_flight.is_empty();
        if idle {
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

    pub(super) fn drop_worker(&mut self, id: &str, reason: &str, effects: &mut Effects) {
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

    /// Forgets a worker that is leaving once nothing of it is in flight.
    pub(super) fn forget_if_left(&mut self, worker_id: &str) {
        if self
            .workers
            .get(worker_id)
            .is_some_and(|w| w.leaving && w.in_flight.is_empty())
        {
            self.workers.remove(worker_id);
        }
    }

    pub fn worker(&self, id: &str) -> Option<WorkerView> {
        self.workers.get(id).map(Worker::view)
    }

    pub fn workers(&self) -> Vec<WorkerView> {
        self.workers.values().map(Worker::view).collect()
    }

    pub fn has_worker(&self, id: &str) -> bool {
        self.workers.contains_key(id)
    }

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
