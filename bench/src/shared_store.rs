//! Part 8: the PostgreSQL store (`STORE=postgres`), with one and with three
//! planner replicas in front of the same workers, beside the SQLite figures
//! of parts 2-3.
//!
//! The server is a throwaway cluster of this run's own, configured like a
//! production one as far as durability goes (fsync and synchronous commit
//! on), so the comparison with SQLite's fsync is fair. Its CPU is the
//! postmaster's and its backends' (live ones read directly, exited ones
//! through the postmaster's reaped-children time).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use launcher::postgres::{self, Cluster};
use launcher::process::Service;
use serde::Serialize;
use wire::planner::{Accepted, NewTask};

use crate::Plan;
use crate::e2e::{self, Latency};
use crate::report::{Row, Verdict, row};
use crate::system::{self, cpu_time};

#[derive(Debug, Clone, Default, Serialize)]
pub struct SharedStore {
    pub one: Replicated,
    pub three: Replicated,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Replicated {
    pub planners: u32,
    pub tasks: u64,
    pub secs: f64,
    pub tasks_per_s: f64,
    /// CPU per task during the throughput run, in µs: all planners
    /// together, and the database server.
    pub planners_cpu_us: f64,
    pub database_cpu_us: f64,
    /// Single tasks, `?wait=true`, submitted to the first planner.
    pub latency: Latency,
}

pub async fn measure(plan: &Plan) -> Result<SharedStore> {
    let cluster = Cluster::start_durable()
        .await
        .context("starting a PostgreSQL cluster (scripts/install-tools installs it)")?;
    Ok(SharedStore {
        one: replicated(plan, &cluster, 1).await?,
        three: replicated(plan, &cluster, 3).await?,
    })
}

async fn replicated(plan: &Plan, cluster: &Cluster, planners: u32) -> Result<Replicated> {
    let database = format!("bench_{planners}");
    postgres::psql(
        &cluster.url("postgres"),
        &format!("CREATE DATABASE {database}"),
    )
    .await?;
    let database_url = cluster.url(&database);
    let dir = tempfile::Builder::new()
        .prefix(&format!("bench-pg-{planners}-"))
        .tempdir()?;
    let mut services: Vec<Service> = Vec::new();
    let outcome = async {
        let mut urls = Vec::new();
        for i in 1..=planners {
            let planner = system::start_planner(
                dir.path(),
                &format!("planner-{i}"),
                &[("STORE", "postgres"), ("DATABASE_URL", &database_url)],
            )
            .await?;
            urls.push(planner.url());
            services.push(planner);
        }
        // The same workers as the SQLite run, spread over the replicas.
        for i in 1..=plan.workers {
            let planner = &urls[(i as usize - 1) % urls.len()];
            services.push(
                system::start_worker(dir.path(), planner, &format!("pg-{i}"), plan.slots).await?,
            );
        }
        let client = system::client()?;
        system::wait_for_workers(&client, &urls[0], plan.workers as usize).await?;
        let (planner_pids, server) = (
            services[..planners as usize]
                .iter()
                .map(Service::pid)
                .collect::<Vec<_>>(),
            cluster
                .pid()
                .context("the PostgreSQL server is not running")?,
        );
        let cpu = || -> Result<(Duration, Duration)> {
            let mut planners = Duration::ZERO;
            for pid in &planner_pids {
                planners += cpu_time(*pid)?;
            }
            Ok((planners, server_cpu(server)?))
        };
        let before = cpu()?;
        let started = Instant::now();
        submit_round_robin(plan, &client, &urls).await?;
        wait_all_finished(plan, &database_url, started).await?;
        let secs = started.elapsed().as_secs_f64();
        let after = cpu()?;
        let per_task = |a: Duration, b: Duration| (a - b).as_secs_f64() * 1e6 / plan.tasks as f64;
        let latency = e2e::latency(plan, &client, &urls[0]).await?;
        Ok::<_, anyhow::Error>(Replicated {
            planners,
            tasks: plan.tasks,
            secs,
            tasks_per_s: plan.tasks as f64 / secs,
            planners_cpu_us: per_task(after.0, before.0),
            database_cpu_us: per_task(after.1, before.1),
            latency,
        })
    }
    .await;
    for service in services.iter().rev() {
        service.terminate();
    }
    for service in services.iter_mut().rev() {
        service.stop(Duration::from_secs(10)).await;
    }
    if outcome.is_err() {
        eprintln!("bench: logs of the failed run: {}", dir.keep().display());
    }
    outcome
}

/// The run's tasks in batches, each to the next planner in turn.
async fn submit_round_robin(plan: &Plan, client: &reqwest::Client, urls: &[String]) -> Result<()> {
    let mut submitted = 0;
    let mut turn = 0;
    while submitted < plan.tasks {
        let n = plan.batch.min(plan.tasks - submitted);
        let batch: Vec<NewTask> = (submitted..submitted + n).map(e2e::task).collect();
        let response = client
            .post(format!("{}/tasks", urls[turn % urls.len()]))
            .json(&batch)
            .send()
            .await
            .context("submitting a batch")?;
        let status = response.status();
        if status != reqwest::StatusCode::ACCEPTED {
            bail!(
                "batch answered HTTP {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        let accepted: Accepted = response.json().await.context("reading the accepted ids")?;
        if accepted.ids.len() as u64 != n {
            bail!("{} ids for {n} tasks", accepted.ids.len());
        }
        submitted += n;
        turn += 1;
    }
    Ok(())
}

/// Asks the database (the one place every replica's results meet) until
/// every task finished; fails on any failed task.
async fn wait_all_finished(plan: &Plan, database_url: &str, started: Instant) -> Result<()> {
    let deadline = started + plan.phase_timeout;
    loop {
        let counts = postgres::psql(
            database_url,
            "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status NOT IN ('done', 'queued', 'running')) FROM tasks",
        )
        .await?;
        let (done, other) = counts
            .split_once('|')
            .and_then(|(d, o)| Some((d.parse::<u64>().ok()?, o.parse::<u64>().ok()?)))
            .with_context(|| format!("unexpected psql answer {counts:?}"))?;
        if other > 0 {
            bail!("{other} tasks did not finish `done` on the PostgreSQL store");
        }
        if done >= plan.tasks {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} tasks finished within {:?}",
                plan.tasks,
                plan.phase_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU used by the server: the postmaster, its live backends, and the
/// backends that have exited (reaped by the postmaster).
fn server_cpu(postmaster: u32) -> Result<Duration> {
    let mut total = reaped_children_cpu(postmaster)? + cpu_time(Some(postmaster as i32))?;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(postmaster as i32) {
            // A backend may exit between the listing and the read.
            total += cpu_time(Some(pid)).unwrap_or_default();
        }
    }
    Ok(total)
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// cutime + cstime: fields 16 and 17 of the line, 14 and 15 after the name.
fn reaped_children_cpu(pid: u32) -> Result<Duration> {
    let fields = stat_fields(pid as i32).context("reading the postmaster's /proc stat")?;
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Duration::from_secs_f64(
        (ticks(13) + ticks(14)) as f64 / 100.0,
    ))
}

pub fn rows(shared: &SharedStore, sqlite_tasks_per_s: f64) -> Vec<Row> {
    let mut rows = Vec::new();
    for r in [&shared.one, &shared.three] {
        rows.push(row(
            "8",
            format!(
                "PostgreSQL store, {} planner{}: tasks/s ({} tasks)",
                r.planners,
                if r.planners == 1 { "" } else { "s" },
                r.tasks
            ),
            format!("{:.0}", r.tasks_per_s),
            if r.planners == 3 {
                ">= SQLite, 1 planner"
            } else {
                ""
            },
            if r.planners == 3 {
                Verdict::of(r.tasks_per_s >= sqlite_tasks_per_s)
            } else {
                Verdict::Info
            },
        ));
        rows.push(row(
            "8",
            "  CPU per task: planners / database",
            format!("{:.0} / {:.0} µs", r.planners_cpu_us, r.database_cpu_us),
            "",
            Verdict::Info,
        ));
        rows.push(row(
            "8",
            "  single task ?wait=true, p50 / p99",
            format!("{:.0} / {:.0} µs", r.latency.p50_us, r.latency.p99_us),
            "",
            Verdict::Info,
        ));
    }
    rows
}
