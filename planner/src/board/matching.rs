//! Matching queued tasks to free worker slots.

use std::sync::Arc;
use std::time::Instant;

use wire::TaskId;
use wire::planner::TaskStatus;

use super::{Board, QueueKey};
use crate::task::DispatchId;

/// A task handed to a worker: what the dispatcher sends, and the key its
/// answer is settled with.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub task: TaskId,
    pub op: Arc<str>,
    pub args: Box<[i64]>,
    pub worker: Arc<str>,
    pub url: Arc<str>,
    pub legacy: bool,
    pub dispatch: DispatchId,
}

impl Board {
    /// Hands out as many queued tasks as there are free capable slots.
    ///
    /// Highest priority first, then oldest, across ops; for each, the most specialized
    /// free worker that offers the op (fewest ops, then most free slots), so
    /// specialists take their op and generalists stay free for the rest.
    ///
    /// The choice reads the per-op index of free workers (see [`super::roster`]),
    /// so its cost does not grow with workers that don't offer the op.
    pub fn pump(&mut self, now: Instant) -> Vec<Assignment> {
        let mut assignments = Vec::new();
        loop {
            // Re-ranks the worker the last assignment took a slot of.
            self.workers.wake(now);
            // Heads compare by priority, then age (see `QueueKey`).
            let mut best: Option<(QueueKey, TaskId, Arc<str>, Arc<str>)> = None;
            for (op, queue) in &self.queues {
                let Some((key, head)) = queue.front() else {
                    continue;
                };
                if best.as_ref().is_some_and(|(first, ..)| *first < key) {
                    continue;
                }
                if let Some(worker) = self.workers.best(op) {
                    best = Some((key, head, op.clone(), worker.id.clone()));
                }
            }
            let Some((_, task_id, op, worker_id)) = best else {
                break;
            };
            if let Some(queue) = self.queues.get_mut(&op) {
                queue.pop_front();
            }
            self.queued -= 1;
            if let Some(assignment) = self.assign(task_id, &worker_id) {
                assignments.push(assignment);
            }
        }
        assignments
    }

    fn assign(&mut self, task_id: TaskId, worker_id: &Arc<str>) -> Option<Assignment> {
        let dispatch = self.next_dispatch;
        self.next_dispatch += 1;
        let worker = self.workers.get_mut(worker_id)?;
        let task = self.tasks.get_mut(&task_id)?;
        worker.in_flight.insert(task_id);
        task.status = TaskStatus::Running;
        task.dispatch = Some(dispatch);
        task.worker = Some(worker.id.clone());
        task.digest = worker.digest_of(&task.op).map(Into::into);
        task.attempts += 1;
        task.started_at_ms = Some(serve::now_ms());
        let assignment = Assignment {
            task: task_id,
            op: task.op.clone(),
            args: task.args.clone(),
            worker: worker.id.clone(),
            url: worker.url.clone(),
            legacy: worker.is_legacy(),
            dispatch,
        };
        let op = assignment.op.clone();
        self.count(&op, TaskStatus::Queued, -1);
        self.count(&op, TaskStatus::Running, 1);
        Some(assignment)
    }
}
