//! Reading tasks off the board, and cancelling queued ones.

use wire::TaskId;
use wire::planner::{TaskStatus, TaskView};

use super::worker::Worker;
use super::{Board, Effects};
use crate::task::Task;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("no such task")]
    NotFound,
    #[error("the task is {}: only queued and running tasks can be cancelled", .0.as_str())]
    NotQueued(TaskStatus),
    #[error("the store could not be reached: {0}")]
    Store(String),
}

impl Board {
    pub fn view(&self, id: TaskId) -> Option<TaskView> {
        self.tasks.get(&id).map(|t| t.view(self.waiting_reason(t)))
    }

    /// Why a queued task is not moving, if it is stuck rather than waiting its turn.
    fn waiting_reason(&self, task: &Task) -> Option<String> {
        if task.status != TaskStatus::Queued {
            return None;
        }
        if let Some(reason) = self.backoff_reason(task.id) {
            return Some(reason);
        }
        let capable: Vec<&Worker> = self
            .workers
            .offering(&task.op)
            .filter(|w| !w.leaving)
            .collect();
        if capable.is_empty() {
            return Some(format!("no live worker offers op `{}`", task.op));
        }
        // A token mismatch never fixes itself: say so rather than let the
        // task look like it is waiting its turn.
        if !capable.iter().all(|w| w.refuses_token) {
            return None;
        }
        const SHOWN: usize = 5;
        let mut ids: Vec<&str> = capable.iter().take(SHOWN).map(|w| &*w.id).collect();
        let more = capable.len().saturating_sub(SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        ids.sort_unstable();
        Some(format!(
            "every worker offering op `{}` refuses the planner's token (401): {}{more}; give them the planner's token",
            task.op,
            ids.join(", ")
        ))
    }

    /// Why a task queued in a shared store (not on this board) is not
    /// moving, if no worker here could take it.
    pub fn unclaimed_reason(&self, op: &str) -> Option<String> {
        (!self.is_offered(op)).then(|| {
            format!("no live worker offers op `{op}` on this replica, and no other replica has claimed it")
        })
    }

    /// The arity a live worker advertises for `op`, if any does.
    pub fn known_arity(&self, op: &str) -> Option<u32> {
        self.workers
            .values()
            .find_map(|w| w.ops.as_ref()?.get(op).map(|info| info.arity))
    }

    /// Cancels a queued or running task (a running one's worker is to be
    /// interrupted: see [`Effects::interrupts`]); the cancelled task is the
    /// one in `finished`. Finished tasks can't be cancelled.
    pub fn cancel(&mut self, id: TaskId) -> Result<Effects, CancelError> {
        let task = self.tasks.get(&id).ok_or(CancelError::NotFound)?;
        let mut effects = Effects::default();
        match task.status {
            TaskStatus::Queued => {
                self.dequeue(id);
                let finished = self.finish(id, TaskStatus::Cancelled, None, None);
                effects.finished.push(finished);
            }
            TaskStatus::Running => {
                let finished = self.cancel_running(id, &mut effects);
                effects.finished.push(finished);
            }
            status => return Err(CancelError::NotQueued(status)),
        }
        Ok(effects)
    }
}

impl Board {
    /// Takes back tasks whose submission failed to commit: they were never
    /// acknowledged, so they vanish whatever became of them meanwhile (a
    /// running one's worker is to be interrupted and its answer is ignored).
    pub fn withdraw(&mut self, ids: &[TaskId]) -> Effects {
        let mut effects = Effects::default();
        for &id in ids {
            if let Ok(cancelled) = self.cancel(id) {
                effects.interrupts.extend(cancelled.interrupts);
            }
            if let Some(task) = self.tasks.remove(&id) {
                self.count(&task.op, task.status, -1);
            }
        }
        let gone: std::collections::HashSet<TaskId> = ids.iter().copied().collect();
        self.finished_order.retain(|id| !gone.contains(id));
        effects
    }

    /// Forgets finished tasks that finished before `before_ms` (retention:
    /// the store deletes them too); returns how many.
    pub fn forget_finished_before(&mut self, before_ms: u64) -> usize {
        let mut forgotten = 0;
        while let Some(&id) = self.finished_order.front() {
            // Finishes are appended in time order, so the oldest is in front.
            let expired = self
                .tasks
                .get(&id)
                .is_none_or(|t| t.finished_at_ms.is_none_or(|at| at < before_ms));
            if !expired {
                break;
            }
            self.finished_order.pop_front();
            self.tasks.remove(&id);
            forgotten += 1;
        }
        forgotten
    }

    /// Gives back memory a burst left behind: the task map and the queues
    /// keep their largest capacity otherwise, and an op's queue stays in the
    /// map after its last task left (op names come from clients).
    pub fn compact(&mut self) {
        shrink_map(&mut self.tasks);
        shrink_deque(&mut self.finished_order);
        self.queues.retain(|_, queue| !queue.is_empty());
    }
}

/// Collections are shrunk only when mostly empty, to twice what they hold,
/// so steady traffic never pays for shrinking and growing back.
const SHRINK_BELOW: usize = 8;
const MIN_CAPACITY: usize = 1024;

fn shrink_map<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut std::collections::HashMap<K, V, S>,
) {
    if map.capacity() > MIN_CAPACITY && map.capacity() > map.len() * SHRINK_BELOW {
        map.shrink_to((map.len() * 2).max(MIN_CAPACITY));
    }
}

fn shrink_deque<T>(deque: &mut std::collections::VecDeque<T>) {
    if deque.capacity() > MIN_CAPACITY && deque.capacity() > deque.len() * SHRINK_BELOW {
        deque.shrink_to((deque.len() * 2).max(MIN_CAPACITY));
    }
}
