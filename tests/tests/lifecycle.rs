//! A worker's life as Kubernetes sees it: readiness means "registered and
//! able to take tasks", and a SIGTERMed worker keeps proving it is alive
//! until its last task is answered, so that task runs exactly once.

use std::time::Duration;

use e2e::{System, poll, worker_command};
use launcher::process::Service;
use serde_json::json;
use wire::planner::TaskStatus;

async fn readyz(client: &reqwest::Client, worker: &Service) -> Option<u16> {
    let response = client
        .get(format!("{}/readyz", worker.url()))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

#[tokio::test]
async fn a_draining_worker_heartbeats_until_its_long_task_is_answered_and_it_runs_once()
-> anyhow::Result<()> {
    // The planner gives a silent worker up after 600 ms; the task takes 3 s.
    let mut system = System::start(&[("HEARTBEAT_TIMEOUT_MS", "600")]).await?;
    system
        .add_worker("long", &[("OPS", "mul"), ("WORK_MS", "3000")])
        .await?;
    system.wait_for_workers(1).await?;
    let ids = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7]}))
        .await?;
    let url = system.worker("long").url();
    e2e::wait_until_busy(&url, Duration::from_secs(5)).await?;
    // A second mul worker: if the planner gave the draining one up, the task
    // would be re-queued and run again here (attempts 2).
    system.add_worker("spare", &[("OPS", "mul")]).await?;
    system.wait_for_workers(2).await?;

    let worker = system.worker_mut("long");
    worker.terminate();
    let status = worker.wait(Duration::from_secs(15)).await?;
    assert!(status.success(), "the worker drains and exits 0: {status}");

    let view = system.task(ids[0]).await?;
    assert_eq!(
        (
            view.status,
            view.result,
            view.attempts,
            view.worker.as_deref()
        ),
        (TaskStatus::Done, Some(42), 1, Some("long")),
        "run once, by the draining worker: {view:?}"
    );
    let planner_log = std::fs::read_to_string(&system.planner.log)?;
    assert!(
        !planner_log.contains("stopped answering heartbeats"),
        "the planner never gave the draining worker up:\n{planner_log}"
    );
    let workers = system.workers().await?;
    assert_eq!(
        workers.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["spare"],
        "the drained worker is gone once its task was answered"
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_is_ready_only_while_its_planner_answers() -> anyhow::Result<()> {
    // A port nothing listens on yet: the planner starts there later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let mut cmd = worker_command()?;
    cmd.env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("PLANNER", format!("http://127.0.0.1:{port}"))
        .env("WORKER_ID", "early")
        .env("HEARTBEAT_MS", "200")
        .env("TOKEN", "early-token");
    let log = dir.path().join("early.log");
    let worker = Service::start("early", cmd, &log).await?;
    let client = reqwest::Client::new();

    // Serving (liveness answers) but not ready, after several failed
    // registrations.
    poll(
        Duration::from_secs(10),
        "two failed registrations",
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            (text.matches("registration failed").count() >= 2).then_some(())
        },
    )
    .await?;
    let live = client
        .get(format!("{}/healthz", worker.url()))
        .send()
        .await?;
    assert_eq!(live.status(), 200);
    assert_eq!(readyz(&client, &worker).await, Some(503));

    let port = port.to_string();
    let mut system = System::start(&[("PORT", &port), ("TOKEN", "early-token")]).await?;
    poll(
        Duration::from_secs(10),
        "the worker to be ready",
        || async { (readyz(&client, &worker).await == Some(200)).then_some(()) },
    )
    .await?;
    assert_eq!(system.wait_for_workers(1).await?[0].id, "early");

    // The planner gone: its heartbeats fail, so it is not ready any more.
    system.planner.kill();
    system.planner.wait(Duration::from_secs(5)).await?;
    poll(
        Duration::from_secs(10),
        "the worker to be not ready",
        || async { (readyz(&client, &worker).await == Some(503)).then_some(()) },
    )
    .await?;
    Ok(())
}
