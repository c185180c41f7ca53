//! The figures, checked against the targets, as a table.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Plan;
use crate::ceiling::Ceiling;
use crate::e2e::{Gap, Latency, Throughput};
use crate::machine::Machine;
use crate::memory::PlannerMemory;
use crate::scaling::Scaling;
use crate::shared_store::SharedStore;
use crate::steady::SteadyState;
use crate::wasm::WasmCost;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub ceiling: Ceiling,
    pub throughput: Throughput,
    pub latency: Latency,
    pub memory_latency: Latency,
    pub gap: Gap,
    pub wasm: WasmCost,
    pub worker_idle_rss_kib: u64,
    pub planner_memory: PlannerMemory,
    pub steady: SteadyState,
    /// Part 8, unless skipped (`--no-postgres`).
    pub shared_store: Option<SharedStore>,
    /// Part 9, unless skipped (`--no-scaling`).
    pub scaling: Option<Scaling>,
    pub wall_secs: f64,
    /// 1-minute load average when the run started and when it ended.
    pub load_start: f64,
    pub load_end: f64,
}

/// Latencies in µs, 3 significant digits, up to an hour.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

pub fn micros(elapsed: Duration) -> u64 {
    (elapsed.as_micros() as u64).max(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    /// A figure the targets are relative to, or given for context.
    Info,
}

impl Verdict {
    pub(crate) fn of(pass: bool) -> Self {
        if pass { Self::Pass } else { Self::Miss }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Miss => "MISS",
            Self::Info => "",
        }
    }
}

pub struct Row {
    pub part: &'static str,
    pub figure: String,
    pub value: String,
    pub target: &'static str,
    pub verdict: Verdict,
}

