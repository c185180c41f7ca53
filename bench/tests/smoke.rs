//! `bench --quick` completes and reports every figure of issues 6, 11 and 14.
//!
//! A smoke test only: it checks that each figure is present and positive,
//! never how fast anything is. Needs the `planner` and `worker` binaries next
//! to `bench` (`cargo build --release --workspace --bins`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn quick_run_reports_every_figure() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let json = dir.path().join("figures.json");
    let markdown = dir.path().join("figures.md");
    let stdout = dir.path().join("stdout.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--quick")
        .arg("--json")
        .arg(&json)
        .arg("--markdown")
        .arg(&markdown)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("creating the stdout file"))
        .spawn()
        .expect("starting bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for bench") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench --quick did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
    assert!(
        status.success(),
        "bench --quick failed ({status}):\n{printed}"
    );

    let figures: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON file"))
            .expect("the figures are JSON");
    for path in [
        "/ceiling/round_trips_per_s",
        "/ceiling/sequential_p50_us",
        "/ceiling/server_cpu_us",
        "/throughput/tasks_per_s",
        "/throughput/ratio_to_ceiling",
        "/throughput/checked",
        "/throughput/planner_cpu_us",
        "/throughput/workers_cpu_us",
        "/latency/p50_us",
        "/latency/p99_us",
        "/memory_latency/p50_us",
        "/gap/count",
        "/gap/p50_us",
        "/gap/p99_us",
        "/wasm/sandboxed_us",
        "/wasm/spawn_blocking_us",
        "/wasm/native_ns",
        "/worker_idle_rss_kib",
        "/planner_memory/rss_after_kib",
        "/planner_memory/bytes_per_task",
        "/steady/tasks_per_s",
        "/steady/rss_end_kib",
        "/steady/disk_end_bytes",
        "/steady/minutes_to_count_cap",
        "/shared_store/one/tasks_per_s",
        "/shared_store/one/database_cpu_us",
        "/shared_store/one/latency/p50_us",
        "/shared_store/three/tasks_per_s",
        "/shared_store/three/planners_cpu_us",
        "/shared_store/three/database_cpu_us",
        "/shared_store/three/latency/p99_us",
        "/scaling/by_workers/0/tasks_per_s",
        "/scaling/by_workers/2/planner_cpu_us",
        "/scaling/by_idle_workers/1/tasks_per_s",
        "/scaling/by_idle_workers/1/register_secs",
        "/scaling/by_backlog/1/tasks_per_s",
        "/scaling/latency_by_backlog/0/latency/p50_us",
        "/scaling/latency_by_backlog/1/latency/p99_us",
    ] {
        let value = figures.pointer(path).and_then(Value::as_f64);
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{path} is {value:?} in {figures:#}"
        );
    }

    for label in [
        "ceiling: trivial axum handler",
        "end-to-end ÷ ceiling",
        "single task, ?wait=true, p50",
        "dispatch gap p99",
        "WASM call, fresh sandboxed store",
        "native checked_add",
        "worker idle RSS",
        "planner RSS per queued task",
        "PostgreSQL store, 3 planners",
        "idle other-op workers",
        "tasks of another op queued",
    ] {
        assert!(
            printed.contains(label),
            "`{label}` missing from the table:\n{printed}"
        );
    }
    let markdown = std::fs::read_to_string(&markdown).expect("the markdown file");
    assert!(
        markdown.contains("| # | figure | value | target |"),
        "{markdown}"
    );
}
