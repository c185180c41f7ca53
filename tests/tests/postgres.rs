//! The PostgreSQL store's own behaviour, on a real server (see
//! `e2e::postgres`): migrations when planners start together, an
//! unreachable database at start, a database that comes up late, results
//! in the database. The task-API, dispatch, hot-swap and fault suites also
//! run on PostgreSQL (`E2E_STORE=postgres`, in `scripts/test`).

use std::time::Duration;

use anyhow::Result;
use e2e::postgres::{self, Cluster, psql};
use e2e::{System, planner_command, poll};
use launcher::process::Service;
use serde_json::json;

fn pg_env(url: &str) -> Vec<(&str, &str)> {
    vec![("STORE", "postgres"), ("DATABASE_URL", url)]
}

/// A planner on `url` that is not awaited to be ready.
async fn start_unready(dir: &std::path::Path, name: &str, env: &[(&str, &str)]) -> Result<Service> {
    let mut cmd = planner_command()?;
    cmd.env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("DATA_DIR", dir.join(format!("{name}-data")));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Service::start(name, cmd, &dir.join(format!("{name}.log"))).await
}

async fn status(url: &str) -> Option<u16> {
    Some(reqwest::get(url).await.ok()?.status().as_u16())
}

#[tokio::test]
async fn two_planners_starting_together_apply_the_migrations_once() -> Result<()> {
    let db = postgres::database().await?;
    let dir = tempfile::tempdir()?;
    let env = pg_env(&db.url);
    let (a, b) = tokio::join!(
        start_unready(dir.path(), "a", &env),
        start_unready(dir.path(), "b", &env)
    );
    let (a, b) = (a?, b?);
    for planner in [&a, &b] {
        let ready = format!("{}/readyz", planner.url());
        poll(Duration::from_secs(60), "both planners ready", || async {
            (status(&ready).await? == 200).then_some(())
        })
        .await?;
    }
    let applied = psql(
        &db.url,
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
    )
    .await?;
    // Every file in planner/migrations, once each.
    let mut versions: Vec<u64> = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../planner/migrations"),
    )?
    .filter_map(|entry| {
        let name = entry.ok()?.file_name().into_string().ok()?;
        name.split('_').next()?.parse().ok()
    })
    .collect();
    versions.sort_unstable();
    let expected: Vec<String> = versions.iter().map(u64::to_string).collect();
    assert_eq!(applied, expected.join(","), "each migration recorded once");
    // Both hand out ids from the one sequence: never the same id twice.
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for planner in [&a, &b, &a, &b] {
        let answer: serde_json::Value = client
            .post(format!("{}/tasks", planner.url()))
            .json(&json!([{"op": "add", "args": [1, 2]}, {"op": "mul", "args": [3, 4]}]))
            .send()
            .await?
            .json()
            .await?;
        ids.extend(
            answer["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id")),
        );
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "ids {ids:?}");
    let stored = psql(&db.url, "SELECT count(*) FROM tasks").await?;
    assert_eq!(stored, "8");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_fails_the_start_with_one_line_naming_the_host() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("postgres://planner:sekrit-pw@127.0.0.1:{port}/tasks");
    let dir = tempfile::tempdir()?;
    let mut env = pg_env(&url);
    env.push(("DATABASE_CONNECT_TIMEOUT_MS", "1500"));
    let mut planner = start_unready(dir.path(), "planner", &env).await?;
    // Meanwhile: alive, not ready, submissions refused with Retry-After.
    let ready = status(&format!("{}/readyz", planner.url())).await;
    let submit = reqwest::Client::new()
        .post(format!("{}/tasks", planner.url()))
        .json(&json!({"op": "add", "args": [1, 2]}))
        .send()
        .await;
    let exit = planner.wait(Duration::from_secs(30)).await?;
    assert!(!exit.success(), "exit status {exit}");
    if let Some(ready) = ready {
        assert_eq!(ready, 503);
    }
    if let Ok(submit) = submit {
        assert_eq!(submit.status().as_u16(), 503);
        assert!(submit.headers().contains_key("retry-after"));
    }
    let log = std::fs::read_to_string(&planner.log)?;
    let last = log.lines().last().unwrap_or_default();
    assert!(last.starts_with("planner: "), "last line: {last}");
    assert!(
        last.contains(&format!("127.0.0.1:{port}")),
        "last line: {last}"
    );
    assert!(
        !log.contains("sekrit-pw"),
        "the password reached the log:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_planner_started_before_its_database_becomes_ready_without_a_restart() -> Result<()> {
    // Its own cluster: this test stops it.
    let cluster = Cluster::start().await?;
    psql(&cluster.url("postgres"), "CREATE DATABASE late").await?;
    cluster.stop();
    let url = cluster.url("late");
    // One token for both planners: the worker registers with the second.
    let token = "late-planner-token";
    let mut system = System::start(&[("STORE", "memory"), ("TOKEN", token)]).await?;
    let mut env = pg_env(&url);
    env.push(("TOKEN", token));
    let planner = start_unready(system.dir.path(), "late", &env).await?;
    let ready = format!("{}/readyz", planner.url());
    assert_eq!(status(&ready).await, Some(503));
    let alive = status(&format!("{}/healthz", planner.url())).await;
    assert_eq!(alive, Some(200));
    cluster.run().await?;
    poll(
        Duration::from_secs(60),
        "the planner to become ready",
        || async { (status(&ready).await? == 200).then_some(()) },
    )
    .await?;
    // It works: a worker registers, a task runs and its result is stored.
    system.planner = planner;
    system.add_worker("w1", &[]).await?;
    system.wait_for_workers(1).await?;
    let ids = system
        .submit_ids(&json!({"op": "add", "args": [20, 22]}))
        .await?;
    let views = system.wait_final(&ids, Duration::from_secs(30)).await?;
    assert_eq!(views[0].result, Some(42));
    poll(
        Duration::from_secs(10),
        "the result in the database",
        || async {
            let sql = format!(
                "SELECT status || ' ' || result FROM tasks WHERE id = {}",
                ids[0]
            );
            (psql(&url, &sql).await.ok()? == "done 42").then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn results_survive_a_planner_crash_and_ids_are_never_reused() -> Result<()> {
    let db = postgres::database().await?;
    let env = pg_env(&db.url);
    let mut system = System::start(&env).await?;
    system.add_worker("w1", &[]).await?;
    system.wait_for_workers(1).await?;
    let first = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7]}))
        .await?;
    let views = system.wait_final(&first, Duration::from_secs(30)).await?;
    assert_eq!(views[0].result, Some(42));
    // Results are written behind: wait until it is committed.
    poll(
        Duration::from_secs(10),
        "the result in the database",
        || async {
            let sql = format!(
                "SELECT status || ' ' || result FROM tasks WHERE id = {}",
                first[0]
            );
            (psql(&db.url, &sql).await.ok()? == "done 42").then_some(())
        },
    )
    .await?;
    system.planner.kill();
    system.planner.wait(Duration::from_secs(10)).await?;
    system.restart_planner(&env).await?;
    // The restarted planner answers from the database.
    let view = system.task(first[0]).await?;
    assert_eq!(view.result, Some(42));
    let second = system
        .submit_ids(&json!({"op": "add", "args": [1, 1]}))
        .await?;
    assert!(second[0] > first[0], "{second:?} after {first:?}");
    Ok(())
}

