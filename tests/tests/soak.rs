//! Soak (issue 15): a million tiny tasks through one durable planner and two
//! workers on 127.0.0.1, with a short retention. Prints the planner's RSS
//! and the data dir's size every 100,000 tasks and asserts that
//!
//! - RSS after warm-up stays within a band: every figure after 400,000
//!   tasks is at most the highest of the warm-up (100,000 to 400,000) plus
//!   20 %. The warm-up ends when the task map has taken its steady size,
//!   which its last doubling (a ~24 MiB step, at a moment that depends on
//!   timing) was seen to reach anywhere from 200,000 to 400,000 tasks;
//! - the data dir stops growing once retention runs: every figure from
//!   after 400,000 is at most the warm-up's highest plus 20 % (plus the WAL's
//!   own swings, bounded by its checkpoints);
//! - every task ran exactly once: each answer is `done` with its own
//!   expected result after one attempt, the planner counts exactly that
//!   many done and none failed, and the workers together ran exactly that
//!   many.
//!
//! Tasks go in batches of 20,000 with `?wait=true` (the first two of
//! 60,000, see `OPENING`), three batches in flight, so the queue never runs
//! dry and never holds more than three batches.
//! `SOAK_TASKS` changes the count (a multiple of the batch).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use e2e::System;
use e2e::chart::quantity_bytes;
use serde_json::{Value, json};
use wire::planner::{Stats, TaskStatus, TaskView};

/// The two tests here load the machine; they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BATCH: u64 = 20_000;
/// The first tasks go in as two batches of 60,000, so that the planner's
/// task map takes the size it keeps for the whole run at once (2^18
/// buckets: room for twice what the run ever holds), rather than doubling
/// at a moment that depends on timing, after the warm-up.
const OPENING: u64 = 120_000;
const OPENING_BATCH: u64 = 60_000;

/// The next batch to run: its first task and its size.
fn take(next: &AtomicU64, total: u64) -> Option<(u64, u64)> {
    let size = |first: u64| {
        if first < OPENING {
            OPENING_BATCH
        } else {
            BATCH
        }
    };
    let first = next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |first| {
            (first < total).then(|| first + size(first))
        })
        .ok()?;
    Some((first, size(first).min(total - first)))
}
const IN_FLIGHT: u64 = 3;
const REPORT_EVERY: u64 = 100_000;
/// Where warm-up ends; the band is taken from the figures up to here.
const WARM_UP: u64 = 400_000;
const BAND: f64 = 1.20;
/// The WAL grows between checkpoints (every 1,000 pages, 4 MiB) and is
/// truncated back after them; a sample may land on either side.
const WAL_SWING: u64 = 8 << 20;

