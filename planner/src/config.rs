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
    /// PostgreSQL at DATABASE_URL: any number of planner replicas may share it.
    Postgres,
}

#[derive(clap::Args, Clone)]
pub struct ServeConfig {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Interface to listen on: loopback unless told otherwise (the chart
    /// sets 0.0.0.0, as a pod must).
    #[arg(long, env = "BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Where accepted tasks and results are kept (SQLite).
    #[arg(long, env = "DATA_DIR", default_value = "planner-data")]
    pub data_dir: PathBuf,
    /// Where tasks are kept.
    #[arg(long, env = "STORE", value_enum, default_value_t = StoreKind::Durable)]
    pub store: StoreKind,
    /// The PostgreSQL database for `--store postgres`, as a URL
    /// (postgres://user:password@host:port/database?sslmode=require).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "database_url_file"
    )]
    pub database_url: Option<String>,
    /// A file holding DATABASE_URL (a mounted Kubernetes Secret).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// How long (ms) to keep trying to reach the database at start before
    /// giving up; `/readyz` answers 503 meanwhile.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_MS", default_value_t = 60_000)]
    pub database_connect_timeout_ms: u64,
    /// With several replicas (`STORE=postgres`): how long (ms) a replica may
    /// go without renewing its lease before the others take its tasks.
    #[arg(long, env = "REPLICA_LEASE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(200..))]
    pub replica_lease_ms: u64,
    /// This planner's own address, for its workers' heartbeats when several
    /// replicas sit behind one Service (`http://POD_IP:3000`). Default: the
    /// listening address, unless that is a wildcard.
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Authentication: `AUTH`, and the worker/admin token (`TOKEN` or
    /// `TOKEN_FILE`; when neither is set, one is generated in
    /// `DATA_DIR/token`). It guards registration, heartbeats, module uploads
    /// and dispatch to workers.
    #[command(flatten)]
    pub auth: serve::auth::AuthArgs,
    /// A token for clients only: accepted (as well as the admin token) on
    /// the routes SUBMIT_REQUIRES_TOKEN and READ_REQUIRES_TOKEN guard, never
    /// on the worker/admin ones.
    #[arg(
        long,
        env = "CLIENT_TOKEN",
        hide_env_values = true,
        conflicts_with = "client_token_file"
    )]
    pub client_token: Option<String>,
    /// A file holding CLIENT_TOKEN (a mounted Kubernetes Secret).
    #[arg(long, env = "CLIENT_TOKEN_FILE")]
    pub client_token_file: Option<PathBuf>,
    /// Require a token (client or admin) for submitting and cancelling tasks too.
    #[arg(long, env = "SUBMIT_REQUIRES_TOKEN", default_value_t = false)]
    pub submit_requires_token: bool,
    /// Require a token (client or admin) for reading tasks, workers, ops,
    /// events, stats and metrics too (`/healthz`, `/readyz`,
    /// `/openapi.json` and the dashboard page itself stay open; the
    /// dashboard's data then needs reads open).
    #[arg(long, env = "READ_REQUIRES_TOKEN", default_value_t = false)]
    pub read_requires_token: bool,
    /// Most tasks waiting at once; past it submissions get 503 with
    /// Retry-After. Each queued task takes about 410 B of memory.
    #[arg(long, env = "QUEUE_LIMIT", default_value_t = 500_000)]
    pub queue_limit: usize,
    /// Dispatches per task before it fails (worker deaths, timeouts).
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// A worker silent this long (ms) is dropped and its tasks re-queued.
    #[arg(long, env = "HEARTBEAT_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_timeout_ms: u64,
    /// A queued task whose op no live worker offers fails after waiting this
    /// long (ms; counted from its submission or the planner's start, the
    /// later): a typo'd op name does not wait forever. 0 waits forever.
    #[arg(long, env = "UNOFFERED_OP_TIMEOUT_MS", default_value_t = 300_000)]
    pub unoffered_op_timeout_ms: u64,
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
    /// How long finished tasks are kept (in the store and in memory), e.g.
    /// `24h`, `30m`, `7days`; `0` keeps them until RESULT_LIMIT deletes them.
    #[arg(long, env = "RESULT_TTL", default_value = "24h", value_parser = parse_ttl)]
    pub result_ttl: std::time::Duration,
    /// Most finished tasks kept in the store: past it the oldest are deleted
    /// whatever their age; `0` for no count cap (SQLite store; the
    /// PostgreSQL store deletes by age only).
    #[arg(long, env = "RESULT_LIMIT", default_value_t = 10_000_000)]
    pub result_limit: u64,
    #[command(flatten)]
    pub connections: serve::http::ConnectionLimits,
    /// The deadline (ms, queue plus run time) of a task submitted without a
    /// `timeout_ms`; past it the task ends `expired` (a running one is
    /// interrupted on its worker). 0: no deadline.
    #[arg(long, env = "TASK_TIMEOUT_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=604_800_000))]
    pub task_timeout_ms: u64,
    /// The wait (ms) before the first retry of a task whose op failed (its
    /// `retries`); each further retry waits twice the previous, at most
    /// 5 minutes.
    #[arg(long, env = "RETRY_BACKOFF_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=300_000))]
    pub retry_backoff_ms: u64,
    /// How long an `Idempotency-Key` is remembered (a repeat within it
    /// queues nothing), e.g. `24h`; never longer than RESULT_TTL when that
    /// is set (a replay must find its tasks). Kept bounded even when
    /// RESULT_TTL is 0: every key a client sends takes a row.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_key_ttl)]
    pub idempotency_ttl: std::time::Duration,
}

fn parse_key_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = parse_ttl(text)?;
    if ttl.is_zero() {
        return Err("must be above 0 (keys must expire; e.g. 24h)".into());
    }
    Ok(ttl)
}

fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    if text.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e} (a duration such as 24h, 90m or 30s)"))
}

impl ServeConfig {
    /// The database URL for the PostgreSQL store: `--database-url`, or the
    /// trimmed contents of `--database-url-file`.
    pub fn database_url(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        if let Some(path) = &self.database_url_file {
            let url = std::fs::read_to_string(path)
                .with_context(|| format!("reading DATABASE_URL_FILE {}", path.display()))?;
            return Ok(url.trim().to_string());
        }
        anyhow::bail!("STORE=postgres needs DATABASE_URL or DATABASE_URL_FILE")
    }
}

// By hand, so that the database URL (which may hold a password) and the
// token never reach a log.
impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("port", &self.port)
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("database_url_file", &self.database_url_file)
            .field("auth", &self.auth)
            .field(
                "client_token",
                &self.client_token.as_ref().map(|_| "<redacted>"),
            )
            .field("client_token_file", &self.client_token_file)
            .field("submit_requires_token", &self.submit_requires_token)
            .field("read_requires_token", &self.read_requires_token)
            .field("queue_limit", &self.queue_limit)
            .field("max_attempts", &self.max_attempts)
            .field("result_ttl", &self.result_ttl)
            .field("result_limit", &self.result_limit)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .finish_non_exhaustive()
    }
}
