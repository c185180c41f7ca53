//! Parts 2-4 (and the worker half of 6): the real planner, in its default
//! durable configuration, with general workers that do no artificial work.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::json;
use wire::planner::{Accepted, NewTask, Stats, TaskStatus, TaskView};

use crate::Plan;
use crate::system::{self, count, cpu_time};
use launcher::process::Service;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Throughput {
    pub workers: u32,
    pub slots: u32,
    pub tasks: u64,
    pub batch: u64,
    /// First submit to the last batch being sent (every earlier one
    /// acknowledged). Well below `secs` means tasks stayed queued through the
    /// run: submitting did not pace it.
    pub submit_secs: f64,
    /// First submit to the last completion.
    pub secs: f64,
    pub tasks_per_s: f64,
    pub ratio_to_ceiling: f64,
    /// Results checked against native arithmetic (the last batch's).
    pub checked: u64,
    /// CPU time per task during the run, in µs.
    pub planner_cpu_us: f64,
    pub workers_cpu_us: f64,
    /// This benchmark's own (submitting, polling /stats).
    pub client_cpu_us: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Gap {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub struct Measured {
    pub throughput: Throughput,
    pub latency: Latency,
    pub gap: Gap,
    pub worker_idle_rss_kib: u64,
    /// The same single-task latency with `STORE=memory`: what durability
    /// (an fsync before a submission is acknowledged) adds.
    pub memory_latency: Latency,
}

pub async fn measure(plan: &Plan) -> Result<Measured> {
    let dir = tempfile::Builder::new().prefix("bench-e2e-").tempdir()?;
    let mut planner = system::start_planner(dir.path(), "planner", &[]).await?;
    let url = planner.url();
    let mut workers = Vec::new();
    let outcome = async {
        for i in 1..=plan.workers {
            workers.push(
                system::start_worker(dir.path(), &url, &format!("bench-{i}"), plan.slots).await?,
            );
        }
        let client = system::client()?;
        system::wait_for_workers(&client, &url, plan.workers as usize).await?;
        // Idle: registered, heartbeating, nothing run yet.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut worker_idle_rss_kib = 0;
        for worker in &workers {
            worker_idle_rss_kib = worker_idle_rss_kib.max(system::rss_kib(worker)?);
        }
        let throughput = throughput(plan, &client, &planner, &workers).await?;
        // Read right after the run: the gaps of dispatches made while tasks
        // were queued, not those of the one-at-a-time phase below.
        let gap = system::stats(&client, &url).await?.dispatch_gap_us;
        let gap = Gap {
            count: gap.count,
            p50_us: gap.p50 as f64,
            p99_us: gap.p99 as f64,
            max_us: gap.max as f64,
        };
        let latency = latency(plan, &client, &url).await?;
        Ok::<_, anyhow::Error>(Measured {
            throughput,
            latency,
            gap,
            worker_idle_rss_kib,
            memory_latency: Latency::default(),
        })
    }
    .await;
    system::stop_all(&mut planner, &mut workers).await;
    if outcome.is_err() {
        eprintln!("bench: logs of the failed run: {}", dir.keep().display());
        return outcome;
    }
    let memory_latency = memory_latency(plan).await?;
    outcome.map(|measured| Measured {
        memory_latency,
        ..measured
    })
}

/// Single-task latency against a planner with `STORE=memory` and one worker.
async fn memory_latency(plan: &Plan) -> Result<Latency> {
    let dir = tempfile::Builder::new()
        .prefix("bench-memory-store-")
        .tempdir()?;
    let mut planner =
        system::start_planner(dir.path(), "planner-memory", &[("STORE", "memory")]).await?;
    let url = planner.url();
    let mut workers = Vec::new();
    let outcome = async {
        workers.push(system::start_worker(dir.path(), &url, "bench-memory-1", plan.slots).await?);
        let client = system::client()?;
        system::wait_for_workers(&client, &url, 1).await?;
        latency(plan, &client, &url).await
    }
    .await;
    system::stop_all(&mut planner, &mut workers).await;
    if outcome.is_err() {
        eprintln!("bench: logs of the failed run: {}", dir.keep().display());
    }
    outcome
}

pub(crate) fn task(i: u64) -> NewTask {
    let op = if i.is_multiple_of(2) { "add" } else { "mul" };
    NewTask {
        op: op.into(),
        args: vec![(i % 100_000) as i64, 7],
        ..NewTask::default()
    }
}

fn expected(view: &TaskView) -> Option<i64> {
    match (view.op.as_str(), view.args.as_slice()) {
        ("add", [a, b]) => a.checked_add(*b),
        ("mul", [a, b]) => a.checked_mul(*b),
        _ => None,
    }
}

pub(crate) async fn throughput(
    plan: &Plan,
    client: &reqwest::Client,
    planner: &Service,
    workers: &[Service],
) -> Result<Throughput> {
    let url = &planner.url();
    let cpu = || -> Result<[Duration; 3]> {
        let mut workers_cpu = Duration::ZERO;
        for worker in workers {
            workers_cpu += cpu_time(worker.pid())?;
        }
        Ok([cpu_time(planner.pid())?, workers_cpu, cpu_time(None)?])
    };
    let cpu_before = cpu()?;
    let before = system::stats(client, url).await?;
    let finished_before = finished(&before);
    let started = Instant::now();
    let deadline = started + plan.phase_timeout;
    let mut submitted = 0;
    // The last batch waits for its tasks (`?wait=true`): dispatch is FIFO,
    // so its answer comes with the last completions, without polling the
    // planner while it works. /stats then confirms every task finished.
    let mut last_views = Vec::new();
    let mut submit_secs = 0.0;
    while submitted < plan.tasks {
        let n = plan.batch.min(plan.tasks - submitted);
        let last = submitted + n == plan.tasks;
        let batch: Vec<NewTask> = (submitted..submitted + n).map(task).collect();
        if last {
            submit_secs = started.elapsed().as_secs_f64();
        }
        let query = if last {
            format!("?wait=true&timeout_ms={}", plan.phase_timeout.as_millis())
        } else {
            String::new()
        };
        let response = client
            .post(format!("{url}/tasks{query}"))
            .json(&batch)
            .send()
            .await
            .context("submitting a batch")?;
        let status = response.status();
        let expected = if last {
            reqwest::StatusCode::OK
        } else {
            reqwest::StatusCode::ACCEPTED
        };
        if status != expected {
            bail!(
                "batch answered HTTP {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        if last {
            last_views = response
                .json::<Vec<TaskView>>()
                .await
                .context("reading the last batch")?;
            if last_views.len() as u64 != n {
                bail!("{} tasks answered for {n}", last_views.len());
            }
        } else {
            let accepted: Accepted = response.json().await.context("reading the accepted ids")?;
            if accepted.ids.len() as u64 != n {
                bail!("{} ids for {n} tasks", accepted.ids.len());
            }
        }
        submitted += n;
        if Instant::now() > deadline {
            bail!("submitting took longer than {:?}", plan.phase_timeout);
        }
    }
    let stats = loop {
        let stats = system::stats(client, url).await?;
        if finished(&stats) - finished_before >= plan.tasks {
            break stats;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} tasks finished within {:?}",
                finished(&stats) - finished_before,
                plan.tasks,
                plan.phase_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu()?;
    let per_task =
        |i: usize| (cpu_after[i] - cpu_before[i]).as_secs_f64() * 1e6 / plan.tasks as f64;
    let failed = count(&stats, "failed") - count(&before, "failed");
    if failed > 0 {
        bail!("{failed} tasks failed in the throughput run");
    }
    let checked = check_results(&last_views)?;
    Ok(Throughput {
        workers: plan.workers,
        slots: plan.slots,
        tasks: plan.tasks,
        batch: plan.batch,
        submit_secs,
        secs,
        tasks_per_s: plan.tasks as f64 / secs,
        ratio_to_ceiling: 0.0,
        checked,
        planner_cpu_us: per_task(0),
        workers_cpu_us: per_task(1),
        client_cpu_us: per_task(2),
    })
}

fn finished(stats: &Stats) -> u64 {
    count(stats, "done")
        + count(stats, "failed")
        + count(stats, "cancelled")
        + count(stats, "expired")
}

/// Checks results against native arithmetic.
fn check_results(views: &[TaskView]) -> Result<u64> {
    for view in views {
        if view.status != TaskStatus::Done || view.result != expected(view) {
            bail!(
                "task {} {}{:?}: {} {:?}, expected {:?}",
                view.id,
                view.op,
                view.args,
                view.status.as_str(),
                view.result,
                expected(view)
            );
        }
    }
    Ok(views.len() as u64)
}

pub(crate) async fn latency(plan: &Plan, client: &reqwest::Client, url: &str) -> Result<Latency> {
    let deadline = Instant::now() + plan.phase_timeout;
    let warmup = (plan.latency_samples / 10).clamp(10, 200);
    let mut histogram = crate::report::histogram();
    for i in 0..warmup + plan.latency_samples {
        let body = json!({"op": "add", "args": [i as i64, 1]});
        let started = Instant::now();
        let response = client
            .post(format!("{url}/tasks?wait=true&timeout_ms=10000"))
            .json(&body)
            .send()
            .await
            .context("submitting a single task")?;
        let status = response.status();
        let view: TaskView = response.json().await.context("reading the finished task")?;
        let elapsed = started.elapsed();
        if status != reqwest::StatusCode::OK
            || view.status != TaskStatus::Done
            || view.result != Some(i as i64 + 1)
        {
            bail!("single task {i}: HTTP {status}, {view:?}");
        }
        if i >= warmup {
            histogram.saturating_record(crate::report::micros(elapsed));
        }
        if Instant::now() > deadline {
            bail!(
                "the latency phase took longer than {:?}",
                plan.phase_timeout
            );
        }
    }
    Ok(Latency {
        samples: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5) as f64,
        p99_us: histogram.value_at_quantile(0.99) as f64,
        max_us: histogram.max() as f64,
    })
}
