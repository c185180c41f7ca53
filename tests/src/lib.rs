//! Harness for the end-to-end tests: starts the real `planner` and `worker`
//! binaries on 127.0.0.1 and talks to them over HTTP.
//!
//! Build the binaries first (`cargo build --release --bins`); the test
//! command in `scripts/test` does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use launcher::process::{Service, sibling_binary};
use serde_json::Value;
use tokio::process::Command;
use wire::TaskId;
use wire::planner::{TaskView, WorkerView};

pub mod browser;
pub mod chart;
pub mod front;
pub use launcher::postgres;
pub mod values_doc;

/// A component built from `tests/fixtures/ops` or `ops/` by `build.rs`.
pub fn fixture(op: &str) -> PathBuf {
    Path::new(env!("FIXTURE_OPS_DIR")).join(format!("{op}.wasm"))
}

/// The directory holding all fixture components.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("FIXTURE_OPS_DIR"))
}

pub use launcher::process::poll;

pub fn planner_command() -> Result<Command> {
    Ok(Command::new(sibling_binary("planner")?))
}

pub fn worker_command() -> Result<Command> {
    Ok(Command::new(sibling_binary("worker")?))
}

/// A planner and its workers, in a temporary directory that holds their
/// data and logs. Everything is killed when it is dropped.
pub struct System {
    pub dir: tempfile::TempDir,
    pub planner: Service,
    pub workers: Vec<Service>,
    /// Presents the planner's admin token on every request (see
    /// [`System::token`]); tests that check refusals use a client of their own.
    pub client: reqwest::Client,
    /// The planner's admin token: `TOKEN` from the test's environment, else
    /// the one the planner generated in its data dir; `None` with `AUTH=off`.
    pub token: Option<String>,
    /// The planner's `DATA_DIR` (where it keeps a generated token).
    pub data_dir: PathBuf,
    /// The planner's PostgreSQL database, when it runs on one (see
    /// [`store_env`]).
    pub database: Option<postgres::Database>,
    /// Workers started with the dispatch channel on (see
    /// [`e2e_transport_is_http`]).
    pub channel_workers: std::collections::BTreeSet<String>,
}

/// Which store the suites run their planners on: `E2E_STORE=postgres` runs
/// them on a fresh PostgreSQL database each (see [`postgres`]); anything
/// else, the default SQLite store. Tests that choose a store themselves
/// (`STORE` in their environment) keep it.
pub fn e2e_store_is_postgres() -> bool {
    std::env::var("E2E_STORE").is_ok_and(|s| s == "postgres")
}

/// Which transport the suites' workers take tasks on: `E2E_TRANSPORT=http`
/// starts them with `CHANNEL=off` (one HTTP request per task); anything
/// else leaves the persistent dispatch channel on, and
/// [`System::wait_for_workers`] then also waits until each listed worker's
/// channel is open, so the suites' tasks go over it. A test that sets
/// `CHANNEL` itself keeps its choice.
pub fn e2e_transport_is_http() -> bool {
    std::env::var("E2E_TRANSPORT").is_ok_and(|s| s == "http")
}

/// The planner environment selecting the store for a test: a new database
/// (returned, to keep it for restarts) under `E2E_STORE=postgres`.
async fn store_env(env: &[(&str, &str)]) -> Result<Option<postgres::Database>> {
    if !e2e_store_is_postgres() || env.iter().any(|(k, _)| *k == "STORE") {
        return Ok(None);
    }
    Ok(Some(postgres::database().await?))
}

fn with_database<'a>(
    env: &[(&'a str, &'a str)],
    database: Option<&'a postgres::Database>,
) -> Vec<(&'a str, &'a str)> {
    let mut env = env.to_vec();
    if let Some(database) = database {
        env.insert(0, ("STORE", "postgres"));
        env.insert(1, ("DATABASE_URL", &database.url));
    }
    env
}

impl System {
    /// A planner with a fresh data dir and the given extra environment.
    pub async fn start(env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("e2e-").tempdir()?;
        let database = store_env(env).await?;
        let planner = start_planner(dir.path(), &with_database(env, database.as_ref())).await?;
        let data_dir = env
            .iter()
            .find(|(k, _)| *k == "DATA_DIR")
            .map_or_else(|| dir.path().join("planner-data"), |(_, v)| v.into());
        let token = planner_token(&data_dir, env)?;
        Ok(Self {
            client: client_with(token.as_deref())?,
            data_dir,
            dir,
            planner,
            workers: Vec::new(),
            token,
            database,
            channel_workers: Default::default(),
        })
    }

