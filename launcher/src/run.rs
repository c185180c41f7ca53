//! `scripts/local`: the whole system on this machine, as separate processes.
//!
//! Starts a planner and the requested workers on 127.0.0.1, submits random
//! add/mul tasks (as the exercise does), shows progress, checks every result
//! against its own arithmetic and prints a summary. Exits non-zero unless
//! every task succeeded with the right result.

use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::process::Command;
use wire::TaskId;
use wire::planner::{Accepted, NewTask, Stats};

use crate::process::{self, Service};
use crate::summary;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "launcher",
    version,
    about = "Runs a planner and workers as local processes, submits random tasks, checks every result"
)]
pub struct LocalArgs {
    /// General workers (ops add,mul).
    #[arg(long, default_value_t = 0)]
    pub general: u32,
    /// Workers specialized in mul.
    #[arg(long, default_value_t = 0)]
    pub mul: u32,
    /// Workers specialized in add.
    #[arg(long, default_value_t = 0)]
    pub add: u32,
    /// Random tasks to submit (0 with --keep-running: an idle system to
    /// send work to yourself).
    #[arg(long, default_value_t = 100)]
    pub tasks: usize,
    /// Artificial work time per task (ms): a number or a range like 3000-12000.
    #[arg(long, default_value = "0")]
    pub work_ms: String,
    /// Tasks each worker runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// The planner's port (0 picks a free one).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Start the workers one at a time, this many ms apart, after the tasks
    /// are submitted: workers registering while tasks run.
    #[arg(long)]
    pub stagger_ms: Option<u64>,
    /// Keep everything running after the summary, until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Keep the run directory (logs, the planner's data) after exiting; it is
    /// kept anyway when the run fails, to read why.
    #[arg(long)]
    pub keep_logs: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
}

struct Flavor {
    name: &'static str,
    ops: &'static str,
    count: u32,
}

pub async fn run(args: LocalArgs) -> Result<()> {
    let flavors = [
        Flavor {
            name: "general",
            ops: "add,mul",
            count: args.general,
        },
        Flavor {
            name: "mul",
            ops: "mul",
            count: args.mul,
        },
        Flavor {
            name: "add",
            ops: "add",
            count: args.add,
        },
    ];
    if flavors.iter().all(|f| f.count == 0) {
        bail!("no workers: pass --general N, --mul N and/or --add N");
    }
    if args.tasks > 100_000 {
        bail!("--tasks: at most 100000 in one local run");
    }
    if args.tasks == 0 && !args.keep_running {
        bail!("--tasks 0 only makes sense with --keep-running (an idle system)");
    }
    let worker_bin = process::sibling_binary("worker")?;
    let planner_bin = process::sibling_binary("planner")?;
    let run_dir = tempfile::Builder::new()
        .prefix("workers-local-")
        .tempdir()?;
    let result = run_in(&args, &flavors, &planner_bin, &worker_bin, run_dir.path()).await;
    if args.keep_logs || result.is_err() {
        let kept = run_dir.keep();
        println!("logs kept in {}", kept.display());
    }
    result
}

