//! Following tasks until they finish.
//!
//! By events (the default): the subscription is opened before the tasks are
//! submitted, so every transition is seen on one stream; when the planner
//! says we lagged (its backlog is bounded), when the stream breaks, or after
//! a quiet spell, the tasks still open are looked up with `GET /tasks?ids=`
//! (1,000 per request) to catch up. By polling: only that lookup, at an
//! interval that backs off while nothing changes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::{FutureExt, StreamExt};
use wire::TaskId;
use wire::planner::{TaskStatus, TaskView};

use crate::api::{Api, Event, Events};

/// Without a single event for this long, look the open tasks up anyway
/// (insurance: the stream itself says when it dropped events); the spell
/// doubles while the look-ups find nothing, so a batch stuck in the queue
/// costs the planner next to nothing.
const QUIET_CATCH_UP: Duration = Duration::from_secs(2);
const QUIET_CATCH_UP_MAX: Duration = Duration::from_secs(30);
const POLL_MIN: Duration = Duration::from_millis(50);
const POLL_MAX: Duration = Duration::from_secs(1);

/// Counts so far, for a progress display.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub total: usize,
    pub done: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub expired: usize,
}

impl Tally {
    pub fn finished(&self) -> usize {
        self.done + self.failed + self.cancelled + self.expired
    }

    fn count(&mut self, status: TaskStatus) {
        match status {
            TaskStatus::Done => self.done += 1,
            TaskStatus::Failed => self.failed += 1,
            TaskStatus::Cancelled => self.cancelled += 1,
            TaskStatus::Expired => self.expired += 1,
            TaskStatus::Queued | TaskStatus::Running => {}
        }
    }
}

struct Open {
    pending: HashSet<TaskId>,
    finished: HashMap<TaskId, TaskView>,
    tally: Tally,
}

impl Open {
    fn new(ids: &[TaskId]) -> Self {
        let pending: HashSet<TaskId> = ids.iter().copied().collect();
        Self {
            tally: Tally {
                total: pending.len(),
                ..Tally::default()
            },
            pending,
            finished: HashMap::new(),
        }
    }

    /// True if this view finished one of ours.
    fn see(&mut self, view: TaskView) -> bool {
        if !view.status.is_final() || !self.pending.remove(&view.id) {
            return false;
        }
        self.tally.count(view.status);
        self.finished.insert(view.id, view);
        true
    }

    /// Looks every open task up; an id the planner does not know is an error.
    async fn catch_up(&mut self, api: &Api) -> Result<bool> {
        let mut ids: Vec<TaskId> = self.pending.iter().copied().collect();
        ids.sort_unstable();
        let views = api.tasks(&ids).await?;
        let known: HashSet<TaskId> = views.iter().map(|v| v.id).collect();
        if let Some(missing) = ids.iter().find(|id| !known.contains(id)) {
            bail!("no task {missing}");
        }
        let mut progressed = false;
        for view in views {
            progressed |= self.see(view);
        }
        Ok(progressed)
    }
}

/// Waits until every task in `ids` is final and returns them in `ids` order.
/// `events` must have been subscribed before the tasks could change (before
/// submitting them); `None` polls. `known_current` says whether every task
/// may already have finished before the subscription (then one look-up comes
/// first). `progress` is called whenever the tally changes.
pub async fn follow(
    api: &Api,
    ids: &[TaskId],
    events: Option<Events>,
    known_current: bool,
    timeout: Option<Duration>,
    mut progress: impl FnMut(&Tally),
) -> Result<Vec<TaskView>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut open = Open::new(ids);
    if !known_current {
        open.catch_up(api).await?;
        progress(&open.tally);
    }
    let mut events = events;
    let mut interval = POLL_MIN;
    let mut quiet = QUIET_CATCH_UP;
    while !open.pending.is_empty() {
        if let Some(deadline) = deadline
            && Instant::now() >= deadline
        {
            bail!(
                "timed out: {} of {} tasks still unfinished",
                open.pending.len(),
                open.tally.total
            );
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match events.as_mut() {
            Some(stream) => {
                let wait = remaining.map_or(quiet, |r| r.min(quiet));
                let mut next = tokio::time::timeout(wait, stream.next()).await.ok();
                let timed_out = next.is_none();
                let (mut progressed, mut behind, mut ended) = (false, timed_out, false);
                // Take everything already buffered before redrawing.
                while let Some(item) = next.take() {
                    match item {
                        Some(Ok(Event::Task(view))) => progressed |= open.see(view),
                        Some(Ok(Event::Worker(_))) => {}
                        Some(Ok(Event::Lagged(_))) => behind = true,
                        // The stream ended (planner restarting?): poll instead.
                        Some(Err(_)) | None => {
                            ended = true;
                            break;
                        }
                    }
                    next = stream.next().now_or_never();
                }
                if ended {
                    events = None;
                }
                if behind {
                    progressed |= open.catch_up(api).await?;
                }
                if progressed {
                    progress(&open.tally);
                    quiet = QUIET_CATCH_UP;
                } else if timed_out {
                    quiet = (quiet * 2).min(QUIET_CATCH_UP_MAX);
                }
            }
            None => {
                let progressed = open.catch_up(api).await?;
                if progressed {
                    progress(&open.tally);
                    interval = POLL_MIN;
                } else {
                    interval = (interval * 2).min(POLL_MAX);
                }
                if !open.pending.is_empty() {
                    let pause = remaining.map_or(interval, |r| r.min(interval));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
    Ok(ids
        .iter()
        .filter_map(|id| open.finished.get(id).cloned())
        .collect())
}
