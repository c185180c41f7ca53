//! `bench`: the figures of issue 6, measured side by side in one run.
//!
//! 1. the ceiling: round trips/s of a trivial axum handler driven by a
//!    keep-alive reqwest client at the planner's dispatch concurrency;
//! 2. end-to-end throughput of the real planner (durable) and workers, and
//!    its ratio to (1);
//! 3. single-task latency (`?wait=true`, one at a time);
//! 4. the dispatch gap, from the planner's own `/stats`;
//! 5. the cost of one sandboxed WASM call (fresh store, limits set) against
//!    the same arithmetic done natively;
//! 6. memory: worker idle RSS, planner RSS per queued task;
//! 7. the steady state: RSS and disk growth per hour of full-speed load with
//!    the default retention;
//! 8. the PostgreSQL store with one and with three planners in front of the
//!    same workers: throughput, CPU per task (planners and database),
//!    single-task latency.
//! 9. scaling: throughput and planner CPU per task with 1 to 64 workers,
//!    beside up to 10,000 idle registered workers, with up to 1,000,000
//!    tasks queued; single-task latency with and without a backlog.
//!
//! Everything runs on 127.0.0.1; every load loop is bounded in count and time.

mod ceiling;
mod e2e;
mod machine;
mod memory;
mod report;
mod scaling;
mod shared_store;
mod steady;
mod system;
mod wasm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::report::Figures;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Measures dispatch throughput against the loopback HTTP ceiling, latency, dispatch gap, WASM call cost and memory, in one run",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The trivial handler the ceiling is measured against (started by the
    /// benchmark itself as a separate process, like a worker).
    #[command(hide = true)]
    EchoServer,
}

/// Sizes default to a full run of about 3 minutes on a 2-core machine;
/// `--quick` picks small ones (a smoke run of well under a minute), and any
/// size given explicitly wins over both.
#[derive(clap::Args, Debug)]
struct Args {
    /// Smoke mode: small sizes, short durations.
    #[arg(long)]
    quick: bool,
    /// Workers in the end-to-end run [default: 2].
    #[arg(long)]
    workers: Option<u32>,
    /// Slots per worker [default: 4]. The ceiling uses workers × slots
    /// concurrent requests, the most the planner has in flight.
    #[arg(long)]
    slots: Option<u32>,
    /// Tasks in the end-to-end throughput run [default: 200000; quick: 5000].
    #[arg(long)]
    tasks: Option<u64>,
    /// Tasks per submission [default: 1000].
    #[arg(long)]
    batch: Option<u64>,
    /// Seconds the ceiling is measured for [default: 10; quick: 1].
    #[arg(long)]
    ceiling_secs: Option<f64>,
    /// Single tasks submitted one at a time with `?wait=true` [default: 5000; quick: 200].
    #[arg(long)]
    latency_samples: Option<u64>,
    /// Tasks queued on a planner with no workers, for its RSS per task
    /// [default: 1000000; quick: 100000].
    #[arg(long)]
    queued: Option<u64>,
    /// Tasks in the steady-state run (RSS and disk growth per hour, measured
    /// over the second half) [default: 1000000; quick: 40000].
    #[arg(long)]
    steady_tasks: Option<u64>,
    /// Seconds each WASM cost loop runs for [default: 3; quick: 0.5].
    #[arg(long)]
    wasm_secs: Option<f64>,
    /// Also write the results as a markdown section to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip part 8 (the PostgreSQL store), e.g. where PostgreSQL is not installed.
    #[arg(long)]
    no_postgres: bool,
    /// Skip part 9 (scaling with workers, idle workers and backlog).
    #[arg(long)]
    no_scaling: bool,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 300)]
    phase_timeout_s: u64,
}

/// The sizes of one run, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub workers: u32,
    pub slots: u32,
    pub tasks: u64,
    pub batch: u64,
    pub ceiling: Duration,
    pub latency_samples: u64,
    pub queued: u64,
    pub steady_tasks: u64,
    pub wasm: Duration,
    pub phase_timeout: Duration,
    pub postgres: bool,
    pub scaling: bool,
}

