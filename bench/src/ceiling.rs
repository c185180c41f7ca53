//! Part 1: what the network stack allows. A trivial axum handler in its own
//! process (as a worker is), driven by a keep-alive reqwest client at the
//! concurrency the planner dispatches with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;
use launcher::process::Service;
use serde::Serialize;
use tokio::process::Command;
use wire::worker::TaskRequest;

use crate::Plan;
use crate::system::cpu_time;

/// Stops a loop that somehow outran its time bound.
const MAX_REQUESTS: u64 = 50_000_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ceiling {
    pub concurrency: u32,
    pub requests: u64,
    pub secs: f64,
    pub round_trips_per_s: f64,
    /// One request at a time: the floor under any single-task latency.
    pub sequential_p50_us: f64,
    pub sequential_p99_us: f64,
    /// CPU time per round trip during the measured load, in µs.
    pub server_cpu_us: f64,
    pub client_cpu_us: f64,
}

/// `bench echo-server`: answers `POST /echo` with the body it got.
pub async fn serve_echo() -> Result<()> {
    let app = Router::new().route(
        "/echo",
        post(|body: Bytes| async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
    );
    let (listener, _) = serve::listen::bind("127.0.0.1", 0).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(serve::shutdown::signal())
        .await
        .context("serving HTTP")
}

pub async fn measure(plan: &Plan) -> Result<Ceiling> {
    let dir = tempfile::Builder::new()
        .prefix("bench-ceiling-")
        .tempdir()?;
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("echo-server");
    let mut server = Service::start("echo-server", cmd, &dir.path().join("echo.log")).await?;
    let result = drive(plan, &server).await;
    server.stop(Duration::from_secs(5)).await;
    result
}

async fn drive(plan: &Plan, server: &Service) -> Result<Ceiling> {
    let client = crate::system::client()?;
    let url: Arc<str> = format!("{}/echo", server.url()).into();
    let concurrency = plan.concurrency();
    // Warm-up: open every connection and let the server's threads settle.
    let warm = plan
        .ceiling
        .mul_f64(0.2)
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    run_load(&client, &url, concurrency, warm).await?;
    let (server_cpu, client_cpu) = (cpu_time(server.pid())?, cpu_time(None)?);
    let (requests, elapsed) = run_load(&client, &url, concurrency, plan.ceiling).await?;
    let per_request = |before: Duration, after: Duration| {
        (after - before).as_secs_f64() * 1e6 / requests.max(1) as f64
    };
    let server_cpu_us = per_request(server_cpu, cpu_time(server.pid())?);
    let client_cpu_us = per_request(client_cpu, cpu_time(None)?);

    // One at a time, for the latency floor.
    let samples = (plan.latency_samples / 2).clamp(100, 5_000);
    let mut histogram = crate::report::histogram();
    let body = request_body(0);
    for _ in 0..samples {
        let started = Instant::now();
        round_trip(&client, &url, &body).await?;
        histogram.saturating_record(crate::report::micros(started.elapsed()));
    }
    Ok(Ceiling {
        concurrency,
        requests,
        secs: elapsed.as_secs_f64(),
        round_trips_per_s: requests as f64 / elapsed.as_secs_f64(),
        sequential_p50_us: histogram.value_at_quantile(0.5) as f64,
        sequential_p99_us: histogram.value_at_quantile(0.99) as f64,
        server_cpu_us,
        client_cpu_us,
    })
}

/// `concurrency` loops of back-to-back requests for `duration`; returns the
/// requests completed and the time they took.
async fn run_load(
    client: &reqwest::Client,
    url: &Arc<str>,
    concurrency: u32,
    duration: Duration,
) -> Result<(u64, Duration)> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        let (client, url, done) = (client.clone(), url.clone(), done.clone());
        loops.spawn(async move {
            let body = request_body(u64::from(i));
            while Instant::now() < end && done.load(Ordering::Relaxed) < MAX_REQUESTS {
                round_trip(&client, &url, &body).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = loops.join_next().await {
        joined.context("a load loop panicked")??;
    }
    Ok((done.load(Ordering::Relaxed), started.elapsed()))
}

/// What the planner sends a worker, serialized once.
fn request_body(id: u64) -> Bytes {
    let task = TaskRequest {
        id,
        op: "add".into(),
        args: vec![40, 2],
    };
    Bytes::from(serde_json::to_vec(&task).unwrap_or_default())
}

async fn round_trip(client: &reqwest::Client, url: &str, body: &Bytes) -> Result<()> {
    let response = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.clone())
        .send()
        .await
        .context("sending to the echo server")?;
    if !response.status().is_success() {
        bail!("echo server: HTTP {}", response.status());
    }
    let answer = response.bytes().await.context("reading the echo")?;
    if answer.len() != body.len() {
        bail!(
            "echo server answered {} bytes for {}",
            answer.len(),
            body.len()
        );
    }
    Ok(())
}
