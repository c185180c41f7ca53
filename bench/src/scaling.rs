//! Part 9: how dispatch cost grows with the work around it (issue 14), not
//! one point: throughput and planner CPU per task
//! - with 1, 4, 16 and 64 workers (16 slots in all where the count allows),
//! - beside 0, 1,000 and 10,000 more registered workers offering an op no
//!   task asks for (idle, never dispatched to; their registration is timed),
//! - with 0 and 1,000,000 tasks already queued for an op no worker offers
//!   (they stay queued throughout, as a backlog for a missing flavor would);
//!
//! and single-task latency with 0 and 100,000 such tasks queued.
//!
//! Each cell is a fresh durable planner with its own workers. `--quick`
//! shrinks every count (the labels say what ran).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use wire::planner::{Accepted, NewTask};

use crate::Plan;
use crate::e2e::{self, Latency};
use crate::report::{Row, Verdict, row};
use crate::system;

/// The op of the backlog: no worker offers it, so it stays queued.
const PARKED_OP: &str = "parked";
/// Slots in all, shared out among the workers of a cell where they divide.
const TOTAL_SLOTS: u32 = 16;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Scaling {
    pub by_workers: Vec<Cell>,
    pub by_idle_workers: Vec<Cell>,
    pub by_backlog: Vec<Cell>,
    pub latency_by_backlog: Vec<LatencyCell>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Cell {
    pub workers: u32,
    pub slots: u32,
    pub idle_workers: u64,
    pub backlog: u64,
    pub tasks: u64,
    pub tasks_per_s: f64,
    pub planner_cpu_us: f64,
    /// Seconds to register the idle workers (16 connections at once).
    pub register_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyCell {
    pub backlog: u64,
    pub latency: Latency,
}

/// The sizes of this part, from the run's plan.
struct Sizes {
    tasks: u64,
    worker_counts: Vec<u32>,
    idle: Vec<u64>,
    backlog: u64,
    latency_backlog: u64,
    latency_samples: u64,
}

impl Sizes {
    fn of(plan: &Plan) -> Self {
        if plan.quick {
            Self {
                tasks: 2_000,
                worker_counts: vec![1, 4, 16],
                idle: vec![500],
                backlog: 20_000,
                latency_backlog: 20_000,
                latency_samples: 100,
            }
        } else {
            Self {
                tasks: 50_000,
                worker_counts: vec![1, 4, 16, 64],
                idle: vec![1_000, 10_000],
                backlog: 1_000_000,
                latency_backlog: 100_000,
                latency_samples: 2_000,
            }
        }
    }
}

struct Spec {
    workers: u32,
    idle: u64,
    backlog: u64,
    tasks: u64,
    latency_samples: u64,
}

pub async fn measure(plan: &Plan) -> Result<Scaling> {
    let sizes = Sizes::of(plan);
    let spec = |workers, idle, backlog, latency_samples| Spec {
        workers,
        idle,
        backlog,
        tasks: sizes.tasks,
        latency_samples,
    };
    let mut scaling = Scaling::default();
    for &workers in &sizes.worker_counts {
        // The 4-worker cell is also the baseline of the other two series,
        // and gives the latency with nothing queued.
        let samples = if workers == 4 {
            sizes.latency_samples
        } else {
            0
        };
        let (cell, latency) = run(plan, spec(workers, 0, 0, samples)).await?;
        if let Some(latency) = latency {
            scaling.latency_by_backlog.push(LatencyCell {
                backlog: 0,
                latency,
            });
        }
        eprintln!("bench:   {}", describe(&cell));
        scaling.by_workers.push(cell);
    }
    let baseline = scaling
        .by_workers
        .iter()
        .find(|c| c.workers == 4)
        .cloned()
        .context("the 4-worker cell")?;
    scaling.by_idle_workers.push(baseline.clone());
    for &idle in &sizes.idle {
        let (cell, _) = run(plan, spec(4, idle, 0, 0)).await?;
        eprintln!("bench:   {}", describe(&cell));
        scaling.by_idle_workers.push(cell);
    }
    scaling.by_backlog.push(baseline);
    let (cell, _) = run(plan, spec(4, 0, sizes.backlog, 0)).await?;
    eprintln!("bench:   {}", describe(&cell));
    scaling.by_backlog.push(cell);
    let (_, latency) = run(
        plan,
        Spec {
            tasks: 0,
            ..spec(4, 0, sizes.latency_backlog, sizes.latency_samples)
        },
    )
    .await?;
    scaling.latency_by_backlog.push(LatencyCell {
        backlog: sizes.latency_backlog,
        latency: latency.context("the latency with a backlog")?,
    });
    Ok(scaling)
}

fn describe(cell: &Cell) -> String {
    format!(
        "{} × {} slots, {} idle, {} queued: {:.0} tasks/s, planner {:.1} µs/task",
        cell.workers,
        cell.slots,
        cell.idle_workers,
        cell.backlog,
        cell.tasks_per_s,
        cell.planner_cpu_us
    )
}

/// One cell on a fresh planner: registers the idle workers, queues the
/// backlog, then measures throughput (unless `tasks` is 0) and latency
/// (unless `latency_samples` is 0).
async fn run(plan: &Plan, spec: Spec) -> Result<(Cell, Option<Latency>)> {
    let dir = tempfile::Builder::new()
        .prefix("bench-scaling-")
        .tempdir()?;
    let queue_limit = (spec.backlog + spec.tasks + 200_000).to_string();
    let mut planner = system::start_planner(
        dir.path(),
        "planner",
        &[
            // The idle registrations never heartbeat; the backlog never expires.
            ("HEARTBEAT_TIMEOUT_MS", "3600000"),
            ("UNOFFERED_OP_TIMEOUT_MS", "0"),
            ("QUEUE_LIMIT", &queue_limit),
        ],
    )
    .await?;
    let url = planner.url();
    let slots = (TOTAL_SLOTS / spec.workers).max(1);
    let mut workers = Vec::new();
    let outcome = async {
        let client = system::client()?;
        let started = Instant::now();
        let token = system::token()?;
        launcher::idle::register(&client, &url, Some(&token), "idle", spec.idle).await?;
        let register_secs = started.elapsed().as_secs_f64();
        queue_backlog(&client, &url, spec.backlog).await?;
        for i in 1..=spec.workers {
            workers
                .push(system::start_worker(dir.path(), &url, &format!("bench-{i}"), slots).await?);
        }
        system::wait_for_workers(&client, &url, spec.workers as usize + spec.idle as usize).await?;
        let mut cell = Cell {
            workers: spec.workers,
            slots,
            idle_workers: spec.idle,
            backlog: spec.backlog,
            tasks: spec.tasks,
            register_secs,
            ..Cell::default()
        };
        if spec.tasks > 0 {
            let run = Plan {
                workers: spec.workers,
                slots,
                tasks: spec.tasks,
                ..plan.clone()
            };
            let throughput = e2e::throughput(&run, &client, &planner, &workers).await?;
            cell.tasks_per_s = throughput.tasks_per_s;
            cell.planner_cpu_us = throughput.planner_cpu_us;
        }
        let latency = if spec.latency_samples > 0 {
            let run = Plan {
                latency_samples: spec.latency_samples,
                ..plan.clone()
            };
            Some(e2e::latency(&run, &client, &url).await?)
        } else {
            None
        };
        Ok((cell, latency))
    }
    .await;
    system::stop_all(&mut planner, &mut workers).await;
    if outcome.is_err() {
        eprintln!("bench: logs of the failed run: {}", dir.keep().display());
    }
    outcome
}

/// `n` tasks of [`PARKED_OP`], in submissions of 50,000.
async fn queue_backlog(client: &reqwest::Client, url: &str, n: u64) -> Result<()> {
    let mut queued = 0;
    while queued < n {
        let batch: Vec<NewTask> = (queued..n.min(queued + 50_000))
            .map(|i| NewTask {
                op: PARKED_OP.into(),
                args: vec![i as i64, 1],
                ..NewTask::default()
            })
            .collect();
        let response = client
            .post(format!("{url}/tasks"))
            .json(&batch)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .context("queueing the backlog")?;
        if response.status() != reqwest::StatusCode::ACCEPTED {
            bail!(
                "queueing the backlog: HTTP {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let accepted: Accepted = response.json().await?;
        queued += accepted.ids.len() as u64;
    }
    Ok(())
}

pub fn rows(s: &Scaling) -> Vec<Row> {
    let mut rows = Vec::new();
    let cell_row = |label: String, cell: &Cell, target: &'static str, verdict| {
        row(
            "9",
            label,
            format!(
                "{:.0} tasks/s, planner {:.1} µs/task",
                cell.tasks_per_s, cell.planner_cpu_us
            ),
            target,
            verdict,
        )
    };
    for cell in &s.by_workers {
        rows.push(cell_row(
            format!(
                "{} worker{} × {} slots, {} tasks",
                cell.workers,
                if cell.workers == 1 { "" } else { "s" },
                cell.slots,
                cell.tasks
            ),
            cell,
            "",
            Verdict::Info,
        ));
    }
    let base = s.by_idle_workers.first().map_or(0.0, |c| c.tasks_per_s);
    for cell in s.by_idle_workers.iter().skip(1) {
        let ratio = if base > 0.0 {
            cell.tasks_per_s / base
        } else {
            0.0
        };
        let label = format!(
            "4 workers + {} idle other-op workers ({:.0} % of none)",
            cell.idle_workers,
            ratio * 100.0
        );
        let (target, verdict) = if cell.idle_workers >= 10_000 {
            (">= 90 % of none", Verdict::of(ratio >= 0.9))
        } else {
            ("", Verdict::Info)
        };
        rows.push(cell_row(label, cell, target, verdict));
        let (target, verdict) = if cell.idle_workers >= 10_000 {
            ("< 5 s", Verdict::of(cell.register_secs < 5.0))
        } else {
            ("", Verdict::Info)
        };
        rows.push(row(
            "9",
            format!("  registering the {} idle workers", cell.idle_workers),
            format!("{:.2} s", cell.register_secs),
            target,
            verdict,
        ));
    }
    for cell in s.by_backlog.iter().skip(1) {
        rows.push(cell_row(
            format!("4 workers, {} tasks of another op queued", cell.backlog),
            cell,
            "",
            Verdict::Info,
        ));
    }
    for cell in &s.latency_by_backlog {
        rows.push(row(
            "9",
            format!("single task ?wait=true, {} queued: p50 / p99", cell.backlog),
            format!("{:.0} / {:.0} µs", cell.latency.p50_us, cell.latency.p99_us),
            "",
            Verdict::Info,
        ));
    }
    rows
}