impl Plan {
    fn from_args(args: &Args) -> Result<Self> {
        let q = args.quick;
        let pick = |given: Option<f64>, full: f64, quick: f64| {
            given.unwrap_or(if q { quick } else { full })
        };
        let plan = Self {
            quick: q,
            workers: args.workers.unwrap_or(2).max(1),
            slots: args.slots.unwrap_or(4).max(1),
            tasks: args.tasks.unwrap_or(if q { 5_000 } else { 200_000 }).max(1),
            batch: args.batch.unwrap_or(1_000).clamp(1, 100_000),
            ceiling: secs(pick(args.ceiling_secs, 10.0, 1.0))?,
            latency_samples: args
                .latency_samples
                .unwrap_or(if q { 200 } else { 5_000 })
                .max(1),
            queued: args
                .queued
                .unwrap_or(if q { 100_000 } else { 1_000_000 })
                .max(1),
            steady_tasks: args
                .steady_tasks
                .unwrap_or(if q { 40_000 } else { 1_000_000 })
                .max(40_000),
            wasm: secs(pick(args.wasm_secs, 3.0, 0.5))?,
            phase_timeout: Duration::from_secs(args.phase_timeout_s.max(1)),
            postgres: !args.no_postgres,
            scaling: !args.no_scaling,
        };
        Ok(plan)
    }

    /// Requests in flight at once: every slot of every worker busy.
    pub fn concurrency(&self) -> u32 {
        self.workers * self.slots
    }
}

fn secs(value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value.clamp(0.05, 600.0)).context("a duration in seconds")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::EchoServer) => ceiling::serve_echo().await,
        None => run(cli.args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let plan = Plan::from_args(&args)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = machine::describe();
    println!("{}", machine.one_line());
    println!(
        "plan: {}{}",
        report::plan_summary(&plan),
        if plan.quick { " (quick)" } else { "" }
    );
    let started = Instant::now();
    let mut figures = Figures {
        load_start: machine::load_average(),
        ..Figures::default()
    };

    progress("1/9 ceiling: trivial axum handler, keep-alive reqwest client");
    figures.ceiling = ceiling::measure(&plan)
        .await
        .context("measuring the ceiling")?;

    progress("2-4/9 end-to-end: planner (durable) + workers");
    let e2e = e2e::measure(&plan).await.context("the end-to-end run")?;
    figures.throughput = e2e.throughput;
    if figures.ceiling.round_trips_per_s > 0.0 {
        figures.throughput.ratio_to_ceiling =
            figures.throughput.tasks_per_s / figures.ceiling.round_trips_per_s;
    }
    figures.latency = e2e.latency;
    figures.memory_latency = e2e.memory_latency;
    figures.gap = e2e.gap;
    figures.worker_idle_rss_kib = e2e.worker_idle_rss_kib;

    progress("5/9 WASM cost per call");
    figures.wasm = wasm::measure(&plan)
        .await
        .context("measuring the WASM call cost")?;

    progress("6/9 planner memory with queued tasks");
    figures.planner_memory = memory::measure(&plan)
        .await
        .context("measuring the planner's memory")?;

    progress("7/9 steady state: default retention, full speed");
    figures.steady = steady::measure(&plan)
        .await
        .context("measuring the steady state")?;
    if plan.postgres {
        progress("8/9 PostgreSQL store: 1 and 3 planners, the same workers");
        figures.shared_store = Some(
            shared_store::measure(&plan)
                .await
                .context("measuring the PostgreSQL store (--no-postgres skips it)")?,
        );
    }
    if plan.scaling {
        progress("9/9 scaling: workers, idle workers, backlog");
        figures.scaling = Some(
            scaling::measure(&plan)
                .await
                .context("measuring how dispatch scales (--no-scaling skips it)")?,
        );
    }
    figures.wall_secs = started.elapsed().as_secs_f64();
    figures.load_end = machine::load_average();
    println!(
        "\nload average (1 min): {:.2} at the start, {:.2} at the end ({} CPUs)",
        figures.load_start, figures.load_end, machine.cpus
    );

    let rows = report::rows(&figures);
    println!();
    print!("{}", report::table(&rows));
    if let Some(path) = &args.markdown {
        let text = report::markdown(&command, &machine, &plan, &figures, &rows);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("markdown written to {}", path.display());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&figures)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("json written to {}", path.display());
    }
    Ok(())
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}