#[tokio::test]
async fn the_database_going_away_makes_the_planner_unready_and_it_recovers_by_itself() -> Result<()>
{
    // Its own cluster: this test stops it.
    let cluster = Cluster::start().await?;
    psql(&cluster.url("postgres"), "CREATE DATABASE away").await?;
    let url = cluster.url("away");
    let mut system = System::start(&[
        ("STORE", "postgres"),
        ("DATABASE_URL", &url),
        ("TOKEN", "away-token"),
        ("REPLICA_LEASE_MS", "1000"),
    ])
    .await?;
    system.add_worker("w1", &[]).await?;
    system.wait_for_workers(1).await?;
    let before = system
        .submit_ids(&json!({"op": "add", "args": [1, 2]}))
        .await?;
    system.wait_final(&before, Duration::from_secs(30)).await?;
    let ready = system.url("/readyz");
    cluster.stop();
    poll(
        Duration::from_secs(30),
        "the planner to turn unready",
        || async { (status(&ready).await? == 503).then_some(()) },
    )
    .await?;
    let refused = system
        .client
        .post(system.url("/tasks"))
        .json(&json!({"op": "add", "args": [2, 3]}))
        .send()
        .await?;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    cluster.run().await?;
    poll(
        Duration::from_secs(60),
        "the planner to be ready again",
        || async { (status(&ready).await? == 200).then_some(()) },
    )
    .await?;
    let after = system
        .submit_ids(&json!({"op": "add", "args": [20, 22]}))
        .await?;
    let views = system.wait_final(&after, Duration::from_secs(30)).await?;
    assert_eq!(views[0].result, Some(42));
    assert_eq!(system.task(before[0]).await?.result, Some(3));
    Ok(())
}
