//! The command line: every subcommand and flag, declared for clap (which also
//! generates the shell completions from it).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wire::TaskId;
use wire::planner::TaskStatus;

#[derive(Debug, Parser)]
#[command(
    name = "workers",
    version,
    about = "Talk to a workers planner over its HTTP API: submit and follow tasks, watch the fleet, roll out modules.",
    after_help = "Planner and token come from the flags, else the environment (PLANNER, TOKEN, TOKEN_FILE), \
else the config file (--config, WORKERS_CONFIG, or $XDG_CONFIG_HOME/workers/config.toml, \
default ~/.config/workers/config.toml), else http://127.0.0.1:3000 without a token.\n\n\
Exit status: 0 success; 1 the request failed or the planner refused it; 2 bad usage; \
3 a task this command waited for failed or was cancelled."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The planner's base URL (env PLANNER).
    #[arg(long, global = true, value_name = "URL")]
    pub planner: Option<String>,
    /// Bearer token (env TOKEN). Prefer --token-file: flags show in `ps`.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// File holding the bearer token (env TOKEN_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Config file (env WORKERS_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `json` prints what the planner answered, for scripts.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit one task (`submit mul 6 7`) or a batch (`--file tasks.ndjson`, `-` for stdin).
    Submit(Submit),
    /// Show tasks by id.
    Get {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<TaskId>,
    },
    /// List tasks the planner holds in memory, newest first.
    Ls(List),
    /// Wait until tasks have finished; print them.
    Wait {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<TaskId>,
        #[command(flatten)]
        follow: FollowArgs,
    },
    /// Cancel queued tasks: by id, or every one matching a filter.
    Cancel(Cancel),
    /// The fleet: workers by flavor, their ops with digests, busy slots.
    Workers,
    /// Fleet modules (digests, rollout progress); `ops put NAME FILE.wasm` rolls one out.
    Ops {
        #[command(subcommand)]
        action: Option<OpsAction>,
    },
    /// A live view of the planner from its event stream.
    Top(Top),
    /// Print a shell completion script (e.g. `workers completions bash > /etc/bash_completion.d/workers`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct Submit {
    /// The op, e.g. `mul`.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub op: Option<String>,
    /// Its integer arguments.
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<i64>,
    /// Newline-delimited JSON tasks, one `{"op":"mul","args":[6,7]}` per line; `-` reads stdin.
    #[arg(long, short, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Wait for the result(s); exit 3 if a task failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Tasks per request when submitting a batch (the planner takes at most 100,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Give up waiting after this long (e.g. `30s`, `10m`); 0 waits forever.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// How completion is followed: the planner's event stream (with a
    /// catch-up poll when it lags) or polling `GET /tasks?ids=` only.
    #[arg(long, value_enum, default_value_t = FollowBy::Events, hide = true)]
    pub follow_by: FollowBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FollowBy {
    Events,
    Poll,
}

#[derive(Debug, Args)]
pub struct List {
    #[arg(long, value_parser = parse_status)]
    pub status: Option<TaskStatus>,
    #[arg(long)]
    pub op: Option<String>,
    /// Only tasks submitted in this last while (`10m`, `2h`) or since a time (`2025-01-01T12:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Page cursor: tasks with a smaller id than this (the previous page's last id).
    #[arg(long, value_name = "ID")]
    pub before: Option<TaskId>,
    /// Tasks per page (the planner caps it at 10,000).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Follow the cursor through every page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct Cancel {
    /// Tasks to cancel.
    #[arg(value_name = "ID", conflicts_with_all = ["status", "op"], required_unless_present_any = ["status", "op"])]
    pub ids: Vec<TaskId>,
    /// Cancel every task with this status (only `queued` can be cancelled).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<TaskStatus>,
    /// Cancel every queued task of this op.
    #[arg(long)]
    pub op: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OpsAction {
    /// Roll a module out to every worker offering the op; shows each worker's answer
    /// and waits until the fleet runs it.
    Put {
        name: String,
        file: PathBuf,
        /// How long to wait for every worker to run the new digest.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Debug, Args)]
pub struct Top {
    /// Print one frame and exit.
    #[arg(long, conflicts_with = "frames")]
    pub once: bool,
    /// Print this many frames and exit (plain text, or one JSON object per line).
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,
    /// Time between frames.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
}

fn parse_status(value: &str) -> Result<TaskStatus, String> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|_| {
        format!("`{value}` is not a status: queued, running, done, failed or cancelled")
    })
}
