//! Many tasks at once: a page of the task list, and cancelling queued tasks
//! by the thousand in one request.

use std::collections::HashSet;
use std::sync::Arc;

use wire::TaskId;
use wire::planner::{TaskStatus, TaskView};

use super::{Board, Effects, Finished, OpQueue};
use crate::task::Task;

/// What `GET /tasks` asks for; every field narrows the list.
#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub op: Option<String>,
    /// Cursor: only ids below this one (the last id of the previous page).
    pub before: Option<TaskId>,
    /// Only tasks submitted at or after this time (unix ms).
    pub since_ms: Option<u64>,
}

impl TaskFilter {
    fn admits(&self, task: &Task) -> bool {
        self.status.is_none_or(|s| task.status == s)
            && self.op.as_deref().is_none_or(|o| &*task.op == o)
            && self.before.is_none_or(|b| task.id < b)
            && self.since_ms.is_none_or(|s| task.submitted_at_ms >= s)
    }
}

/// The outcome of cancelling listed tasks.
#[derive(Debug, Default)]
pub struct Cancelled {
    /// The cancelled tasks, and the workers to interrupt.
    pub effects: Effects,
    /// Not on the board (never existed, or finished long enough ago to be
    /// only in the store).
    pub not_found: Vec<TaskId>,
    /// Already finished.
    pub not_queued: Vec<TaskId>,
}

impl Board {
    /// Newest first, at most `limit`: one pass to filter, a partial selection
    /// of the newest `limit`, and sorting only those.
    pub fn page(&self, filter: &TaskFilter, limit: usize) -> Vec<TaskView> {
        if limit == 0 {
            return Vec::new();
        }
        let mut ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| filter.admits(t))
            .map(|t| t.id)
            .collect();
        if ids.len() > limit {
            ids.select_nth_unstable_by(limit - 1, |a, b| b.cmp(a));
            ids.truncate(limit);
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter().filter_map(|id| self.view(id)).collect()
    }

    /// The tasks of batch `id` here: by status when `all` (a scan of the
    /// board), and how many are running (its workers' slots only).
    pub fn batch_counts(
        &self,
        id: TaskId,
        all: bool,
    ) -> (std::collections::BTreeMap<String, u64>, u64) {
        let mut by_status = std::collections::BTreeMap::new();
        if all {
            for task in self.tasks.values().filter(|t| t.controls.batch == Some(id)) {
                *by_status
                    .entry(task.status.as_str().to_string())
                    .or_default() += 1;
            }
        }
        let running = self
            .workers
            .values()
            .flat_map(|w| w.in_flight.iter())
            .filter(|t| {
                self.tasks.get(t).is_some_and(|t| {
                    t.status == TaskStatus::Running && t.controls.batch == Some(id)
                })
            })
            .count() as u64;
        (by_status, running)
    }

    /// Cancels those of `ids` that are queued or running (running ones are
    /// interrupted on their workers). Each task leaves its queue by its key,
    /// so the cost is the number of tasks cancelled.
    pub fn cancel_ids(&mut self, ids: &[TaskId]) -> Cancelled {
        let mut out = Cancelled::default();
        let mut seen = HashSet::new();
        for &id in ids {
            if !seen.insert(id) {
                continue;
            }
            match self.tasks.get(&id).map(|t| t.status) {
                None => out.not_found.push(id),
                Some(TaskStatus::Queued) => {
                    self.dequeue(id);
                    let finished = self.finish(id, TaskStatus::Cancelled, None, None);
                    out.effects.finished.push(finished);
                }
                Some(TaskStatus::Running) => {
                    let finished = self.cancel_running(id, &mut out.effects);
                    out.effects.finished.push(finished);
                }
                Some(_) => out.not_queued.push(id),
            }
        }
        out
    }

