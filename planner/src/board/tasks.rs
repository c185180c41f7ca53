//! Reading tasks off the board, and cancelling queued ones.

use wire::TaskId;
use wire::planner::{TaskStatus, TaskView};

use super::{Board, Finished};
use crate::task::Task;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CancelError {
    #[error("no such task")]
    NotFound,
    #[error("the task is {}, only queued tasks can be cancelled", .0.as_str())]
    NotQueued(TaskStatus),
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
        let capable = self
            .workers
            .values()
            .filter(|w| !w.leaving && w.offers(&task.op))
            .count();
        (capable == 0).then(|| format!("no live worker offers op `{}`", task.op))
    }

    /// The arity a live worker advertises for `op`, if any does.
    pub fn known_arity(&self, op: &str) -> Option<u32> {
        self.workers
            .values()
            .find_map(|w| w.ops.as_ref()?.get(op).map(|info| info.arity))
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
}
