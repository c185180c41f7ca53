//! The worker's Prometheus metrics, named in one place.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};
use wire::worker::ModuleSource;

use crate::sandbox::CallError;

/// The series every task of one op touches. Registered on the op's first
/// task (so `/metrics` shows nothing before, as when each task looked them
/// up) and then held: looking a series up per task hashed its labels and
/// allocated the `op` label every time.
#[derive(Default)]
pub struct OpMetrics {
    series: OnceLock<Series>,
}

struct Series {
    ok: OnceLock<Counter>,
    task_seconds: Histogram,
    call_seconds: Histogram,
}

impl OpMetrics {
    /// A task of `op` that ran: its outcome, its whole time and the
    /// sandboxed call's.
    pub fn ran(&self, op: &str, outcome: &Result<i64, CallError>, total: Duration, call: Duration) {
        let series = self.series.get_or_init(|| Series {
            ok: OnceLock::new(),
            task_seconds: histogram!("worker_task_duration_seconds", "op" => op.to_string()),
            call_seconds: histogram!("worker_wasm_call_seconds", "op" => op.to_string()),
        });
        match outcome {
            Ok(_) => series
                .ok
                .get_or_init(
                    || counter!("worker_tasks_total", "op" => op.to_string(), "outcome" => "ok"),
                )
                .increment(1),
            Err(err) => {
                counter!("worker_tasks_total", "op" => op.to_string(), "outcome" => err.kind())
                    .increment(1);
                if let CallError::Deadline(_) | CallError::Memory { .. } | CallError::Trap(_) = err
                {
                    counter!("worker_wasm_traps_total", "kind" => err.kind()).increment(1);
                }
            }
        }
        series.task_seconds.record(total.as_secs_f64());
        series.call_seconds.record(call.as_secs_f64());
    }
}

/// A call made on a blocking thread rather than inline: `retried` after it
/// outran the inline attempt (`Sandbox::try_call_briefly`), else at once,
/// its op's calls lately outlasting that attempt.
pub fn call_moved(op: &str, retried: bool) {
    let first = if retried { "inline" } else { "blocking" };
    counter!("worker_wasm_calls_moved_total", "op" => op.to_string(), "first" => first)
        .increment(1);
}

pub fn refused(reason: &'static str) {
    counter!("worker_tasks_refused_total", "reason" => reason).increment(1);
}

pub fn module_load(op: &str, source: ModuleSource, ok: bool, swapped: bool) {
    let source = match source {
        ModuleSource::Embedded => "embedded",
        ModuleSource::File => "file",
        ModuleSource::Upload => "upload",
    };
    let result = if ok { "ok" } else { "error" };
    counter!("worker_module_loads_total", "op" => op.to_string(), "source" => source, "result" => result).increment(1);
    if swapped {
        counter!("worker_module_swaps_total", "op" => op.to_string()).increment(1);
    }
}

/// A module file read from `OPS_DIR`: only when it changed.
pub fn module_file_read(op: &str) {
    counter!("worker_module_file_reads_total", "op" => op.to_string()).increment(1);
}

pub fn refresh(slots: u32, busy: u32, ops: usize) {
    gauge!("worker_slots").set(f64::from(slots));
    gauge!("worker_busy_slots").set(f64::from(busy));
    gauge!("worker_ops_loaded").set(ops as f64);
}

/// 1 while the dispatch channel to the planner is open (tests wait on it).
pub fn channel_open(open: bool) {
    gauge!("worker_channel_open").set(if open { 1.0 } else { 0.0 });
}
