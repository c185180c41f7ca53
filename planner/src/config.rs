//! The planner's command line: `planner` (or `planner serve`) runs the
//! service; `planner local` runs a whole system on this machine.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the planner service (the default).
    Serve,
    /// Run a planner and workers as local processes, submit tasks, check every result.
    Local(crate::local::LocalArgs),
}

#[derive(Args, Debug, Clone)]
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
    /// `durable` (the default) keeps tasks across restarts; `memory` does not.
    #[arg(long, env = "STORE", default_value = "durable", value_parser = ["durable", "memory"])]
    pub store: String,
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
    /// Finished tasks kept in memory for queries (all stay in the store).
    #[arg(long, env = "RETAIN_FINISHED", default_value_t = 100_000)]
    pub retain_finished: usize,
    /// Enqueue this many random add/mul tasks at start, as in the exercise.
    #[arg(long, env = "TASKS", default_value_t = 0)]
    pub tasks: usize,
}
