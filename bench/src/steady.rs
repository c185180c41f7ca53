//! Part 7: the steady state (issue 15). A durable planner in its default
//! configuration (retention included) and the end-to-end run's workers, fed
//! at full speed; after a warm-up, how fast its RSS and its data dir grow,
//! per hour of that load.
//!
//! With the default retention (`RESULT_TTL` 24 h, `RESULT_LIMIT` 10M) nothing
//! expires within the run, so the disk grows with every task until the
//! count cap; the figure says how fast and when the cap flattens it. RSS
//! must not grow at all after the warm-up: memory depends on queued and
//! retained tasks, not on tasks ever run.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use wire::planner::NewTask;

use crate::Plan;
use crate::system;

/// The default `RESULT_LIMIT`: where the data dir stops growing.
const DEFAULT_RESULT_LIMIT: u64 = 10_000_000;
const BATCH: u64 = 10_000;
const IN_FLIGHT: usize = 3;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SteadyState {
    pub tasks: u64,
    pub tasks_per_s: f64,
    /// After the warm-up (the first half of the tasks) and at the end.
    pub rss_warm_kib: u64,
    pub rss_end_kib: u64,
    pub disk_warm_bytes: u64,
    pub disk_end_bytes: u64,
    pub rss_mib_per_hour: f64,
    pub disk_gib_per_hour: f64,
    pub disk_bytes_per_task: f64,
    /// Minutes at this rate until `RESULT_LIMIT` finished tasks are kept and
    /// the data dir stops growing.
    pub minutes_to_count_cap: f64,
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

pub async fn measure(plan: &Plan) -> Result<SteadyState> {
    let dir = tempfile::Builder::new().prefix("bench-steady-").tempdir()?;
    let mut planner = system::start_planner(dir.path(), "planner-steady", &[]).await?;
    let url = planner.url();
    let mut workers = Vec::new();
    for i in 0..plan.workers {
        workers.push(
            system::start_worker(dir.path(), &url, &format!("steady-{i}"), plan.slots).await?,
        );
    }
    let outcome = run(plan, &planner, &dir.path().join("planner-steady-data")).await;
    system::stop_all(&mut planner, &mut workers).await;
    outcome
}

async fn run(
    plan: &Plan,
    planner: &launcher::process::Service,
    data: &Path,
) -> Result<SteadyState> {
    let client = system::client()?;
    let url = planner.url();
    system::wait_for_workers(&client, &url, plan.workers as usize).await?;
    let total = plan.steady_tasks.div_ceil(BATCH) * BATCH;
    // The first half is the warm-up: the board fills up to RETAIN_FINISHED
    // finished tasks and the allocator settles (BENCHMARKS.md: flat from
    // about 300,000 tasks on).
    let warm_at = (total / 2).div_ceil(BATCH) * BATCH;
    let batch: Vec<NewTask> = (0..BATCH)
        .map(|i| NewTask {
            op: if i % 2 == 0 { "add" } else { "mul" }.into(),
            args: vec![(i % 1000) as i64, 3],
            ..NewTask::default()
        })
        .collect();
    let started = Instant::now();
    let mut done = 0;
    let mut warm: Option<(Instant, u64, u64)> = None;
    let mut in_flight = tokio::task::JoinSet::new();
    let mut sent = 0;
    while done < total {
        while in_flight.len() < IN_FLIGHT && sent < total {
            let (client, url, batch) = (client.clone(), url.clone(), batch.clone());
            in_flight.spawn(async move {
                let response = client
                    .post(format!("{url}/tasks?wait=true&timeout_ms=600000"))
                    .json(&batch)
                    .send()
                    .await
                    .context("submitting a batch")?;
                if response.status() != reqwest::StatusCode::OK {
                    bail!("batch: HTTP {}", response.status());
                }
                // Read the whole answer, as a client would.
                response.bytes().await?;
                Ok(())
            });
            sent += BATCH;
        }
        match in_flight.join_next().await {
            Some(joined) => joined.context("a batch task")??,
            None => break,
        }
        done += BATCH;
        if done == warm_at {
            warm = Some((Instant::now(), system::rss_kib(planner)?, dir_bytes(data)?));
        }
        if started.elapsed() > plan.phase_timeout {
            bail!(
                "the steady-state run took longer than {:?}",
                plan.phase_timeout
            );
        }
    }
    let end = Instant::now();
    let (warm_time, rss_warm_kib, disk_warm_bytes) = warm.context("no warm-up sample")?;
    let rss_end_kib = system::rss_kib(planner)?;
    let disk_end_bytes = dir_bytes(data)?;
    let tasks_after_warm = (total - warm_at) as f64;
    let secs_after_warm = end.duration_since(warm_time).as_secs_f64().max(1e-3);
    let per_hour = 3600.0 / secs_after_warm;
    let tasks_per_s = total as f64 / end.duration_since(started).as_secs_f64().max(1e-3);
    Ok(SteadyState {
        tasks: total,
        tasks_per_s,
        rss_warm_kib,
        rss_end_kib,
        disk_warm_bytes,
        disk_end_bytes,
        rss_mib_per_hour: (rss_end_kib as f64 - rss_warm_kib as f64) / 1024.0 * per_hour,
        disk_gib_per_hour: (disk_end_bytes as f64 - disk_warm_bytes as f64) / (1u64 << 30) as f64
            * per_hour,
        disk_bytes_per_task: (disk_end_bytes as f64 - disk_warm_bytes as f64) / tasks_after_warm,
        minutes_to_count_cap: DEFAULT_RESULT_LIMIT as f64 / tasks_per_s / 60.0,
    })
}
