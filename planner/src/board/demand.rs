//! What this replica can take from a shared queue (PostgreSQL store with
//! several replicas): the free slots of its workers, per op, less what is
//! already waiting on its board; and giving back what it cannot run.

use std::collections::BTreeMap;
use std::time::Instant;

use wire::TaskId;
use wire::planner::TaskStatus;

use super::{Board, Finished};
use crate::store::postgres::Demand;

impl Board {
    /// Per op, what the live workers that offer it can take (their free
    /// slots, plus `ahead` tasks per slot held here in advance), less the
    /// tasks of that op already queued here; overall, the same across ops.
    /// Holding tasks ahead means a slot that frees finds its next task on
    /// the board instead of waiting for a claim round trip, and claims come
    /// in batches rather than one per freed slot.
    pub fn demand(&self, now: Instant, ahead: u32) -> Demand {
        let mut per_op: BTreeMap<&str, i64> = BTreeMap::new();
        let mut target: i64 = 0;
        for worker in self.workers.values() {
            let cooling = worker.cooldown_until.is_some_and(|until| until > now);
            if worker.leaving || cooling {
                continue;
            }
            let stock = i64::from(worker.free_slots(now)) + i64::from(ahead * worker.slots);
            if stock == 0 {
                continue;
            }
            target += stock;
            for op in worker.offered() {
                *per_op.entry(op).or_default() += stock;
            }
        }
        // Tasks waiting out a retry's backoff are not waiting for a slot.
        let waiting_here = self.queued.saturating_sub(self.delayed.len()) as i64;
        let mut demand = Demand {
            ops: Vec::new(),
            per_op: Vec::new(),
            total: (target - waiting_here).max(0),
            target,
        };
        for (op, stock) in per_op {
            let waiting = self.queues.get(op).map_or(0, |q| q.len() as i64);
            let wanted = (stock - waiting).min(demand.total);
            if wanted > 0 {
                demand.ops.push(op.to_string());
                demand.per_op.push(wanted);
            }
        }
        demand
    }

    /// The ops with tasks queued here that no live worker here offers.
    fn queued_unoffered_ops(&self) -> Vec<std::sync::Arc<str>> {
        self.queues
            .iter()
            .filter(|(op, queue)| !queue.is_empty() && !self.is_offered(op))
            .map(|(op, _)| op.clone())
            .collect()
    }

    /// Whether a live worker here offers `op`.
    pub(super) fn is_offered(&self, op: &str) -> bool {
        self.workers.offering(op).any(|w| !w.leaving)
    }

    /// Takes off the board the queued tasks that no live worker here offers
    /// the op of (their workers left or died), for another replica to run.
    /// Each with its attempt count, which goes back with it.
    pub fn take_orphans(&mut self) -> Vec<(TaskId, u32)> {
        let orphaned = self.queued_unoffered_ops();
        let mut taken = Vec::new();
        for op in orphaned {
            let Some(mut queue) = self.queues.remove(&op) else {
                continue;
            };
            for id in queue.take() {
                if let Some(task) = self.tasks.remove(&id) {
                    self.queued -= 1;
                    self.count(&op, TaskStatus::Queued, -1);
                    if let Some(deadline) = task.deadline_ms() {
                        self.deadlines.remove(&(deadline, id));
                    }
                    taken.push((id, task.attempts));
                }
            }
        }
        taken
    }

    /// Forgets every unfinished task: this replica was presumed dead and its
    /// tasks now belong to others. Answers still in flight are ignored when
    /// they come back (their tasks are gone).
    pub fn forget_unfinished(&mut self) -> Vec<TaskId> {
        let unfinished: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| !t.status.is_final())
            .map(|t| t.id)
            .collect();
        for id in &unfinished {
            if let Some(task) = self.tasks.remove(id) {
                self.count(&task.op, task.status, -1);
            }
        }
        self.queues.clear();
        self.deadlines.clear();
        self.delayed.clear();
        self.queued = 0;
        unfinished
    }

    /// Fails the queued tasks whose op no live worker here offers and that
    /// waited longer than `limit`, counted from their submission or this
    /// board's start, the later (a restarted planner gives its workers time
    /// to come back). A task whose own `timeout_ms` is longer asked to wait
    /// longer: it waits until its deadline instead.
    pub fn expire_unoffered(&mut self, now_ms: u64, limit: std::time::Duration) -> Vec<Finished> {
        let limit_ms = limit.as_millis() as u64;
        let stale = self.queued_unoffered_ops();
        let mut expired = Vec::new();
        for op in stale {
            let Some(queue) = self.queues.get(&op) else {
                continue;
            };
            let due: Vec<TaskId> = queue
                .ids()
                .filter(|id| {
                    self.tasks.get(id).is_some_and(|t| {
                        t.controls.timeout_ms.is_none_or(|own| own <= limit_ms)
                            && now_ms.saturating_sub(t.submitted_at_ms.max(self.started_ms))
                                >= limit_ms
                    })
                })
                .collect();
            if due.is_empty() {
                continue;
            }
            let message = format!(
                "no worker offered op `{op}` within {} s (UNOFFERED_OP_TIMEOUT_MS)",
                limit.as_secs_f64()
            );
            for id in due {
                self.dequeue(id);
                expired.push(self.finish(
                    id,
                    TaskStatus::Failed,
                    Some(wire::Output::Error(message.clone())),
                    None,
                ));
            }
        }
        expired
    }
}
