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
3 a task this command waited for failed, was cancelled or expired."
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
    /// Follow a batch submission (its id: `batch` in the submission's answer) until it has finished.
    Batch(Batch),
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
    /// Wait for the result(s); exit 3 if a task failed, was cancelled or expired.
    #[arg(long)]
    pub wait: bool,
    /// Tasks per request when submitting a batch (the planner takes at most 100,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub chunk: u32,
    #[command(flatten)]
    pub controls: Controls,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// The task controls `submit` sets on every task it sends (a file's own
/// fields take precedence).
#[derive(Debug, Clone, Args)]
pub struct Controls {
    /// Deadline from submission, queue plus run time (`30s`, `1500ms`); past
    /// it the task ends `expired`, interrupted if it was running.
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout_ms: Option<u64>,
    /// Run again this many times (at most 10) when the op fails it, with
    /// exponential backoff.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10))]
    pub retries: Option<u64>,
    /// From -10 to 10 (default 0): higher runs first among its op's queued tasks.
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(-10..=10))]
    pub priority: Option<i64>,
    /// Names this submission: repeating it (same key, same tasks) within the
    /// planner's IDEMPOTENCY_TTL answers the first one's ids and runs nothing new.
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    pub idempotency_key: Option<String>,
}

impl Controls {
    pub fn apply(&self, mut task: wire::planner::NewTask) -> wire::planner::NewTask {
        task.timeout_ms = task.timeout_ms.or(self.timeout_ms);
        task.retries = task.retries.or(self.retries);
        task.priority = task.priority.or(self.priority);
        task
    }
}

/// A duration (`30s`, `1500ms`) or plain milliseconds, as the planner's
/// `timeout_ms` (1 ms to 7 days).
fn parse_timeout(value: &str) -> Result<u64, String> {
    let ms = match value.parse::<u64>() {
        Ok(ms) => ms,
        Err(_) => humantime::parse_duration(value)
            .map_err(|e| format!("{e} (a duration such as 30s or 1500ms)"))?
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
    };
    if !(1..=wire::controls::MAX_TIMEOUT_MS).contains(&ms) {
        return Err("from 1ms to 7 days".into());
    }
    Ok(ms)
}

fn parse_key(value: &str) -> Result<String, String> {
    let max = wire::controls::MAX_IDEMPOTENCY_KEY_LEN;
    if value.is_empty() || value.len() > max || value.chars().any(|c| c.is_control()) {
        return Err(format!("1 to {max} bytes, no control characters"));
    }
    Ok(value.to_string())
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
    /// Cancel every task with this status: `queued`, or `running` (their
    /// calls are interrupted on the workers).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<TaskStatus>,
    /// Cancel every queued (or, with `--status running`, running) task of this op.
    #[arg(long)]
    pub op: Option<String>,
}

#[derive(Debug, Args)]
pub struct Batch {
    /// The batch's id (its first task's id).
    #[arg(value_name = "ID")]
    pub id: TaskId,
    /// Print the counts as they are now; do not wait.
    #[arg(long)]
    pub once: bool,
    /// Give up waiting after this long (e.g. `30s`, `10m`); 0 waits forever.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
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
        format!("`{value}` is not a status: queued, running, done, failed, cancelled or expired")
    })
}
