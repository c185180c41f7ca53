//! Many tasks per request: batch status, list pages, bulk cancel.

use wire::TaskId;
use wire::planner::{CancelReport, TaskView};

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

    pub fn page(&self, filter: &TaskFilter, limit: usize) -> Vec<TaskView> {
        self.board().page(filter, limit)
    }

    /// Cancels queued tasks in one board operation; waiters, the event
    /// stream and the store hear about each, as for a single cancel.
    pub async fn cancel_many(&self, target: CancelTarget<'_>) -> Result<CancelReport, StoreError> {
        let (finished, not_found, mut not_queued) = match target {
            CancelTarget::Ids(ids) => {
                let cancelled = self.board().cancel_ids(ids);
                (
                    cancelled.finished,
                    cancelled.not_found,
                    cancelled.not_queued,
                )
            }
            CancelTarget::Queued { op } => (self.board().cancel_queued(op), Vec::new(), Vec::new()),
        };
        // Tasks that left memory are finished ones, still in the store.
        let mut unknown = Vec::new();
        for id in not_found {
            match self.store.get(id).await? {
                Some(_) => not_queued.push(id),
                None => unknown.push(id),
            }
        }
        let report = CancelReport {
            cancelled: finished.len() as u64,
            not_found: unknown,
            not_queued,
        };
        self.apply(Effects {
            finished,
            ..Effects::default()
        });
        Ok(report)
    }
}
