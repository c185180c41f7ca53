//! The planner's Prometheus metrics, named in one place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
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

/// One op's series, registered on its first use and then held: a label
/// lookup (and a `String` per label) for every task and series was about
/// 5 % of the planner's CPU at full speed.
struct OpSeries {
    submitted: Counter,
    /// By final status: done, failed, cancelled, expired.
    finished: [Counter; 4],
    latency: Histogram,
    duration: Histogram,
}

const FINAL: [TaskStatus; 4] = [
    TaskStatus::Done,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
    TaskStatus::Expired,
];

impl OpSeries {
    fn new(label: &str) -> Self {
        let op = label.to_string();
        Self {
            submitted: counter!("planner_tasks_submitted_total", "op" => op.clone()),
            finished: FINAL.map(|status| {
                counter!("planner_tasks_finished_total", "op" => op.clone(), "status" => status.as_str())
            }),
            latency: histogram!("planner_task_latency_seconds", "op" => op.clone()),
            duration: histogram!("planner_task_duration_seconds", "op" => op),
        }
    }
}

/// Series by label: at most [`MAX_LABELLED_OPS`] ops and `other`.
static SERIES: LazyLock<RwLock<HashMap<String, Arc<OpSeries>>>> = LazyLock::new(RwLock::default);

fn series(op: &str) -> Arc<OpSeries> {
    if let Ok(series) = SERIES.read()
        && let Some(found) = series.get(op)
    {
        return found.clone();
    }
    // Not registered yet, or not labelled (then it counts as `other`).
    let label = op_label(op);
    let mut series = SERIES.write().unwrap_or_else(|p| p.into_inner());
    series
        .entry(label)
        .or_insert_with_key(|label| Arc::new(OpSeries::new(label)))
        .clone()
}

pub fn submitted(op: &str) {
    series(op).submitted.increment(1);
}

pub fn finished(task: &Task) {
    let series = series(&task.op);
    if let Some(i) = FINAL.iter().position(|s| *s == task.status) {
        series.finished[i].increment(1);
    }
    if task.status == TaskStatus::Cancelled {
        return;
    }
    if let Some(end) = task.finished_at_ms {
        let latency = end.saturating_sub(task.submitted_at_ms);
        series.latency.record(latency as f64 / 1000.0);
        if let Some(start) = task.started_at_ms {
            series
                .duration
                .record(end.saturating_sub(start) as f64 / 1000.0);
        }
    }
}

static DISPATCH_GAP: LazyLock<Histogram> =
    LazyLock::new(|| histogram!("planner_dispatch_gap_seconds"));

pub fn dispatch_gap(gap: Duration) {
    DISPATCH_GAP.record(gap.as_secs_f64());
}

static DISPATCHED: LazyLock<[Counter; 2]> = LazyLock::new(|| {
    ["channel", "http"]
        .map(|transport| counter!("planner_dispatches_total", "transport" => transport))
});

/// How a dispatch went out: on a worker's channel, or as one HTTP request.
pub fn dispatched(on_channel: bool) {
    DISPATCHED[usize::from(!on_channel)].increment(1);
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

const ANSWERS: [&str; 6] = [
    "done",
    "busy",
    "draining",
    "lacks_op",
    "unauthorized",
    "lost",
];
static ANSWERED: LazyLock<[Counter; 6]> = LazyLock::new(|| {
    ANSWERS.map(|kind| counter!("planner_dispatch_answers_total", "answer" => kind))
});

pub fn answer(answer: &Answer) {
    let kind = match answer {
        Answer::Done { .. } => 0,
        Answer::Busy => 1,
        Answer::Draining => 2,
        Answer::Lacks => 3,
        Answer::Unauthorized => 4,
        Answer::Lost(_) => 5,
    };
    ANSWERED[kind].increment(1);
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
