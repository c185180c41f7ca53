//! Connection hygiene (issue 12, attack 6): a client that trickles a request
//! head or body is cut at the server's deadline, the number of connections
//! one server holds is capped, and honest clients are served afterwards.
//! Loopback only; every loop is bounded by a deadline.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use e2e::{System, poll};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Small limits so the test is quick; the defaults are 10 s, 60 s and 512.
const LIMITS: [(&str, &str); 3] = [
    ("HEADER_TIMEOUT_MS", "1000"),
    ("BODY_TIMEOUT_MS", "1500"),
    ("MAX_CONNECTIONS", "6"),
];
/// How long a cut may take at most before the test calls it not cut.
const CUT_DEADLINE: Duration = Duration::from_secs(15);

/// Sends `head`, then `drip` one byte every 250 ms, until the server closes
/// the connection; returns how long it stayed open and what the server said.
async fn trickle(addr: std::net::SocketAddr, head: &[u8], drip: u8) -> Result<(Duration, String)> {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.into_split();
    write.write_all(head).await?;
    let writer = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(250));
        loop {
            ticker.tick().await;
            if write.write_all(&[drip]).await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let cut = tokio::time::timeout(CUT_DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    writer.abort();
    if cut.is_err() {
        bail!("still open after {CUT_DEADLINE:?}: the server never cut the trickling client");
    }
    Ok((
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    ))
}

async fn healthy(client: &reqwest::Client, url: &str) -> Result<u16> {
    Ok(client
        .get(format!("{url}/healthz"))
        .send()
        .await?
        .status()
        .as_u16())
}

/// A client that keeps no idle connection, so it never holds a slot.
fn fresh_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?)
}

#[tokio::test]
async fn a_worker_cuts_trickled_heads_and_bodies_and_caps_its_connections() -> Result<()> {
    let mut system = System::start(&[]).await?;
    let worker = system.add_worker("w", &LIMITS).await?;
    let (url, addr) = (worker.url(), worker.addr);
    let client = fresh_client()?;

    // A head sent at 4 bytes a second never completes: cut at the header timeout.
    let (open_for, answer) = trickle(addr, b"POST /tasks HTTP/1.1\r\nHost: x\r\n", b'a').await?;
    println!("slow head cut after {open_for:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A body that trickles is cut at the body timeout with a JSON 408 (with
    // the token: without it the worker answers 401 before reading a byte).
    let head = format!(
        "POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n",
        system.token.as_deref().unwrap_or_default()
    );
    let (open_for, answer) = trickle(addr, head.as_bytes(), b' ').await?;
    println!("slow body cut after {open_for:?}: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""error":"#) && answer.contains("BODY_TIMEOUT_MS"),
        "{answer}"
    );

    // The cap: six silent connections fill the worker; the seventh is told
    // so at once, in JSON; once the silent ones are cut, honest requests
    // are served again.
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(TcpStream::connect(addr).await?);
    }
    let refused = poll(
        Duration::from_secs(5),
        "a 503 for the connection over the cap",
        || async {
            let response = client.get(format!("{url}/healthz")).send().await.ok()?;
            (response.status() == 503).then_some(response)
        },
    )
    .await?;
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("MAX_CONNECTIONS"),
        "{body}"
    );
    poll(CUT_DEADLINE, "the worker to serve again", || async {
        (healthy(&client, &url).await.ok()? == 200).then_some(())
    })
    .await?;
    for mut stream in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .context("a silent connection still open after the header timeout")?
            .unwrap_or(0);
        assert_eq!(n, 0, "cut without an answer");
    }

    // And the worker still runs tasks for the planner.
    system.wait_for_workers(1).await?;
    let (status, body) = system
        .post_json(
            "/tasks?wait=true",
            &serde_json::json!({"op": "add", "args": [2, 3]}),
        )
        .await?;
    assert_eq!(
        (status, &body["result"]),
        (200, &serde_json::json!(5)),
        "{body}"
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_answers_405_414_and_431_in_json() -> Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system.add_worker("w", &[]).await?.url();
    let client = fresh_client()?;
    let cases = [
        (client.delete(format!("{url}/healthz")), 405),
        (
            client.get(format!("{url}/healthz?{}", "q".repeat(62_000))),
            414,
        ),
        (
            (0..120).fold(client.get(format!("{url}/healthz")), |request, i| {
                request.header(format!("x-h{i}"), "v")
            }),
            431,
        ),
    ];
    for (request, want) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), want);
        if want == 405 {
            assert_eq!(
                response
                    .headers()
                    .get("allow")
                    .and_then(|v| v.to_str().ok()),
                Some("GET,HEAD")
            );
        }
        let body: Value = response.json().await?;
        assert!(body["error"].is_string(), "{want}: {body}");
    }
    assert_eq!(healthy(&client, &url).await?, 200);
    Ok(())
}

#[tokio::test]
async fn a_planner_cuts_trickled_heads_and_bodies_and_caps_its_connections() -> Result<()> {
    let mut system = System::start(&LIMITS).await?;
    let (url, addr) = (system.planner.url(), system.planner.addr);
    let client = fresh_client()?;

    let (open_for, answer) = trickle(addr, b"POST /tasks HTTP/1.1\r\nHost: x\r\n", b'a').await?;
    println!("slow head cut after {open_for:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // The attack's shape: a large submission body that never completes.
    let head = b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 7500000\r\n\r\n";
    let (open_for, answer) = trickle(addr, head, b' ').await?;
    println!("slow body cut after {open_for:?}: {answer}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("BODY_TIMEOUT_MS"), "{answer}");

    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(TcpStream::connect(addr).await?);
    }
    let refused = poll(
        Duration::from_secs(5),
        "a 503 for the connection over the cap",
        || async {
            let response = client.get(format!("{url}/healthz")).send().await.ok()?;
            (response.status() == 503).then_some(response)
        },
    )
    .await?;
    let body: Value = refused.json().await?;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("MAX_CONNECTIONS"),
        "{body}"
    );
    poll(CUT_DEADLINE, "the planner to serve again", || async {
        (healthy(&client, &url).await.ok()? == 200).then_some(())
    })
    .await?;
    drop(silent);

    // Workers (whose heartbeats keep their connections busy) register and
    // tasks run as before.
    system.add_worker("w", &[]).await?;
    system.wait_for_workers(1).await?;
    let (status, body) = system
        .post_json(
            "/tasks?wait=true",
            &serde_json::json!({"op": "mul", "args": [6, 7]}),
        )
        .await?;
    assert_eq!(
        (status, &body["result"]),
        (200, &serde_json::json!(42)),
        "{body}"
    );
    Ok(())
}
