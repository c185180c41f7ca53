//! The planner's settings: every one an environment variable and a flag.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "planner",
    version,
    about = "Accepts compute tasks and dispatches them to workers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
    #[command(flatten)]
    pub log: serve::logging::LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the planner service (the default; the word is accepted so that
    /// container commands can name it).
    Serve,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// SQLite under DATA_DIR: tasks survive restarts.
    Durable,
    /// Nothing survives a restart.
    Memory,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServeConfig {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Interface to listen on.
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    pub bind: String,
    /// Where accepted tasks and results are kept (SQLite).
    #[arg(long, env = "DATA_DIR", default_value = "planner-data")]
    pub data_dir: PathBuf,
    /// Where tasks are kept.
    #[arg(long, env = "STORE", value_enum, default_value_t = StoreKind::Durable)]
    pub store: StoreKind,
    /// Shared bearer token for workers and module uploads; unset = no auth.
    #[arg(long, env = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Require the token for submitting and cancelling tasks too.
    #[arg(long, env = "SUBMIT_REQUIRES_TOKEN", default_value_t = false)]
    pub submit_requires_token: bool,
    /// Most tasks waiting at once; past it submissions get 503 with Retry-After.
    #[arg(long, env = "QUEUE_LIMIT", default_value_t = 1_000_000)]
    pub queue_limit: usize,
    /// Dispatches per task before it fails (worker deaths, timeouts).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// A worker silent this long (ms) is dropped and its tasks re-queued.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_timeout_ms: u64,
    /// Longest wait for a worker's answer to one task (ms).
    #[arg(long, env = "DISPATCH_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dispatch_timeout_ms: u64,
    /// On SIGTERM, how long open connections get to finish (ms) before the
    /// planner flushes its store and exits anyway. Keep it below the pod's
    /// terminationGracePeriodSeconds (the chart's default is 30 s).
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Finished tasks kept in memory for queries (all stay in the store).
    #[arg(long, env = "RETAIN_FINISHED", default_value_t = 100_000)]
    pub retain_finished: usize,
    /// Enqueue this many random add/mul tasks when the store is fresh, as in
    /// the exercise.
    #[arg(long, env = "TASKS", default_value_t = 0)]
    pub tasks: usize,
}
