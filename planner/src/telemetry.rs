//! The planner's Prometheus metrics, named in one place.

use std::collections::{BTreeMap, HashSet};
use std::sync::{LazyLock, RwLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use wire::planner::{Stats, TaskStatus, WorkersSummary};

use crate::board::Answer;
use crate::task::Task;

/// The label every op no worker has offered counts under.
pub const OTHER_OP: &str = "other";
/// Most op names that get a label of their own; past it, new ones count as
/// [`OTHER_OP`] too.
const MAX_LABELLED_OPS: usize = 1024;

/// Ops some worker has offered since the planner started, plus the built-in
/// ones: only these name a metric label or a `/stats` entry. Any op name a
/// client makes up counts as `op="other"`, so one request with 50,000
/// made-up names can't make `/metrics` and `/stats` megabytes long.
static OFFERED: LazyLock<RwLock<HashSet<String>>> =
    LazyLock::new(|| RwLock::new(["add", "mul"].map(String::from).into()));

/// `op` was offered by a worker: from now on it has a label of its own.
pub fn offered(op: &str) {
    if is_labelled(op) {
        return;
    }
    if let Ok(mut offered) = OFFERED.write()
        && offered.len() < MAX_LABELLED_OPS
    {
        offered.insert(op.to_string());
    }
}

fn is_labelled(op: &str) -> bool {
    OFFERED.read().is_ok_and(|offered| offered.contains(op))
}

/// The label of `op`: itself once a worker offered it, else `other`.
pub fn op_label(op: &str) -> String {
    if is_labelled(op) {
        op.to_string()
    } else {
        OTHER_OP.to_string()
    }
}

/// `/stats` with the ops no worker offered folded into `other`.
pub fn bounded(mut stats: Stats) -> Stats {
    let mut by_op: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (op, counts) in std::mem::take(&mut stats.by_op) {
        let folded = by_op.entry(op_label(&op)).or_default();
        for (status, n) in counts {
            *folded.entry(status).or_default() += n;
        }
    }
    stats.by_op = by_op;
    stats
}

pub fn submitted(op: &str) {
    counter!("planner_tasks_submitted_total", "op" => op_label(op)).increment(1);
}

pub fn finished(task: &Task) {
    let op = op_label(&task.op);
    counter!("planner_tasks_finished_total", "op" => op.clone(), "status" => task.status.as_str())
        .increment(1);
    if task.status == TaskStatus::Cancelled {
        return;
    }
    if let Some(end) = task.finished_at_ms {
        let latency = end.saturating_sub(task.submitted_at_ms);
        histogram!("planner_task_latency_seconds", "op" => op.clone())
            .record(latency as f64 / 1000.0);
        if let Some(start) = task.started_at_ms {
            histogram!("planner_task_duration_seconds", "op" => op)
                .record(end.saturating_sub(start) as f64 / 1000.0);
        }
    }
}

pub fn dispatch_gap(gap: Duration) {
    histogram!("planner_dispatch_gap_seconds").record(gap.as_secs_f64());
}

/// How a dispatch went out: `channel` or `http` (per-task request).
pub fn dispatched(transport: &'static str) {
    counter!("planner_dispatches_total", "transport" => transport).increment(1);
}

pub fn channel_opened() {
    counter!("planner_channels_opened_total").increment(1);
    gauge!("planner_channels_open").increment(1.0);
}

/// `why`: closed, dropped, silent, refused_frame, read_error, write_error.
pub fn channel_closed(why: &'static str) {
    counter!("planner_channels_closed_total", "why" => why).increment(1);
    gauge!("planner_channels_open").decrement(1.0);
}

pub fn answer(answer: &Answer) {
    let kind = match answer {
        Answer::Done { .. } => "done",
        Answer::Busy => "busy",
        Answer::Draining => "draining",
        Answer::Lacks => "lacks_op",
        Answer::Unauthorized => "unauthorized",
        Answer::Lost(_) => "lost",
    };
    counter!("planner_dispatch_answers_total", "answer" => kind).increment(1);
}

pub fn rollout(op: &str) {
    counter!("planner_module_rollouts_total", "op" => op.to_string()).increment(1);
}

/// Gauges are computed from the current state when scraped.
pub fn refresh(stats: &Stats, workers: &WorkersSummary) {
    let stats = bounded(stats.clone());
    for (op, counts) in &stats.by_op {
        for status in [TaskStatus::Queued, TaskStatus::Running] {
            let n = counts.get(status.as_str()).copied().unwrap_or(0);
            let name = if status == TaskStatus::Queued {
                "planner_queue_depth"
            } else {
                "planner_tasks_running"
            };
            gauge!(name, "op" => op.clone()).set(n as f64);
        }
    }
    let mut by_op = std::collections::BTreeMap::<&str, u64>::new();
    for flavor in &workers.flavors {
        gauge!("planner_workers", "flavor" => flavor.flavor.clone()).set(flavor.workers as f64);
        for (op, digests) in &flavor.digests {
            *by_op.entry(op.as_str()).or_default() += digests.values().sum::<u64>();
        }
    }
    for (op, n) in by_op {
        gauge!("planner_workers_offering", "op" => op.to_string()).set(n as f64);
    }
    gauge!("planner_slots").set(workers.slots as f64);
    gauge!("planner_busy_slots").set(workers.busy as f64);
}
