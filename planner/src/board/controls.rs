//! A task's controls on the board: deadlines, retries after op failures
//! with backoff, and interrupting running tasks that ended (cancelled or
//! expired) on their workers.

use std::sync::Arc;

use wire::planner::{AttemptError, AttemptErrorKind, TaskStatus};
use wire::{Output, TaskId};

use super::{Board, Effects, Finished, QueueKey};

/// The first retry waits this long (ms) unless the planner says otherwise
/// (RETRY_BACKOFF_MS); each further one twice the previous, up to the cap.
pub const RETRY_BACKOFF_MS: u64 = 1000;
pub const RETRY_BACKOFF_CAP_MS: u64 = 5 * 60 * 1000;

/// A task's progress without finishing, for the store.
#[derive(Debug, Clone)]
pub struct Progress {
    pub id: TaskId,
    pub attempts: u32,
    pub retried: u32,
    pub attempt_errors: Vec<AttemptError>,
    /// Waiting out a retry's backoff until then (unix ms): stored so that
    /// a restart (or another replica) does not run it early.
    pub retry_at_ms: Option<u64>,
}

/// A worker should stop running a task: it ended on the board meanwhile.
#[derive(Debug, Clone)]
pub struct Interrupt {
    pub task: TaskId,
    pub worker: Arc<str>,
    pub url: Arc<str>,
}

impl Board {
    /// Sets the retry backoff: the first wait and the longest (ms).
    pub fn set_retry_backoff(&mut self, first_ms: u64, cap_ms: u64) {
        self.retry_backoff = (first_ms, cap_ms.max(first_ms));
    }

    /// Takes a queued task out of wherever it waits (its op's queue, or the
    /// backoff set). False if it was in neither.
    pub(super) fn dequeue(&mut self, id: TaskId) -> bool {
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        if task.status != TaskStatus::Queued {
            return false;
        }
        let found = match task.retry_at_ms.take() {
            Some(at) => self.delayed.remove(&(at, id)),
            None => {
                let key = QueueKey::front(task.controls.priority, task.queue_seq);
                self.queues
                    .get_mut(&task.op)
                    .and_then(|queue| queue.remove(&key))
                    .is_some()
            }
        };
        if found {
            self.queued -= 1;
        }
        found
    }

    /// Puts a task (already counted as queued) in its op's queue, at the
    /// back of its priority (by id) or in front of everything.
    pub(super) fn enqueue(&mut self, id: TaskId, in_front: bool) {
        let seq = if in_front {
            self.front_seq -= 1;
            Some(self.front_seq)
        } else {
            None
        };
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let key = match seq {
            Some(seq) => QueueKey::front(task.controls.priority, seq),
            None => QueueKey::back(task.controls.priority, id),
        };
        task.queue_seq = key.seq();
        self.queues
            .entry(task.op.clone())
            .or_default()
            .push(key, id);
    }

