//! Many tasks per request: batch status, list pages, bulk cancel.

use std::collections::HashSet;

use wire::TaskId;
use wire::planner::{BatchView, CancelReport, TaskView};

use super::Planner;
use crate::board::{Effects, TaskFilter};
use crate::store::StoreError;
use crate::store::postgres::CancelScope;

/// What to cancel.
pub enum CancelTarget<'a> {
    Ids(&'a [TaskId]),
    /// Every queued task, of this op if given.
    Queued {
        op: Option<&'a str>,
    },
    /// Every running task, of this op if given (with a shared store, on
    /// every replica's workers).
    Running {
        op: Option<&'a str>,
    },
}

impl Planner {
    /// These tasks, in this order (unknown ids left out): from memory, else
    /// from the store.
    pub async fn views(&self, ids: &[TaskId]) -> Result<Vec<TaskView>, StoreError> {
        let in_memory: Vec<Option<TaskView>> = {
            let board = self.board();
            ids.iter().map(|id| board.view(*id)).collect()
        };
        let mut views = Vec::with_capacity(ids.len());
        for (id, view) in ids.iter().zip(in_memory) {
            match view {
                Some(view) => views.push(view),
                None => views.extend(self.store.get(*id).await?.map(|t| t.view(None))),
            }
        }
        Ok(views)
    }

    /// Batch `id` counted by status: from the SQLite store (which has all
    /// its tasks, a running one as queued) with the running ones this
    /// planner knows of; from the PostgreSQL store as it is (a task claimed
    /// by any replica counts as running there); from the board alone with a
    /// memory store. `None` if no task of it is kept.
    pub async fn batch(&self, id: TaskId) -> Result<Option<BatchView>, StoreError> {
        let stored = self.store.batch_counts(id).await?;
        let (on_board, running) = self.board().batch_counts(id, stored.is_none());
        let mut by_status = match stored {
            Some(stored) if self.store.shared().is_some() => stored,
            Some(mut stored) => {
                if let Some(queued) = stored.get_mut("queued") {
                    let moved = running.min(*queued);
                    *queued -= moved;
                    if moved > 0 {
                        stored.insert("running".into(), moved);
                    }
                }
                stored
            }
            None => on_board,
        };
        by_status.retain(|_, n| *n > 0);
        let total: u64 = by_status.values().sum();
        if total == 0 {
            return Ok(None);
        }
        let finished = by_status
            .keys()
            .all(|s| wire::planner::TaskStatus::parse(s).is_some_and(|s| s.is_final()));
        Ok(Some(BatchView {
            id,
            total,
            by_status,
            finished,
        }))
    }

    /// A page of the task list, newest first. With a shared store, from
    /// the database (every replica's tasks), with this replica's own state
    /// for the tasks it holds.
    pub async fn page(
        &self,
        filter: &TaskFilter,
        limit: usize,
    ) -> Result<Vec<TaskView>, StoreError> {
        let Some(pg) = self.store.shared() else {
            return Ok(self.board().page(filter, limit));
        };
        // This replica's results are written behind: in first, so a task
        // it shows finished is listed as finished too.
        pg.flush().await;
        let tasks = pg.page(filter, limit).await?;
        let board = self.board();
        Ok(tasks
            .into_iter()
            .map(|t| board.view(t.id).unwrap_or_else(|| t.view(None)))
            .collect())
    }

    /// Cancels tasks in one board operation; waiters, the event stream and
    /// the store hear about each, as for a single cancel. With a shared
    /// store, queued tasks no replica holds are cancelled in the database,
    /// and the replicas holding the others are asked to cancel them (the
    /// answer waits for them up to [`super::CANCEL_WAIT`]; see
    /// [`super::remote_cancel`]).
    pub async fn cancel_many(&self, target: CancelTarget<'_>) -> Result<CancelReport, StoreError> {
        let (effects, mut not_found, mut not_queued) = match &target {
            CancelTarget::Ids(ids) => {
                let cancelled = self.board().cancel_ids(ids);
                (cancelled.effects, cancelled.not_found, cancelled.not_queued)
            }
            CancelTarget::Queued { op } => (
                Effects {
                    finished: self.board().cancel_queued(*op),
                    ..Effects::default()
                },
                Vec::new(),
                Vec::new(),
            ),
            CancelTarget::Running { op } => {
                (self.board().cancel_running_all(*op), Vec::new(), Vec::new())
            }
        };
        let cancelled_here = effects.finished.len() as u64;
        // Waiters, the store and the workers to interrupt hear at once, not
        // after the wait for the other replicas below.
        self.apply(effects);
        let mut report = CancelReport {
            cancelled: cancelled_here,
            ..CancelReport::default()
        };
        if let Some(pg) = self.store.shared() {
            let now = serve::now_ms();
            // Queued tasks no replica has claimed are only in the database.
            let unclaimed = match &target {
                CancelTarget::Ids(_) if not_found.is_empty() => Vec::new(),
                CancelTarget::Ids(_) => {
                    pg.cancel_unclaimed_many(Some(&not_found), None, now)
                        .await?
                }
                CancelTarget::Queued { op } => pg.cancel_unclaimed_many(None, *op, now).await?,
                CancelTarget::Running { .. } => Vec::new(),
            };
            let gone: HashSet<TaskId> = unclaimed.iter().map(|t| t.id).collect();
            not_found.retain(|id| !gone.contains(id));
            report.cancelled += unclaimed.len() as u64;
            self.finished_shared(unclaimed.len());
            for task in &unclaimed {
                self.answer_waiters(task);
            }
            // Those another replica holds: asked of it.
            let remote = match &target {
                CancelTarget::Ids(_) => {
                    self.cancel_held_elsewhere(Some(&not_found), None, CancelScope::Any)
                        .await?
                }
                CancelTarget::Queued { op } => {
                    self.cancel_held_elsewhere(None, *op, CancelScope::Queued)
                        .await?
                }
                CancelTarget::Running { op } => {
                    self.cancel_held_elsewhere(None, *op, CancelScope::Running)
                        .await?
                }
            };
            let requested: HashSet<TaskId> = remote.requested.iter().copied().collect();
            not_found.retain(|id| !requested.contains(id));
            report.cancelled += remote.cancelled;
            report.pending = remote.pending;
            not_queued.extend(remote.finished);
        }
        // Tasks that left memory are finished ones, still in the store.
        for id in not_found {
            match self.store.get(id).await? {
                Some(_) => not_queued.push(id),
                None => report.not_found.push(id),
            }
        }
        report.not_queued = not_queued;
        Ok(report)
    }
}
