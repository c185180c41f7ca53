//! `planner::serve` driven in process: its stop signal is an argument, so a
//! test decides when it stops and checks that it returns in bounded time even
//! with an event stream and a `?wait=true` request open.

use std::time::{Duration, Instant};

use clap::Parser;
use planner::config::Cli;

#[tokio::test]
async fn serve_returns_promptly_when_its_shutdown_future_resolves() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let cli = Cli::try_parse_from([
        "planner",
        "--data-dir",
        &data.path().display().to_string(),
        "--drain-timeout-ms",
        "5000",
    ])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(planner::serve(cli.serve, listener, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let events = client.get(format!("{base}/events")).send().await?;
    assert_eq!(events.status(), 200);
    let waiting = tokio::spawn({
        let client = client.clone();
        let url = format!("{base}/tasks?wait=true&timeout_ms=600000");
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"op": "add", "args": [1, 2]}))
                .send()
                .await
        }
    });
    // The task is stored and queued (no worker) before we stop.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: serde_json::Value = client
            .get(format!("{base}/stats"))
            .send()
            .await?
            .json()
            .await?;
        if stats["by_status"]["queued"] == 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the task never showed as queued: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let asked = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(4), server).await???;
    let took = asked.elapsed();
    let answer = waiting.await??;
    assert_eq!(
        answer.status(),
        202,
        "a waiting request answers when the planner stops"
    );
    tokio::time::timeout(Duration::from_secs(2), events.bytes()).await??;
    println!("serve returned {took:?} after its shutdown future resolved");
    Ok(())
}