fn rss_kib(pid: i32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .context("no VmRSS in /proc/<pid>/status")
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// `add(i, 7)` for the task numbered `i`: each task has its own result.
fn batch(first: u64, n: u64) -> Value {
    Value::Array(
        (first..first + n)
            .map(|i| json!({"op": "add", "args": [i, 7]}))
            .collect(),
    )
}

/// Submits one batch and waits for all of it; checks every answer.
async fn run_batch(system: &System, first: u64, n: u64) -> Result<()> {
    let response = system
        .client
        .post(system.url("/tasks?wait=true&timeout_ms=600000"))
        .json(&batch(first, n))
        .send()
        .await?;
    let status = response.status();
    ensure!(
        status == 200,
        "batch at {first}: HTTP {status}: {}",
        response.text().await?
    );
    let views: Vec<TaskView> = response.json().await?;
    ensure!(
        views.len() as u64 == n,
        "batch at {first}: {} answers",
        views.len()
    );
    for (i, view) in (first..).zip(&views) {
        ensure!(
            view.status == TaskStatus::Done
                && view.result == Some(i as i64 + 7)
                && view.attempts == 1,
            "task {i} did not run exactly once with its result: {view:?}"
        );
    }
    Ok(())
}

/// Tasks the workers ran, from their own counters.
async fn ran_by_workers(system: &System) -> Result<u64> {
    let mut total = 0.0;
    for worker in &system.workers {
        let text = system
            .client
            .get(format!("{}/metrics", worker.url()))
            .send()
            .await?
            .text()
            .await?;
        for line in text
            .lines()
            .filter(|l| l.starts_with("worker_tasks_total{"))
        {
            let value = line.rsplit(' ').next().unwrap_or("0");
            total += value
                .parse::<f64>()
                .with_context(|| format!("metric line {line}"))?;
        }
    }
    Ok(total as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_tasks_leave_memory_and_disk_flat() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let total: u64 = std::env::var("SOAK_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    ensure!(
        total >= WARM_UP + REPORT_EVERY && total.is_multiple_of(BATCH),
        "SOAK_TASKS: a multiple of {BATCH}, over {WARM_UP}"
    );
    let env = [("STORE", "durable"), ("RESULT_TTL", "3s")];
    let system = Arc::new(System::with_workers(&env, 2, &[("SLOTS", "4")]).await?);
    let pid = system.planner.pid().context("the planner's pid")?;
    let data = system.dir.path().join("planner-data");
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut runners = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (system, done, next) = (system.clone(), done.clone(), next.clone());
        runners.push(tokio::spawn(async move {
            loop {
                let Some((first, n)) = take(&next, total) else {
                    return Ok::<_, anyhow::Error>(());
                };
                run_batch(&system, first, n).await?;
                done.fetch_add(n, Ordering::SeqCst);
            }
        }));
    }
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    let mut next_report = REPORT_EVERY;
    while next_report <= total {
        // A runner ends early only on an error: surface it at once.
        let (ended, running): (Vec<_>, Vec<_>) = runners.into_iter().partition(|r| r.is_finished());
        runners = running;
        for runner in ended {
            runner.await??;
        }
        if done.load(Ordering::SeqCst) < next_report {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let rss = rss_kib(pid)?;
        let bytes = dir_bytes(&data)?;
        println!(
            "soak: {:>9} tasks  {:>6.1} s  planner RSS {:>7.1} MiB  data dir {:>7.1} MiB",
            next_report,
            started.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            bytes as f64 / 1048576.0
        );
        samples.push((next_report, rss, bytes));
        next_report += REPORT_EVERY;
    }
    for runner in runners {
        runner.await??;
    }
    let stats: Stats = system.get_json("/stats").await?;
    let count = |s: &str| stats.by_status.get(s).copied().unwrap_or(0);
    assert_eq!(count("done"), total, "{stats:?}");
    assert_eq!(count("failed"), 0, "{stats:?}");
    assert_eq!(
        ran_by_workers(&system).await?,
        total,
        "the workers ran each task once"
    );

    let warm_up = samples.iter().filter(|(n, _, _)| *n <= WARM_UP);
    let rss_base = warm_up
        .clone()
        .map(|s| s.1)
        .max()
        .context("no warm-up sample")?;
    let bytes_base = warm_up.map(|s| s.2).max().context("no warm-up sample")?;
    println!(
        "soak: bands after warm-up: RSS ≤ {:.1} MiB, data dir ≤ {:.1} MiB",
        rss_base as f64 * BAND / 1024.0,
        (bytes_base as f64 * BAND + WAL_SWING as f64) / 1048576.0
    );
    for &(n, rss, bytes) in samples.iter().filter(|(n, _, _)| *n > WARM_UP) {
        assert!(
            rss as f64 <= rss_base as f64 * BAND,
            "planner RSS at {n} tasks: {rss} KiB, over the warm-up's {rss_base} KiB + 20 %"
        );
        assert!(
            bytes as f64 <= bytes_base as f64 * BAND + WAL_SWING as f64,
            "data dir at {n} tasks: {bytes} B, over the warm-up's {bytes_base} B + 20 % + the WAL's swing"
        );
    }
    Ok(())
}

fn status_kib(pid: i32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/<pid>/status"))
}

/// The chart's defaults derive `QUEUE_LIMIT` and the planner's memory limit
/// from each other (issue 15): a planner run with the rendered settings,
/// holding `RETAIN_FINISHED` finished tasks and a full queue, never peaks
/// above the rendered memory limit (it would be OOM-killed), and past the
/// limit submissions get 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_memory_limit_holds_a_full_queue_at_the_charts_queue_limit() -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let manifest = e2e::chart::render("workers", &[])?;
    let planner = manifest.get("Deployment", "workers-planner")?;
    let container = e2e::chart::container(planner)?;
    let setting = |name: &str| -> Result<String> {
        Ok(e2e::chart::env_literal(container, name)
            .with_context(|| format!("the rendered planner has no {name}"))?
            .to_string())
    };
    let (queue_limit, retain) = (setting("QUEUE_LIMIT")?, setting("RETAIN_FINISHED")?);
    let limit = quantity_bytes(
        container["resources"]["limits"]["memory"]
            .as_str()
            .context("no memory limit on the planner")?,
    )?;
    let env = [
        ("STORE", "durable"),
        ("QUEUE_LIMIT", queue_limit.as_str()),
        ("RETAIN_FINISHED", retain.as_str()),
    ];
    let mut system = System::with_workers(&env, 2, &[("SLOTS", "4")]).await?;
    let pid = system.planner.pid().context("the planner's pid")?;
    let (queue_limit, retain): (u64, u64) = (queue_limit.parse()?, retain.parse()?);

    // The finished tasks memory keeps for queries.
    let mut first = 0;
    while first < retain {
        let n = BATCH.min(retain - first);
        let body = Value::Array(
            (first..first + n)
                .map(|i| json!({"op": "add", "args": [i, 7]}))
                .collect(),
        );
        let response = system
            .client
            .post(system.url("/tasks?wait=true&timeout_ms=600000"))
            .json(&body)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "batch at {first}: HTTP {}",
            response.status()
        );
        first += n;
    }
    // No workers from here on: the queue only fills.
    for worker in &system.workers {
        worker.terminate();
    }
    for worker in &mut system.workers {
        worker.wait(Duration::from_secs(20)).await?;
    }
    system.wait_for_workers(0).await?;
    let mut queued = 0;
    while queued < queue_limit {
        let n = 100_000.min(queue_limit - queued);
        let body = Value::Array(
            (0..n)
                .map(|i| json!({"op": "mul", "args": [i, 3]}))
                .collect(),
        );
        let (status, answer) = system.submit(&body).await?;
        ensure!(
            status == 202,
            "filling the queue at {queued}: {status} {answer}"
        );
        queued += n;
    }
    let response = system
        .client
        .post(system.url("/tasks"))
        .json(&json!({"op": "mul", "args": [1, 2]}))
        .send()
        .await?;
    assert_eq!(response.status(), 503, "one past QUEUE_LIMIT");
    assert!(response.headers().contains_key("retry-after"));

    let rss = status_kib(pid, "VmRSS:")? << 10;
    let peak = status_kib(pid, "VmHWM:")? << 10;
    println!(
        "chart defaults: QUEUE_LIMIT {queue_limit} queued + RETAIN_FINISHED {retain} finished: \
         planner RSS {:.1} MiB, peak {:.1} MiB, of a {:.0} MiB limit ({:.0} %)",
        rss as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        limit as f64 / 1048576.0,
        peak as f64 * 100.0 / limit as f64
    );
    assert!(
        peak < limit,
        "the planner peaked at {peak} B with the chart's defaults, over its {limit} B memory limit: \
         it would be OOM-killed; lower planner.queueLimit or raise the limit"
    );
    Ok(())
}
