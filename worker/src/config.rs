//! The worker's settings: every one an environment variable and a flag.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Parser;

use crate::work_time::WorkTime;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "worker",
    version,
    about = "Runs WebAssembly operation modules for the planner"
)]
pub struct Config {
    /// Ops this worker offers, comma-separated (its specialization), e.g. `add,mul`.
    #[arg(long, env = "OPS", value_delimiter = ',')]
    pub ops: Option<Vec<String>>,
    /// Exercise compatibility, used when OPS is unset: offer `mul`.
    #[arg(long, env = "MULT", value_parser = clap::builder::BoolishValueParser::new())]
    pub mult: Option<bool>,
    /// Exercise compatibility, used when OPS is unset: offer `add`.
    #[arg(long, env = "ADD", value_parser = clap::builder::BoolishValueParser::new())]
    pub add: Option<bool>,
    /// Directory of `<op>.wasm` components; watched for changes. Ops without a
    /// file there fall back to the modules built into the binary.
    #[arg(long, env = "OPS_DIR")]
    pub ops_dir: Option<PathBuf>,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Interface to listen on: loopback unless told otherwise (the chart
    /// sets 0.0.0.0, as a pod must).
    #[arg(long, env = "BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// URL the planner uses to reach this worker [default: http://127.0.0.1:PORT].
    #[arg(long, env = "ADDRESS")]
    pub address: Option<String>,
    /// The planner's URL.
    #[arg(long, env = "PLANNER", default_value = "http://localhost:3000")]
    pub planner: String,
    /// Tasks run at once; one more is refused with 429 (403 on legacy routes).
    #[arg(long, env = "SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=wire::MAX_SLOTS as i64))]
    pub slots: u32,
    /// Artificial work time per task in ms: a number or a range like `3000-12000`.
    #[arg(long, env = "WORK_MS", default_value = "0")]
    pub work_ms: WorkTime,
    /// Wall-clock deadline of one op call, in ms.
    #[arg(long, env = "OP_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub op_timeout_ms: u64,
    /// Memory cap of one op call, in MiB.
    #[arg(long, env = "OP_MEMORY_MB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub op_memory_mb: u32,
    /// Authentication: the planner's token (`TOKEN`, or `TOKEN_FILE`, e.g.
    /// the planner's `DATA_DIR/token`), required on this worker's task and
    /// module routes and presented to the planner; `AUTH=off` for none.
    #[command(flatten)]
    pub auth: serve::auth::AuthArgs,
    /// This worker's identity at the planner [default: hostname-port].
    #[arg(long, env = "WORKER_ID")]
    pub id: Option<String>,
    /// Interval between heartbeats to the planner, in ms.
    #[arg(long, env = "HEARTBEAT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub heartbeat_ms: u64,
    /// `off`: take tasks only as one HTTP request each (`POST /tasks`), never
    /// opening the persistent dispatch channel to the planner.
    #[arg(long, env = "CHANNEL", value_enum, default_value_t = ChannelMode::On)]
    pub channel: ChannelMode,
    #[command(flatten)]
    pub log: serve::logging::LogArgs,
    #[command(flatten)]
    pub connections: serve::http::ConnectionLimits,
}

/// `CHANNEL`: whether tasks may come over the persistent dispatch channel.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelMode {
    /// Open the channel once registered (the default); per-task HTTP keeps
    /// working alongside it.
    #[default]
    On,
    /// Per-task HTTP only.
    Off,
}

impl Config {
    /// The ops to load at start: `OPS`, else the exercise's `MULT`/`ADD` (both default on).
    pub fn selected_ops(&self) -> Result<Vec<String>> {
        let ops: Vec<String> = match &self.ops {
            Some(list) => list
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => {
                let mut ops = Vec::new();
                if self.add.unwrap_or(true) {
                    ops.push("add".to_string());
                }
                if self.mult.unwrap_or(true) {
                    ops.push("mul".to_string());
                }
                ops
            }
        };
        if ops.is_empty() {
            bail!("no ops selected: set OPS (e.g. OPS=add,mul)");
        }
        for op in &ops {
            if !wire::is_valid_op_name(op) {
                bail!("invalid op name `{op}` in OPS: use lowercase letters, digits, `-` and `_`");
            }
        }
        Ok(ops)
    }

    pub fn worker_id(&self, port: u16) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{port}")
        })
    }

    pub fn advertised_url(&self, port: u16) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"))
            .trim_end_matches('/')
            .to_string()
    }
}
