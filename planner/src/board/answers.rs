//! Applying a worker's answer to a dispatch.
//!
//! An answer for a dispatch that is no longer the task's current one is
//! ignored: that is what makes recording exactly-once.

use std::time::{Duration, Instant};

use wire::planner::{AttemptError, AttemptErrorKind, TaskStatus};
use wire::{Output, TaskId};

use super::{Answer, Assignment, Board, Effects, Progress};
use crate::task::DispatchId;

/// A worker that said it was busy although we counted a free slot is skipped
/// this long: long enough not to spin on it, short enough that a slot freeing
/// a moment later is used.
const BUSY_COOLDOWN: Duration = Duration::from_millis(50);
/// A worker that refused our token is skipped this long: a misconfiguration
/// that will not fix itself within milliseconds, but may be fixed by a redeploy.
const UNAUTHORIZED_COOLDOWN: Duration = Duration::from_secs(5);

impl Board {
    pub fn settle(&mut self, assignment: &Assignment, answer: Answer) -> Effects {
        let mut effects = Effects::default();
        let current = self.tasks.get(&assignment.task).is_some_and(|t| {
            t.status == TaskStatus::Running && t.dispatch == Some(assignment.dispatch)
        });
        let worker_id = &*assignment.worker;
        if let Some(worker) = self.workers.get_mut(worker_id) {
            worker.in_flight.remove(&assignment.task);
        }
        if !current {
            tracing::debug!(
                task = assignment.task,
                worker = worker_id,
                "ignoring a stale answer"
            );
        } else {
            match answer {
                Answer::Done { output, digest } => {
                    self.settle_done(assignment, output, digest, &mut effects)
                }
                Answer::Busy => self.settle_refused(assignment, BUSY_COOLDOWN, &mut effects),
                Answer::Unauthorized => {
                    if let Some(worker) = self.workers.get_mut(worker_id) {
                        worker.refuses_token = true;
                    }
                    self.settle_refused(assignment, UNAUTHORIZED_COOLDOWN, &mut effects)
                }
                Answer::Draining => self.settle_draining(assignment, &mut effects),
                Answer::Lacks => self.settle_lacks(assignment, &mut effects),
                Answer::Lost(reason) => {
                    let reason = format!("worker {worker_id}: {reason}");
                    // A worker that can't be reached is presumed dead; its other
                    // tasks go back too. If it lives, its heartbeat re-registers it.
                    self.drop_worker(worker_id, &reason, &mut effects);
                    self.settle_lost(assignment.task, assignment.dispatch, &reason, &mut effects);
                }
            }
        }
        self.forget_if_left(worker_id);
        effects
    }

    fn settle_done(
        &mut self,
        assignment: &Assignment,
        output: Output,
        digest: Option<String>,
        effects: &mut Effects,
    ) {
        let status = match output {
            Output::Result(_) => TaskStatus::Done,
            Output::Error(_) => TaskStatus::Failed,
        };
        if let Some(worker) = self.workers.get_mut(&*assignment.worker) {
            worker.cooldown_until = None;
            worker.refuses_token = false;
        }
        if let Output::Error(error) = &output
            && self.retry_after_op_failure(assignment.task, error, effects)
        {
            if let Some(worker) = self.workers.get_mut(&*assignment.worker) {
                worker.failed += 1;
            }
            return;
        }
        if let Some(worker) = self.workers.get_mut(&*assignment.worker) {
            match status {
                TaskStatus::Done => worker.done += 1,
                _ => worker.failed += 1,
            }
        }
        let digest = digest.map(Into::into);
        effects
            .finished
            .push(self.finish(assignment.task, status, Some(output), digest));
    }

    /// Busy or unauthorized: the task goes back without counting an attempt
    /// and the worker is skipped for `pause`.
    fn settle_refused(&mut self, assignment: &Assignment, pause: Duration, effects: &mut Effects) {
        if let Some(worker) = self.workers.get_mut(&*assignment.worker) {
            worker.cooldown_until = Some(Instant::now() + pause);
        }
        self.bounce(assignment.task, effects);
    }

    fn settle_draining(&mut self, assignment: &Assignment, effects: &mut Effects) {
        if let Some(worker) = self.workers.get_mut(&*assignment.worker) {
            worker.leaving = true;
        }
        self.bounce(assignment.task, effects);
    }

    /// The worker does not offer the op (any more): it is no longer matched
    /// for it; a legacy worker's lack is learned this way.
    fn settle_lacks(&mut self, assignment: &Assignment, effects: &mut Effects) {
        if let Some(worker) = self.workers.get_mut(&*assignment.worker) {
            worker.wrong_op += 1;
            match &mut worker.ops {
                Some(ops) => {
                    ops.remove(&*assignment.op);
                }
                None => {
                    worker.lacks.insert(assignment.op.to_string());
                }
            }
        }
        self.bounce(assignment.task, effects);
    }

    /// Back to the front of the queue without counting an attempt.
    fn bounce(&mut self, id: TaskId, effects: &mut Effects) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.attempts = task.attempts.saturating_sub(1);
        }
        self.requeue_front(id);
        effects.requeued.push(id);
    }

    /// Records that a dispatch of `id` got no answer.
    fn record_lost(&mut self, id: TaskId, reason: &str) -> Option<Progress> {
        let task = self.tasks.get_mut(&id)?;
        let error = AttemptError {
            attempt: task.attempts,
            kind: AttemptErrorKind::Lost,
            error: reason.to_string(),
            worker: task.worker.as_deref().map(str::to_string),
            at_ms: serve::now_ms(),
        };
        task.record_error(error);
        Some(Progress {
            id,
            attempts: task.attempts,
            retried: task.retried,
            attempt_errors: task.attempt_errors.clone(),
            retry_at_ms: None,
        })
    }

    /// The dispatch got no answer: the task runs again, unless it used up
    /// its attempts.
    pub(super) fn settle_lost(
        &mut self,
        id: TaskId,
        dispatch: DispatchId,
        reason: &str,
        effects: &mut Effects,
    ) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        if task.status != TaskStatus::Running || task.dispatch != Some(dispatch) {
            return;
        }
        // Worker losses count on their own: op failures retried are not
        // dispatches lost.
        let lost = task.attempts.saturating_sub(task.retried);
        if lost >= self.max_attempts {
            let message =
                format!("gave up after {lost} attempts that got no answer; last: {reason}");
            effects.finished.push(self.finish(
                id,
                TaskStatus::Failed,
                Some(Output::Error(message)),
                None,
            ));
        } else {
            effects.retried.extend(self.record_lost(id, reason));
            effects.requeued.push(id);
            self.requeue_front(id);
        }
    }

    fn requeue_front(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let op = task.op.clone();
        task.status = TaskStatus::Queued;
        task.dispatch = None;
        task.worker = None;
        // The digest named the module of a worker that did not run it.
        task.digest = None;
        task.started_at_ms = None;
        self.count(&op, TaskStatus::Running, -1);
        self.count(&op, TaskStatus::Queued, 1);
        self.queued += 1;
        self.enqueue(id, true);
    }
}
