//! A task as the planner keeps it in memory.

use std::sync::Arc;

use wire::planner::{TaskStatus, TaskView};
use wire::{Output, TaskId};

/// Identifies one dispatch of a task. An answer is recorded only if it
/// carries the task's current dispatch, so a late answer from a worker given
/// up for dead can never record a result twice.
pub type DispatchId = u64;

#[derive(Debug, Clone)]
pub struct Task {
    pub id: TaskId,
    pub op: Arc<str>,
    pub args: Box<[i64]>,
    pub status: TaskStatus,
    pub output: Option<Output>,
    pub worker: Option<Arc<str>>,
    pub digest: Option<Arc<str>>,
    /// Dispatches that ended without an answer from the op (worker died,
    /// timed out); the final dispatch counts too.
    pub attempts: u32,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub dispatch: Option<DispatchId>,
}

impl Task {
    pub fn new(id: TaskId, op: Arc<str>, args: Box<[i64]>, now_ms: u64) -> Self {
        Self {
            id,
            op,
            args,
            status: TaskStatus::Queued,
            output: None,
            worker: None,
            digest: None,
            attempts: 0,
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            dispatch: None,
        }
    }

    pub fn view(&self, waiting_for: Option<String>) -> TaskView {
        let (result, error) = match &self.output {
            Some(Output::Result(v)) => (Some(*v), None),
            Some(Output::Error(e)) => (None, Some(e.clone())),
            None => (None, None),
        };
        TaskView {
            id: self.id,
            op: self.op.to_string(),
            args: self.args.to_vec(),
            status: self.status,
            result,
            error,
            waiting_for,
            worker: self.worker.as_deref().map(str::to_string),
            digest: self.digest.as_deref().map(str::to_string),
            attempts: self.attempts,
            submitted_at_ms: self.submitted_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
        }
    }
}