    /// The next time [`Board::tick`] has something to do (unix ms).
    pub fn next_due_ms(&self) -> Option<u64> {
        let deadline = self.deadlines.first().map(|(at, _)| *at);
        let retry = self.delayed.first().map(|(at, _)| *at);
        match (deadline, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires the tasks whose deadline passed (a running one is
    /// interrupted on its worker) and puts back in their queues the tasks
    /// whose retry backoff is over.
    pub fn tick(&mut self, now_ms: u64) -> Effects {
        let mut effects = Effects::default();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.remove(&(at, id));
            self.expire(id, now_ms, &mut effects);
        }
        while let Some(&(at, id)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.remove(&(at, id));
            if let Some(task) = self.tasks.get_mut(&id) {
                task.retry_at_ms = None;
            }
            // Back to its place by submission order (not in front: the
            // backoff already made it wait).
            self.enqueue(id, false);
            effects.requeued.push(id);
        }
        effects
    }

    fn expire(&mut self, id: TaskId, now_ms: u64, effects: &mut Effects) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let timeout = task
            .controls
            .deadline_ms
            .map_or(0, |d| d.saturating_sub(task.submitted_at_ms));
        let waited = now_ms.saturating_sub(task.submitted_at_ms);
        let worker = task.worker.as_deref().unwrap_or("?").to_string();
        let ran = now_ms.saturating_sub(task.started_at_ms.unwrap_or(now_ms));
        match task.status {
            TaskStatus::Queued => {
                self.dequeue(id);
                let message = format!(
                    "deadline passed: still queued {waited} ms after submission (timeout_ms {timeout})"
                );
                effects.finished.push(self.finish(
                    id,
                    TaskStatus::Expired,
                    Some(Output::Error(message)),
                    None,
                ));
            }
            TaskStatus::Running => {
                let message = format!(
                    "deadline passed (timeout_ms {timeout}) while running on worker {worker} for {ran} ms; the call was interrupted"
                );
                effects.interrupts.extend(self.interrupt_for(id));
                effects.finished.push(self.finish(
                    id,
                    TaskStatus::Expired,
                    Some(Output::Error(message)),
                    None,
                ));
            }
            _ => {}
        }
    }

    /// What to tell the worker running `id` so that it stops. The task
    /// stays in the worker's slots on the board until the worker answers
    /// the dispatch (at once, once interrupted): only then is its slot free.
    pub(super) fn interrupt_for(&self, id: TaskId) -> Option<Interrupt> {
        let task = self.tasks.get(&id)?;
        let worker = self.workers.get(task.worker.as_deref()?)?;
        // A legacy worker has no way to be interrupted: its call runs out.
        if worker.is_legacy() {
            return None;
        }
        Some(Interrupt {
            task: id,
            worker: worker.id.clone(),
            url: worker.url.clone(),
        })
    }

    /// An op failure: the task runs again after its backoff if it has
    /// retries left. Returns false if it has none (it fails).
    pub(super) fn retry_after_op_failure(
        &mut self,
        id: TaskId,
        error: &str,
        effects: &mut Effects,
    ) -> bool {
        let (first, cap) = self.retry_backoff;
        let now = serve::now_ms();
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        if task.retried >= task.controls.retries {
            return false;
        }
        task.retried += 1;
        let error = AttemptError {
            attempt: task.attempts,
            kind: AttemptErrorKind::Op,
            error: error.to_string(),
            worker: task.worker.as_deref().map(str::to_string),
            at_ms: now,
        };
        task.record_error(error);
        let at = now.saturating_add(wire::controls::backoff(first, cap, task.retried));
        task.status = TaskStatus::Queued;
        task.dispatch = None;
        task.worker = None;
        task.digest = None;
        task.started_at_ms = None;
        task.retry_at_ms = Some(at);
        let op = task.op.clone();
        effects.retried.push(Progress {
            id,
            attempts: task.attempts,
            retried: task.retried,
            attempt_errors: task.attempt_errors.clone(),
            retry_at_ms: Some(at),
        });
        effects.requeued.push(id);
        self.delayed.insert((at, id));
        self.count(&op, TaskStatus::Running, -1);
        self.count(&op, TaskStatus::Queued, 1);
        self.queued += 1;
        true
    }

    /// Cancels a running task: it ends `cancelled` now and its worker is
    /// told to stop.
    pub(super) fn cancel_running(&mut self, id: TaskId, effects: &mut Effects) -> Finished {
        effects.interrupts.extend(self.interrupt_for(id));
        self.finish(id, TaskStatus::Cancelled, None, None)
    }

    /// Why a queued task waits, when it is waiting out a retry's backoff.
    pub(super) fn backoff_reason(&self, id: TaskId) -> Option<String> {
        let task = self.tasks.get(&id)?;
        let at = task.retry_at_ms?;
        Some(format!(
            "retry {} of {} after an op failure, not before {at} (unix ms; backoff)",
            task.retried, task.controls.retries
        ))
    }
}
