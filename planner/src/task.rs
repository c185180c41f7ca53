//! A task as the planner keeps it in memory.

use std::sync::Arc;

use wire::planner::{AttemptError, TaskStatus, TaskView};
use wire::{Output, TaskId};

/// Identifies one dispatch of a task. An answer is recorded only if it
/// carries the task's current dispatch, so a late answer from a worker given
/// up for dead can never record a result twice.
pub type DispatchId = u64;

/// What a submission asked of a task beyond its op and args.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    pub priority: i8,
    /// Op failures it may be run again for.
    pub retries: u32,
    /// The `timeout_ms` the submission gave (not the planner's default):
    /// such a task waits for a worker offering its op until its deadline,
    /// even past UNOFFERED_OP_TIMEOUT_MS.
    pub timeout_ms: Option<u64>,
    /// When it expires (unix ms): submission plus its own timeout or the
    /// planner's default.
    pub deadline_ms: Option<u64>,
    /// The batch it was submitted in: its array's first task id.
    pub batch: Option<TaskId>,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: TaskId,
    pub op: Arc<str>,
    pub args: Box<[i64]>,
    pub status: TaskStatus,
    pub output: Option<Output>,
    pub worker: Option<Arc<str>>,
    pub digest: Option<Arc<str>>,
    /// Dispatches so far: op failures retried, worker losses and the final
    /// dispatch all count.
    pub attempts: u32,
    pub submitted_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub dispatch: Option<DispatchId>,
    pub controls: Box<Controls>,
    /// Op failures retried so far (at most `controls.retries`).
    pub retried: u32,
    /// Earlier attempts' errors, the most recent
    /// [`wire::controls::MAX_ATTEMPT_ERRORS`].
    pub attempt_errors: Vec<AttemptError>,
    /// Waiting out a retry's backoff until this time (unix ms); not in its
    /// op's queue meanwhile.
    pub retry_at_ms: Option<u64>,
    /// Its place in its op's queue while queued (see `board::QueueKey`).
    pub queue_seq: i64,
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
            controls: Box::default(),
            retried: 0,
            attempt_errors: Vec::new(),
            retry_at_ms: None,
            queue_seq: 0,
        }
    }

    pub fn with_controls(mut self, controls: Controls) -> Self {
        self.controls = Box::new(controls);
        self
    }

    pub fn priority(&self) -> i8 {
        self.controls.priority
    }

    pub fn deadline_ms(&self) -> Option<u64> {
        self.controls.deadline_ms
    }

    /// Records why an attempt ended without a result, keeping the list bounded.
    pub fn record_error(&mut self, error: AttemptError) {
        use wire::controls::{MAX_ATTEMPT_ERROR_LEN, MAX_ATTEMPT_ERRORS};
        let mut error = error;
        if error.error.len() > MAX_ATTEMPT_ERROR_LEN {
            let mut end = MAX_ATTEMPT_ERROR_LEN;
            while !error.error.is_char_boundary(end) {
                end -= 1;
            }
            error.error.truncate(end);
        }
        if self.attempt_errors.len() >= MAX_ATTEMPT_ERRORS {
            self.attempt_errors.remove(0);
        }
        self.attempt_errors.push(error);
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
            priority: self.controls.priority,
            retries: self.controls.retries,
            retried: self.retried,
            deadline_ms: self.controls.deadline_ms,
            retry_at_ms: self.retry_at_ms,
            attempt_errors: self.attempt_errors.clone(),
            batch: self.controls.batch,
        }
    }
}