    /// Where the planner keeps the token it generated (when the test gave
    /// none and left authentication on).
    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("token")
    }

    /// A planner (with `env`) and `n` workers `w1`..`wN` with the default
    /// worker settings plus `worker_env`, all registered.
    pub async fn with_workers(
        env: &[(&str, &str)],
        n: usize,
        worker_env: &[(&str, &str)],
    ) -> Result<Self> {
        let mut system = Self::start(env).await?;
        for i in 1..=n {
            system.add_worker(&format!("w{i}"), worker_env).await?;
        }
        system.wait_for_workers(n).await?;
        Ok(system)
    }

    /// `GET path` on the planner, expecting a 2xx JSON answer.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let response = self.client.get(self.url(path)).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", response.text().await?);
        }
        response
            .json()
            .await
            .with_context(|| format!("GET {path}: not the expected JSON"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.planner.url())
    }

    /// Restarts the planner on the same data dir and port (after a kill).
    pub async fn restart_planner(&mut self, env: &[(&str, &str)]) -> Result<()> {
        let port = self.planner.addr.port().to_string();
        let mut env = with_database(env, self.database.as_ref());
        env.push(("PORT", &port));
        self.planner = start_planner(self.dir.path(), &env).await?;
        Ok(())
    }

    /// Starts a worker registered with this planner. `env` adds to or
    /// overrides the defaults (`OPS=add,mul`, one slot, no work time).
    pub async fn add_worker(&mut self, id: &str, env: &[(&str, &str)]) -> Result<&Service> {
        let mut cmd = worker_command()?;
        cmd.env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("PLANNER", self.planner.url())
            .env("WORKER_ID", id)
            .env("HEARTBEAT_MS", "200");
        // The way a user would: the generated token's file, or the token the
        // test gave, or AUTH=off; unless the test says otherwise itself.
        let chooses = env
            .iter()
            .any(|(k, _)| matches!(*k, "TOKEN" | "TOKEN_FILE" | "AUTH"));
        if !chooses {
            match &self.token {
                Some(_) if self.token_file().exists() => cmd.env("TOKEN_FILE", self.token_file()),
                Some(token) => cmd.env("TOKEN", token),
                None => cmd.env("AUTH", "off"),
            };
        }
        if e2e_transport_is_http() {
            cmd.env("CHANNEL", "off");
        }
        for (key, value) in env {
            cmd.env(key, value);
        }
        // A worker whose token the test chose may refuse the planner's
        // (its channel then stays closed): only an explicit `CHANNEL=on`
        // makes the harness wait for the channel of such a worker.
        let channel = match env.iter().find(|(k, _)| *k == "CHANNEL") {
            Some((_, value)) => *value != "off",
            None => !e2e_transport_is_http() && !chooses,
        };
        if channel {
            self.channel_workers.insert(id.to_string());
        } else {
            self.channel_workers.remove(id);
        }
        let log = self.dir.path().join(format!("{id}.log"));
        self.workers.push(Service::start(id, cmd, &log).await?);
        Ok(self.workers.last().expect("just pushed"))
    }

    pub fn worker(&self, id: &str) -> &Service {
        self.workers
            .iter()
            .find(|w| w.name == id)
            .expect("no such worker in this system")
    }

    pub fn worker_mut(&mut self, id: &str) -> &mut Service {
        self.workers
            .iter_mut()
            .find(|w| w.name == id)
            .expect("no such worker in this system")
    }

    pub async fn workers(&self) -> Result<Vec<WorkerView>> {
        Ok(self
            .client
            .get(self.url("/workers"))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until the planner lists exactly `n` workers, and the dispatch
    /// channel of each of them started with it is open.
    pub async fn wait_for_workers(&self, n: usize) -> Result<Vec<WorkerView>> {
        let workers = poll(
            Duration::from_secs(20),
            &format!("{n} registered workers"),
            || async { self.workers().await.ok().filter(|w| w.len() == n) },
        )
        .await?;
        for worker in &workers {
            if self.channel_workers.contains(&worker.id) {
                wait_for_channel(&worker.url, true).await?;
            }
        }
        Ok(workers)
    }

    /// `POST /tasks` with a JSON body; returns status and parsed body.
    pub async fn submit(&self, body: &Value) -> Result<(u16, Value)> {
        self.post_json("/tasks", body).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self.client.post(self.url(path)).json(body).send().await?;
        let status = response.status().as_u16();
        let body = response.json().await.context("answer is not JSON")?;
        Ok((status, body))
    }

    pub async fn submit_ids(&self, body: &Value) -> Result<Vec<TaskId>> {
        let (status, answer) = self.submit(body).await?;
        if status != 202 {
            bail!("submission refused: {status} {answer}");
        }
        Ok(serde_json::from_value(answer["ids"].clone())?)
    }

    pub async fn task(&self, id: TaskId) -> Result<TaskView> {
        let response = self
            .client
            .get(self.url(&format!("/tasks/{id}")))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /tasks/{id}: {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Waits until every task is final; returns them in order.
    pub async fn wait_final(&self, ids: &[TaskId], deadline: Duration) -> Result<Vec<TaskView>> {
        let mut views = Vec::with_capacity(ids.len());
        let until = Instant::now() + deadline;
        for &id in ids {
            let remaining = until.saturating_duration_since(Instant::now());
            let view = poll(remaining, &format!("task {id} to finish"), || async {
                self.task(id).await.ok().filter(|v| v.status.is_final())
            })
            .await?;
            views.push(view);
        }
        Ok(views)
    }
}

/// The planner's admin token as a test's environment set it up: `TOKEN`,
/// `TOKEN_FILE`, none with `AUTH=off`, else the generated one (in place
/// before the planner announces its address).
fn planner_token(data_dir: &Path, env: &[(&str, &str)]) -> Result<Option<String>> {
    let given = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if given("AUTH") == Some("off") {
        return Ok(None);
    }
    if let Some(token) = given("TOKEN") {
        return Ok(Some(token.to_string()));
    }
    let file = given("TOKEN_FILE").map_or_else(|| data_dir.join("token"), PathBuf::from);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("reading the planner's token in {}", file.display()))?;
    Ok(Some(text.trim().to_string()))
}

/// An HTTP client presenting `token` on every request.
pub fn client_with(token: Option<&str>) -> Result<reqwest::Client> {
    let headers = serve::auth::Token::new(token.map(str::to_string)).headers();
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

async fn start_planner(dir: &Path, env: &[(&str, &str)]) -> Result<Service> {
    let mut cmd = planner_command()?;
    cmd.env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("DATA_DIR", dir.join("planner-data"))
        .env("HEARTBEAT_TIMEOUT_MS", "1500");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let log = dir.join(format!(
        "planner-{}.log",
        std::process::id() as u64 * 1000 + next_seq()
    ));
    let planner = Service::start("planner", cmd, &log).await?;
    // A planner on PostgreSQL listens (and answers 503) while it connects.
    if env.iter().any(|(k, v)| *k == "STORE" && *v == "postgres") {
        let ready = format!("{}/readyz", planner.url());
        poll(
            Duration::from_secs(60),
            "the planner to be ready",
            || async {
                let status = reqwest::get(&ready).await.ok()?.status();
                status.is_success().then_some(())
            },
        )
        .await?;
    }
    Ok(planner)
}

fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Waits until the worker at `worker_url` says (`worker_channel_open` in its
/// `/metrics`) that its dispatch channel to the planner is open, or closed.
pub async fn wait_for_channel(worker_url: &str, open: bool) -> Result<()> {
    let what = if open { "open" } else { "closed" };
    poll(
        Duration::from_secs(20),
        &format!("the dispatch channel of {worker_url} to be {what}"),
        || async {
            let text = reqwest::get(format!("{worker_url}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let is_open = text
                .lines()
                .any(|line| line.trim() == "worker_channel_open 1");
            (is_open == open).then_some(())
        },
    )
    .await
}

/// Waits until the worker at `url` is running a task (its `GET /` no longer
/// says it is ready to work): a task handed out by the planner may still be
/// on its way; this is when the worker itself has it.
pub async fn wait_until_busy(worker_url: &str, deadline: Duration) -> Result<()> {
    poll(deadline, "the worker to be running a task", || async {
        (!worker_is_idle(worker_url).await?).then_some(())
    })
    .await
}

/// Waits until the worker at `url` runs nothing (its `GET /` says it is
/// ready to work again).
pub async fn wait_until_idle(worker_url: &str, deadline: Duration) -> Result<()> {
    poll(deadline, "the worker to finish its calls", || async {
        worker_is_idle(worker_url).await?.then_some(())
    })
    .await
}

/// Whether the worker's `GET /` says it is ready to work (`None`: no answer).
async fn worker_is_idle(worker_url: &str) -> Option<bool> {
    let text = reqwest::get(format!("{worker_url}/"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(text.starts_with("ready to work"))
}

/// The value of one series (its name with labels, exactly as Prometheus
/// text writes it) in a `/metrics` page; 0 when absent.
pub fn series_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Expected result of the built-in ops, computed natively.
pub fn expected(op: &str, args: &[i64]) -> Option<i64> {
    match (op, args) {
        ("add", [a, b]) => a.checked_add(*b),
        ("mul", [a, b]) => a.checked_mul(*b),
        _ => None,
    }
}
