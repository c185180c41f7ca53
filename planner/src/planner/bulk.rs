//! Many tasks per request: batch status, list pages, bulk cancel.

use wire::TaskId;
use wire::planner::{BatchView, CancelReport, TaskView};

use super::Planner;
use crate::board::{Effects, TaskFilter};
use crate::store::StoreError;

/// What to cancel.
pub enum CancelTarget<'a> {
    Ids(&'a [TaskId]),
    /// Every queued task, of this op if given.
    Queued {
        op: Option<&'a str>,
    },
    /// Every task running on this planner's workers, of this op if given.
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

    /// Batch `id` counted by status: from the store (which has all its
    /// tasks, a running one as queued) with the running ones this planner
    /// knows of; from the board alone with a memory store. `None` if no
    /// task of it is kept.
    pub async fn batch(&self, id: TaskId) -> Result<Option<BatchView>, StoreError> {
        let stored = self.store.batch_counts(id).await?;
        let (on_board, running) = self.board().batch_counts(id, stored.is_none());
        let mut by_status = match stored {
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
        let tasks = pg.page(filter, limit).await?;
        let board = self.board();
        Ok(tasks
            .into_iter()
            .map(|t| board.view(t.id).unwrap_or_else(|| t.view(None)))
            .collect())
    }

    /// Cancels queued tasks in one board operation; waiters, the event
    /// stream and the store hear about each, as for a single cancel.
    pub async fn cancel_many(&self, target: CancelTarget<'_>) -> Result<CancelReport, StoreError> {
        let (target_ids, target_op) = match &target {
            CancelTarget::Ids(ids) => (Some(*ids), None),
            CancelTarget::Queued { op } => (None, *op),
            CancelTarget::Running { op } => {
                let effects = self.board().cancel_running_all(*op);
                let report = CancelReport {
                    cancelled: effects.finished.len() as u64,
                    ..CancelReport::default()
                };
                self.apply(effects);
                return Ok(report);
            }
        };
        let (effects, not_found, mut not_queued) = match target {
            CancelTarget::Ids(ids) => {
                let cancelled = self.board().cancel_ids(ids);
                (cancelled.effects, cancelled.not_found, cancelled.not_queued)
            }
            CancelTarget::Queued { op } => (
                Effects {
                    finished: self.board().cancel_queued(op),
                    ..Effects::default()
                },
                Vec::new(),
                Vec::new(),
            ),
            CancelTarget::Running { .. } => (Effects::default(), Vec::new(), Vec::new()),
        };
        let mut not_found = not_found;
        // With a shared store, queued tasks no replica has claimed yet are
        // only in the database.
        let mut elsewhere = Vec::new();
        if let Some(pg) = self.store.shared() {
            let now = serve::now_ms();
            elsewhere = match &target_ids {
                Some(_) if not_found.is_empty() => Vec::new(),
                Some(_) => {
                    pg.cancel_unclaimed_many(Some(&not_found), None, now)
                        .await?
                }
                None => pg.cancel_unclaimed_many(None, target_op, now).await?,
            };
            let gone: std::collections::HashSet<TaskId> = elsewhere.iter().map(|t| t.id).collect();
            not_found.retain(|id| !gone.contains(id));
        }
        // Tasks that left memory are finished ones, still in the store.
        let mut unknown = Vec::new();
        for id in not_found {
            match self.store.get(id).await? {
                Some(_) => not_queued.push(id),
                None => unknown.push(id),
            }
        }
        let report = CancelReport {
            cancelled: (effects.finished.len() + elsewhere.len()) as u64,
            not_found: unknown,
            not_queued,
        };
        for task in &elsewhere {
            self.answer_waiters(task);
        }
        self.apply(effects);
        Ok(report)
    }
}