pub(crate) fn row(
    part: &'static str,
    figure: impl Into<String>,
    value: String,
    target: &'static str,
    verdict: Verdict,
) -> Row {
    Row {
        part,
        figure: figure.into(),
        value,
        target,
        verdict,
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn rows(f: &Figures) -> Vec<Row> {
    let c = &f.ceiling;
    let t = &f.throughput;
    let ratio = if c.round_trips_per_s > 0.0 {
        t.tasks_per_s / c.round_trips_per_s
    } else {
        0.0
    };
    let m = &f.planner_memory;
    let mut rows = vec![
        row(
            "1",
            format!(
                "ceiling: trivial axum handler, reqwest keep-alive, {} concurrent",
                c.concurrency
            ),
            format!("{:.0} req/s", c.round_trips_per_s),
            "",
            Verdict::Info,
        ),
        row(
            "1",
            "  CPU per round trip: server / client",
            format!("{:.0} / {:.0} µs", c.server_cpu_us, c.client_cpu_us),
            "",
            Verdict::Info,
        ),
        row(
            "1",
            "ceiling: one request at a time, p50 / p99",
            format!("{:.0} / {:.0} µs", c.sequential_p50_us, c.sequential_p99_us),
            "",
            Verdict::Info,
        ),
        row(
            "2",
            format!(
                "end-to-end: {} tasks, {} workers × {} slots, durable planner",
                t.tasks, t.workers, t.slots
            ),
            format!("{:.0} tasks/s", t.tasks_per_s),
            "",
            Verdict::Info,
        ),
        row(
            "2",
            "  every batch submitted after / every task finished after",
            format!("{:.1} s / {:.1} s", t.submit_secs, t.secs),
            "",
            Verdict::Info,
        ),
        row(
            "2",
            "  CPU per task: planner",
            format!("{:.0} µs", t.planner_cpu_us),
            "< 25 µs",
            Verdict::of(t.planner_cpu_us > 0.0 && t.planner_cpu_us < 25.0),
        ),
        row(
            "2",
            "  CPU per task: workers (all together)",
            format!("{:.0} µs", t.workers_cpu_us),
            "< 30 µs",
            Verdict::of(t.workers_cpu_us > 0.0 && t.workers_cpu_us < 30.0),
        ),
        row(
            "2",
            "  CPU per task: bench client",
            format!("{:.0} µs", t.client_cpu_us),
            "",
            Verdict::Info,
        ),
        row(
            "2",
            "end-to-end ÷ ceiling",
            format!("{:.0} %", ratio * 100.0),
            "≥ 50 %",
            Verdict::of(ratio >= 0.5),
        ),
        row(
            "3",
            "single task, ?wait=true, p50",
            format!("{:.0} µs", f.latency.p50_us),
            "< 500 µs",
            Verdict::of(f.latency.p50_us < 500.0),
        ),
        row(
            "3",
            "single task, ?wait=true, p99",
            format!("{:.0} µs", f.latency.p99_us),
            "< 1000 µs",
            Verdict::of(f.latency.p99_us < 1000.0),
        ),
        row(
            "3",
            "  the same with STORE=memory (no fsync before the ack), p50 / p99",
            format!(
                "{:.0} / {:.0} µs",
                f.memory_latency.p50_us, f.memory_latency.p99_us
            ),
            "",
            Verdict::Info,
        ),
        row(
            "4",
            format!(
                "dispatch gap p50 ({} dispatches, planner's /stats)",
                f.gap.count
            ),
            format!("{:.0} µs", f.gap.p50_us),
            "",
            Verdict::Info,
        ),
        row(
            "4",
            "dispatch gap p99",
            format!("{:.0} µs", f.gap.p99_us),
            "< 1000 µs",
            Verdict::of(f.gap.p99_us < 1000.0),
        ),
        row(
            "5",
            "WASM call, fresh sandboxed store, limits set",
            format!("{:.2} µs", f.wasm.sandboxed_us),
            "< 10 µs",
            Verdict::of(f.wasm.sandboxed_us < 10.0),
        ),
        row(
            "5",
            "  the same call through spawn_blocking (where a call past one epoch tick moves)",
            format!("{:.2} µs", f.wasm.spawn_blocking_us),
            "",
            Verdict::Info,
        ),
        row(
            "5",
            "native checked_add",
            format!("{:.2} ns", f.wasm.native_ns),
            "",
            Verdict::Info,
        ),
        row(
            "6",
            "worker idle RSS (largest of the workers)",
            mib(f.worker_idle_rss_kib),
            "< 32 MiB",
            Verdict::of(f.worker_idle_rss_kib > 0 && f.worker_idle_rss_kib < 32 * 1024),
        ),
        row(
            "6",
            format!("planner RSS, idle → {} queued", m.queued),
            format!("{} → {}", mib(m.rss_before_kib), mib(m.rss_after_kib)),
            "",
            Verdict::Info,
        ),
        row(
            "6",
            "planner RSS per queued task",
            format!("{:.0} B", m.bytes_per_task),
            "< 1024 B",
            Verdict::of(m.bytes_per_task > 0.0 && m.bytes_per_task < 1024.0),
        ),
        row(
            "7",
            format!(
                "steady state, default retention: {} tasks at {:.0} tasks/s, RSS after warm-up → end",
                f.steady.tasks, f.steady.tasks_per_s
            ),
            format!(
                "{} → {}",
                mib(f.steady.rss_warm_kib),
                mib(f.steady.rss_end_kib)
            ),
            "",
            Verdict::Info,
        ),
        row(
            "7",
            "  per hour of full-speed load: planner RSS / data dir",
            format!(
                "{:+.0} MiB / {:+.2} GiB",
                f.steady.rss_mib_per_hour, f.steady.disk_gib_per_hour
            ),
            "",
            Verdict::Info,
        ),
        row(
            "7",
            "  data dir per task; until RESULT_LIMIT (10M) caps it",
            format!(
                "{:.0} B; {:.0} min",
                f.steady.disk_bytes_per_task, f.steady.minutes_to_count_cap
            ),
            "",
            Verdict::Info,
        ),
    ];
    if let Some(shared) = &f.shared_store {
        rows.extend(crate::shared_store::rows(shared, t.tasks_per_s));
    }
    if let Some(scaling) = &f.scaling {
        rows.extend(crate::scaling::rows(scaling));
    }
    rows
}

pub fn table(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.figure.chars().count())
        .max()
        .unwrap_or(10);
    let value_width = rows
        .iter()
        .map(|r| r.value.chars().count())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<2} {:<width$}  {:>value_width$}  {:<10}",
        "#", "figure", "value", "target"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<2} {:<width$}  {:>value_width$}  {:<10} {}",
            r.part,
            r.figure,
            r.value,
            r.target,
            r.verdict.label()
        );
    }
    out
}

/// What the run measures, in one sentence: printed before the run and in
/// the Markdown report.
pub fn plan_summary(plan: &Plan) -> String {
    format!(
        "{} workers × {} slots (concurrency {}), {} tasks in batches of {}, ceiling measured for {:?}, \
         {} single-task samples, {} queued tasks, WASM loops of {:?}",
        plan.workers,
        plan.slots,
        plan.concurrency(),
        plan.tasks,
        plan.batch,
        plan.ceiling,
        plan.latency_samples,
        plan.queued,
        plan.wasm,
    )
}

pub fn markdown(
    command: &str,
    machine: &Machine,
    plan: &Plan,
    f: &Figures,
    rows: &[Row],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Command: `{command}`\n");
    let _ = writeln!(
        out,
        "Machine: {} CPUs ({}), {:.1} GiB memory, Linux {}, {}.\n",
        machine.cpus, machine.model, machine.memory_gib, machine.kernel, machine.rustc
    );
    let _ = writeln!(
        out,
        "Run: {}; {:.0} s in all. Load average (1 min) {:.2} at the start, {:.2} at the end.\n",
        plan_summary(plan),
        f.wall_secs,
        f.load_start,
        f.load_end
    );
    let _ = writeln!(out, "| # | figure | value | target | |");
    let _ = writeln!(out, "|---|---|---:|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.part,
            r.figure.trim(),
            r.value,
            r.target,
            match r.verdict {
                Verdict::Miss => "**miss**",
                other => other.label(),
            }
        );
    }
    out
}