    /// Cancels every queued task (of `op`, if given), including those
    /// waiting out a retry's backoff: each queue is taken whole, so the cost
    /// is the number of tasks cancelled.
    pub fn cancel_queued(&mut self, op: Option<&str>) -> Vec<Finished> {
        let ops: Vec<Arc<str>> = self
            .queues
            .keys()
            .filter(|name| op.is_none_or(|o| &***name == o))
            .cloned()
            .collect();
        let mut finished = Vec::new();
        for op in ops {
            let queue = self
                .queues
                .get_mut(&op)
                .map(OpQueue::take)
                .unwrap_or_default();
            for id in queue {
                self.queued -= 1;
                finished.push(self.finish(id, TaskStatus::Cancelled, None, None));
            }
        }
        let delayed: Vec<TaskId> = self
            .delayed
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| op.is_none_or(|o| &*t.op == o))
            })
            .collect();
        for id in delayed {
            self.dequeue(id);
            finished.push(self.finish(id, TaskStatus::Cancelled, None, None));
        }
        finished
    }

    /// Cancels every running task (of `op`, if given); their workers are
    /// to be interrupted.
    pub fn cancel_running_all(&mut self, op: Option<&str>) -> Effects {
        let running: Vec<TaskId> = self
            .workers
            .values()
            .flat_map(|w| w.in_flight.iter().copied())
            .filter(|id| {
                self.tasks.get(id).is_some_and(|t| {
                    t.status == TaskStatus::Running && op.is_none_or(|o| &*t.op == o)
                })
            })
            .collect();
        let mut effects = Effects::default();
        for id in running {
            let finished = self.cancel_running(id, &mut effects);
            effects.finished.push(finished);
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use wire::planner::Registration;

    use super::*;

    fn board_with(tasks: &[(TaskId, &str)]) -> Board {
        let mut board = Board::new(3, 100_000);
        board.insert(
            tasks
                .iter()
                .map(|(id, op)| Task::new(*id, (*op).into(), vec![1, 2].into(), *id * 10)),
        );
        board
    }

    #[test]
    fn cancelling_by_id_takes_exactly_those_out_of_their_queues() {
        let mut board = board_with(&[(1, "mul"), (2, "add"), (3, "mul"), (4, "mul")]);
        let cancelled = board.cancel_ids(&[3, 1, 99]);
        let mut ids: Vec<TaskId> = cancelled.effects.finished.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 3]);
        assert_eq!(cancelled.not_found, [99]);
        assert_eq!(board.queued(), 2);
        assert_eq!(board.cancel_ids(&[1]).not_queued, [1]);
        // What is left still dispatches, in order.
        board
            .register(
                Registration {
                    id: "w".into(),
                    url: "http://w".into(),
                    ops: vec![wire::OpInfo {
                        name: "mul".into(),
                        digest: "d".into(),
                        arity: 2,
                        doc: String::new(),
                    }],
                    slots: 4,
                },
                Instant::now(),
                std::time::Duration::from_secs(3),
            )
            .expect("a new worker registers");
        let sent: Vec<TaskId> = board.pump(Instant::now()).iter().map(|a| a.task).collect();
        assert_eq!(sent, [4], "only the mul task left in the queue goes out");
        assert_eq!(board.view(2).map(|v| v.status), Some(TaskStatus::Queued));
    }

    #[test]
    fn cancelling_by_op_empties_that_queue_only() {
        let ids: Vec<(TaskId, &str)> = (1..=20_000).map(|id| (id, "idle")).collect();
        let mut board = board_with(&ids);
        board.insert([Task::new(20_001, "mul".into(), vec![1, 2].into(), 0)]);
        assert_eq!(board.cancel_queued(Some("idle")).len(), 20_000);
        assert_eq!(board.queued(), 1);
        assert_eq!(board.stats().by_op["idle"]["cancelled"], 20_000);
        assert_eq!(board.cancel_queued(Some("idle")).len(), 0);
        assert_eq!(board.cancel_queued(None).len(), 1);
        assert_eq!(board.queued(), 0);
    }

    #[test]
    fn pages_are_newest_first_and_the_cursor_never_repeats() {
        let tasks: Vec<(TaskId, &str)> = (1..=25)
            .map(|id| (id, if id % 2 == 0 { "add" } else { "mul" }))
            .collect();
        let board = board_with(&tasks);
        let mut filter = TaskFilter::default();
        let mut seen = Vec::new();
        loop {
            let page = board.page(&filter, 7);
            seen.extend(page.iter().map(|t| t.id));
            match page.last() {
                Some(last) if page.len() == 7 => filter.before = Some(last.id),
                _ => break,
            }
        }
        assert_eq!(seen, (1..=25).rev().collect::<Vec<_>>());
        let adds = TaskFilter {
            op: Some("add".into()),
            since_ms: Some(100),
            ..TaskFilter::default()
        };
        let ids: Vec<TaskId> = board.page(&adds, 100).iter().map(|t| t.id).collect();
        assert_eq!(ids, [24, 22, 20, 18, 16, 14, 12, 10]);
        assert!(board.page(&adds, 0).is_empty());
    }
}
