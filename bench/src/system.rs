//! The real planner and worker binaries as processes, and what the benchmark
//! reads off them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use launcher::process::{Service, sibling_binary};
use tokio::process::Command;
use wire::planner::{Stats, WorkersSummary};

/// An HTTP client like the planner's dispatcher: keep-alive, no Nagle.
pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(120))
        .build()
        .context("building the HTTP client")
}

/// A planner in its default (durable) configuration, its data in `dir`;
/// `env` adds to or overrides that.
pub async fn start_planner(dir: &Path, name: &str, env: &[(&str, &str)]) -> Result<Service> {
    let mut cmd = Command::new(sibling_binary("planner")?);
    cmd.arg("serve")
        .env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("TOKEN_FILE", token_file(dir)?)
        .env("DATA_DIR", dir.join(format!("{name}-data")));
    for (key, value) in env {
        cmd.env(key, value);
    }
    Service::start(name, cmd, &dir.join(format!("{name}.log"))).await
}

/// A general worker (add, mul) with no artificial work time.
pub async fn start_worker(dir: &Path, planner_url: &str, id: &str, slots: u32) -> Result<Service> {
    let mut cmd = Command::new(sibling_binary("worker")?);
    cmd.env("OPS", "add,mul")
        .env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("PLANNER", planner_url)
        .env("WORK_MS", "0")
        .env("SLOTS", slots.to_string())
        .env("WORKER_ID", id)
        .env("TOKEN_FILE", token_file(dir)?);
    Service::start(id, cmd, &dir.join(format!("{id}.log"))).await
}

/// The token the benchmark's planners and workers share (authentication is
/// on by default).
const TOKEN: &str = "bench-token";

/// The admin token, for what the benchmark does as an operator (registering).
pub fn token() -> Result<String> {
    Ok(TOKEN.to_string())
}

/// [`TOKEN`], in a file in the run's directory.
fn token_file(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("token");
    if !path.exists() {
        std::fs::write(&path, TOKEN).context("writing the benchmark's token file")?;
    }
    Ok(path)
}

pub async fn stats(client: &reqwest::Client, planner: &str) -> Result<Stats> {
    let response = client
        .get(format!("{planner}/stats"))
        .send()
        .await
        .context("GET /stats")?;
    if !response.status().is_success() {
        bail!("GET /stats: HTTP {}", response.status());
    }
    response.json().await.context("reading /stats")
}

pub fn count(stats: &Stats, status: &str) -> u64 {
    stats.by_status.get(status).copied().unwrap_or(0)
}

/// Waits until the planner lists `n` workers.
pub async fn wait_for_workers(client: &reqwest::Client, planner: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .get(format!("{planner}/workers/summary?top=0"))
            .send()
            .await?;
        let summary: WorkersSummary = response.json().await.context("reading /workers/summary")?;
        if summary.workers >= n as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} workers registered within 30 s",
                summary.workers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident set size of a process, in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(service: &Service) -> Result<u64> {
    let pid = service
        .pid()
        .with_context(|| format!("{} has exited", service.name))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; `None` for this process.
pub fn cpu_time(pid: Option<i32>) -> Result<Duration> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_string(),
        |pid| format!("/proc/{pid}/stat"),
    );
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("no command name in {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("field {i} of {path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks_per_s()))
}

fn clock_ticks_per_s() -> f64 {
    // USER_HZ is 100 on every Linux architecture the project builds for.
    100.0
}

/// Stops every service, workers first.
pub async fn stop_all(planner: &mut Service, workers: &mut [Service]) {
    for worker in workers.iter() {
        worker.terminate();
    }
    for worker in workers.iter_mut() {
        worker.stop(Duration::from_secs(10)).await;
    }
    planner.stop(Duration::from_secs(10)).await;
}
