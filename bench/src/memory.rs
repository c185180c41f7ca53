//! Part 6, the planner half: RSS with many queued tasks and no worker to run
//! them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use wire::planner::NewTask;

use crate::Plan;
use crate::system::{self, count};

/// The planner refuses larger submissions.
const MAX_BATCH: u64 = 100_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PlannerMemory {
    pub queued: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_task: f64,
    pub submit_secs: f64,
}

pub async fn measure(plan: &Plan) -> Result<PlannerMemory> {
    let dir = tempfile::Builder::new().prefix("bench-memory-").tempdir()?;
    // Room for every task of the run, whatever the default QUEUE_LIMIT.
    let limit = plan.queued.to_string();
    let mut planner =
        system::start_planner(dir.path(), "planner-queue", &[("QUEUE_LIMIT", &limit)]).await?;
    let outcome = fill(plan, &planner).await;
    planner.stop(Duration::from_secs(10)).await;
    outcome
}

async fn fill(plan: &Plan, planner: &launcher::process::Service) -> Result<PlannerMemory> {
    let client = system::client()?;
    let url = planner.url();
    // Let start-up allocations settle (and make sure it answers).
    system::stats(&client, &url).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = system::rss_kib(planner)?;
    let started = Instant::now();
    let mut submitted = 0;
    while submitted < plan.queued {
        let n = MAX_BATCH.min(plan.queued - submitted);
        let batch: Vec<NewTask> = (submitted..submitted + n)
            .map(|i| NewTask {
                op: if i.is_multiple_of(2) { "add" } else { "mul" }.into(),
                args: vec![(i % 1000) as i64, 3],
                ..NewTask::default()
            })
            .collect();
        let response = client
            .post(format!("{url}/tasks"))
            .json(&batch)
            .send()
            .await
            .context("submitting a batch")?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "batch refused: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        submitted += n;
        if started.elapsed() > plan.phase_timeout {
            bail!("queueing took longer than {:?}", plan.phase_timeout);
        }
    }
    let submit_secs = started.elapsed().as_secs_f64();
    let stats = system::stats(&client, &url).await?;
    if count(&stats, "queued") != plan.queued {
        bail!(
            "{} tasks queued, expected {}",
            count(&stats, "queued"),
            plan.queued
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after_kib = system::rss_kib(planner)?;
    Ok(PlannerMemory {
        queued: plan.queued,
        rss_before_kib,
        rss_after_kib,
        bytes_per_task: rss_after_kib.saturating_sub(rss_before_kib) as f64 * 1024.0
            / plan.queued as f64,
        submit_secs,
    })
}
