//! A worker's life as Kubernetes sees it: readiness means "registered and
//! able to take tasks".

use std::time::Duration;

use e2e::{System, poll, worker_command};
use launcher::process::Service;

async fn readyz(client: &reqwest::Client, worker: &Service) -> Option<u16> {
    let response = client
        .get(format!("{}/readyz", worker.url()))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
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
        .env("HEARTBEAT_MS", "200");
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
    let mut system = System::start(&[("PORT", &port)]).await?;
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