async fn run_in(
    args: &LocalArgs,
    flavors: &[Flavor],
    planner_bin: &std::path::Path,
    worker_bin: &std::path::Path,
    run_dir: &std::path::Path,
) -> Result<()> {
    let total_workers: u32 = flavors.iter().map(|f| f.count).sum();
    let client = reqwest::Client::new();

    let mut planner_cmd = Command::new(planner_bin);
    planner_cmd
        .arg("serve")
        .env("PORT", args.port.to_string())
        .env("BIND", "127.0.0.1")
        .env("DATA_DIR", run_dir.join("data"))
        .env("HEARTBEAT_TIMEOUT_MS", "3000");
    let mut planner = Service::start("planner", planner_cmd, &run_dir.join("planner.log")).await?;
    let planner_url = planner.url();
    // The planner made its token there before it announced its address; the
    // workers read it from the file, as a Kubernetes Secret would be read.
    let token_file = run_dir.join("data").join("token");
    println!("planner   {planner_url}  (dashboard: {planner_url}/ in a browser)");
    println!("logs      {}", run_dir.display());
    println!(
        "token     {}  (workers and module uploads need it: curl -H \"Authorization: Bearer $(cat {})\" ...)",
        token_file.display(),
        token_file.display()
    );

    let mut launches = Vec::new();
    for flavor in flavors {
        for i in 1..=flavor.count {
            launches.push((format!("{}-{i}", flavor.name), flavor.ops));
        }
    }
    let start_worker = |id: String, ops: &str| {
        let mut cmd = Command::new(worker_bin);
        cmd.env("OPS", ops)
            .env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("PLANNER", &planner_url)
            .env("WORK_MS", &args.work_ms)
            .env("SLOTS", args.slots.to_string())
            .env("WORKER_ID", &id)
            .env("TOKEN_FILE", &token_file);
        let log = run_dir.join(format!("{id}.log"));
        async move { Service::start(&id, cmd, &log).await }
    };

    let mut workers = Vec::new();
    if args.stagger_ms.is_none() {
        for (id, ops) in &launches {
            workers.push(start_worker(id.clone(), ops).await?);
        }
    }
    if args.tasks == 0 {
        println!(
            "{total_workers} workers ready; submit with: curl -d '{{\"op\":\"mul\",\"args\":[6,7]}}' '{planner_url}/tasks?wait=true'"
        );
        println!("running; Ctrl-C to stop");
        for (id, ops) in &launches {
            if args.stagger_ms.is_some() {
                workers.push(start_worker(id.clone(), ops).await?);
            }
        }
        serve::shutdown::signal().await;
        stop_all(&mut workers, &mut planner).await;
        return Ok(());
    }
    let tasks = wire::random::generate(args.tasks);
    let started = Instant::now();
    let expected = submit(&client, &planner_url, &tasks).await?;
    println!(
        "submitted {} tasks to {total_workers} workers",
        expected.len()
    );
    if let Some(gap) = args.stagger_ms {
        for (id, ops) in &launches {
            tokio::time::sleep(Duration::from_millis(gap)).await;
            workers.push(start_worker(id.clone(), ops).await?);
        }
    }

    let outcome = watch_progress(
        &client,
        &planner_url,
        expected.len(),
        Duration::from_secs(args.timeout_s),
    )
    .await;
    let report = summary::collect(&client, &planner_url, &expected, started.elapsed()).await;
    if let Ok(report) = &report {
        report.print();
    }
    if args.keep_running {
        println!("still running; Ctrl-C to stop");
        serve::shutdown::signal().await;
    }
    stop_all(&mut workers, &mut planner).await;
    outcome?;
    let report = report?;
    if report.all_correct() {
        Ok(())
    } else {
        bail!(
            "{} of {} tasks did not succeed with the right result",
            report.bad(),
            report.total()
        )
    }
}

/// SIGTERM to every worker at once (they drain in parallel), then the planner.
async fn stop_all(workers: &mut [Service], planner: &mut Service) {
    for worker in workers.iter() {
        worker.terminate();
    }
    for worker in workers.iter_mut() {
        worker.stop(Duration::from_secs(15)).await;
    }
    planner.stop(Duration::from_secs(15)).await;
}

/// Submits the tasks in one request; returns each id with its expected result.
async fn submit(
    client: &reqwest::Client,
    planner: &str,
    tasks: &[NewTask],
) -> Result<BTreeMap<TaskId, (NewTask, i64)>> {
    let response = client
        .post(format!("{planner}/tasks"))
        .json(tasks)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "the planner refused the tasks: HTTP {}: {}",
            response.status(),
            response.text().await?
        );
    }
    let accepted: Accepted = response.json().await?;
    accepted
        .ids
        .into_iter()
        .zip(tasks)
        .map(|(id, task)| Ok((id, (task.clone(), expected_result(task)?))))
        .collect()
}

fn expected_result(task: &NewTask) -> Result<i64> {
    let [a, b] = task.args[..] else {
        bail!("random tasks have two arguments")
    };
    match task.op.as_str() {
        "add" => a.checked_add(b),
        "mul" => a.checked_mul(b),
        other => bail!("no local arithmetic for op {other}"),
    }
    .context("random tasks never overflow")
}

async fn watch_progress(
    client: &reqwest::Client,
    planner: &str,
    total: usize,
    timeout: Duration,
) -> Result<()> {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} finished  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let deadline = Instant::now() + timeout;
    loop {
        let stats: Stats = client
            .get(format!("{planner}/stats"))
            .send()
            .await?
            .json()
            .await
            .context("reading /stats")?;
        let count = |s: &str| stats.by_status.get(s).copied().unwrap_or(0);
        let finished = count("done") + count("failed") + count("cancelled") + count("expired");
        bar.set_position(finished);
        let workers: u64 = stats.workers_by_flavor.values().sum();
        bar.set_message(format!(
            "running {}, queued {}, workers {workers}",
            count("running"),
            count("queued")
        ));
        if finished as usize >= total {
            bar.finish();
            return Ok(());
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!("timed out after {timeout:?} with {finished}/{total} tasks finished");
        }
        // The bar is for people: a few refreshes a second is plenty.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
