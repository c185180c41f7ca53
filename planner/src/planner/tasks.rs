//! Submitting, reading and cancelling tasks.

use std::sync::Arc;

use tokio::sync::oneshot;
use wire::TaskId;
use wire::planner::{NewTask, TaskView};

use super::Planner;
use crate::board::{CancelError, Effects};
use crate::events::Event;
use crate::store::StoreError;
use crate::task::Task;
use crate::telemetry;

/// Most arguments a task may carry.
pub const MAX_ARGS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error("the queue is full ({limit} tasks waiting); retry later")]
    QueueFull { limit: usize },
    #[error("could not persist the task: {0}")]
    Store(#[from] StoreError),
}

impl Planner {
    /// Validates, persists, queues. With `wait`, also returns a receiver per
    /// task that resolves when it reaches a final state.
    pub async fn submit(
        self: &Arc<Self>,
        new: Vec<NewTask>,
        wait: bool,
    ) -> Result<(Vec<TaskId>, Vec<oneshot::Receiver<TaskView>>), SubmitError> {
        if new.is_empty() {
            return Err(SubmitError::Invalid("no tasks in the submission".into()));
        }
        self.validate(&new)?;
        let queued = self
            .queued_shared()
            .unwrap_or_else(|| self.board().queued());
        if queued + new.len() > self.limits.queue {
            return Err(SubmitError::QueueFull {
                limit: self.limits.queue,
            });
        }
        let ids = self.store.new_ids(new.len()).await?;
        let now = serve::now_ms();
        let tasks: Vec<Task> = new
            .into_iter()
            .zip(ids)
            .map(|(t, id)| Task::new(id, t.op.into(), t.args.into(), now))
            .collect();
        let ids: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
        self.store.insert(tasks.clone()).await?;
        let receivers = if wait {
            self.subscribe(&ids)
        } else {
            Vec::new()
        };
        let queued: Vec<TaskView> = if self.events.active() {
            tasks.iter().map(|t| t.view(None)).collect()
        } else {
            Vec::new()
        };
        for task in &tasks {
            telemetry::submitted(&task.op);
        }
        for view in queued {
            self.events.publish(Event::Task(view));
        }
        if self.replica.is_some() {
            // In the database for whichever replica claims it first.
            self.submitted_shared(tasks.len());
        } else {
            self.board().insert(tasks);
            self.pump();
        }
        Ok((ids, receivers))
    }

    fn validate(&self, new: &[NewTask]) -> Result<(), SubmitError> {
        let board = self.board();
        for (i, task) in new.iter().enumerate() {
            let at = if new.len() > 1 {
                format!("task {i}: ")
            } else {
                String::new()
            };
            if let Err(why) = wire::check_op_name(&task.op) {
                return Err(SubmitError::Invalid(format!("{at}{why}")));
            }
            if task.args.len() > MAX_ARGS {
                return Err(SubmitError::Invalid(format!(
                    "{at}too many arguments ({} > {MAX_ARGS})",
                    task.args.len()
                )));
            }
            if let Some(arity) = board.known_arity(&task.op)
                && arity as usize != task.args.len()
            {
                return Err(SubmitError::Invalid(format!(
                    "{at}op `{}` takes {arity} arguments, got {}",
                    task.op,
                    task.args.len()
                )));
            }
        }
        Ok(())
    }

    fn subscribe(&self, ids: &[TaskId]) -> Vec<oneshot::Receiver<TaskView>> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .map(|id| {
                let (tx, rx) = oneshot::channel();
                waiters.entry(*id).or_default().push(tx);
                rx
            })
            .collect()
    }

    pub async fn view(&self, id: TaskId) -> Result<Option<TaskView>, StoreError> {
        let on_board = self.board().view(id);
        if let Some(view) = on_board {
            return Ok(Some(view));
        }
        let Some(task) = self.store.get(id).await? else {
            return Ok(None);
        };
        let waiting_for = (task.status == wire::planner::TaskStatus::Queued)
            .then(|| self.board().unclaimed_reason(&task.op))
            .flatten();
        Ok(Some(task.view(waiting_for)))
    }

    pub async fn cancel(&self, id: TaskId) -> Result<TaskView, CancelError> {
        let on_board = self.board().cancel(id);
        let cancelled = match on_board {
            Err(CancelError::NotFound) if self.replica.is_some() => {
                let Some(pg) = self.store.shared() else {
                    return Err(CancelError::NotFound);
                };
                // Not held here: cancel it in the database if no replica
                // has claimed it yet.
                let cancelled = pg
                    .cancel_unclaimed(id, serve::now_ms())
                    .await
                    .map_err(|e| CancelError::Store(e.to_string()))??;
                self.answer_waiters(&cancelled);
                return Ok(cancelled.view(None));
            }
            other => other?,
        };
        let view = cancelled.view(None);
        self.apply(Effects {
            finished: vec![cancelled],
            ..Effects::default()
        });
        Ok(view)
    }
}
