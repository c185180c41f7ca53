//! The attacks of issue 12 against a planner with default settings, each
//! now refused with a 4xx JSON error (or a clear exit), and the system still
//! serving honest clients afterwards.

use std::time::Duration;

use e2e::{System, planner_command};
use serde_json::{Value, json};

fn registration(id: &str, url: &str, slots: u64) -> Value {
    json!({"id": id, "url": url, "ops": [{"name": "mul", "digest": "0", "arity": 2, "doc": ""}], "slots": slots})
}

async fn honest_mul_still_works(system: &System) -> anyhow::Result<()> {
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [6, 7]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_live_workers_id_cannot_be_hijacked_by_another_address() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("OPS", "mul")]).await?;
    let (status, body) = system
        .post_json("/workers", &registration("w1", "http://127.0.0.2:9", 1))
        .await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("alive"),
        "{body}"
    );
    let workers = system.workers().await?;
    assert_eq!(workers.len(), 1);
    assert_ne!(workers[0].url, "http://127.0.0.2:9");
    honest_mul_still_works(&system).await
}

#[tokio::test]
async fn cross_site_writes_from_a_browser_are_refused_and_curl_is_not() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("OPS", "mul")]).await?;
    let attempts = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("origin", "http://evil.example"),
    ];
    for (header, value) in attempts {
        for (path, body) in [
            (
                "/workers",
                registration("evil", "http://127.0.0.2:9", 1).to_string(),
            ),
            ("/tasks", json!({"op": "mul", "args": [1, 2]}).to_string()),
        ] {
            let response = system
                .client
                .post(system.url(path))
                .header("content-type", "text/plain")
                .header(header, value)
                .body(body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let answer: Value = response.json().await?;
            assert_eq!(status, 403, "{header}: {value} on {path}: {answer}");
            assert!(answer["error"].is_string());
        }
    }
    let stats: Value = system.get_json("/stats").await?;
    assert_eq!(
        stats["by_status"].get("queued"),
        None,
        "nothing was queued: {stats}"
    );
    assert_eq!(system.workers().await?.len(), 1, "nobody registered");
    honest_mul_still_works(&system).await
}

#[tokio::test]
async fn worker_urls_must_be_origins_and_never_the_planner_itself() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("OPS", "mul")]).await?;
    let own = system.planner.url();
    let bad = [
        format!("{own}/tasks/random?count=100000#"),
        "http://127.0.0.2:9/tasks".to_string(),
        "http://127.0.0.2:9?x=1".to_string(),
        "http://user:pw@127.0.0.2:9".to_string(),
        own.clone(),
        format!("http://localhost:{}", system.planner.addr.port()),
        "ftp://127.0.0.2:9".to_string(),
    ];
    for url in bad {
        let (status, body) = system
            .post_json("/workers", &registration("ssrf", &url, 1))
            .await?;
        assert_eq!(status, 400, "{url}: {body}");
        let (status, body) = system
            .post_json("/register", &json!({"id": "ssrf", "url": url}))
            .await?;
        assert_eq!(status, 400, "legacy {url}: {body}");
    }
    assert_eq!(system.workers().await?.len(), 1);
    honest_mul_still_works(&system).await
}

#[tokio::test]
async fn slots_beyond_the_documented_maximum_are_refused() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("OPS", "mul")]).await?;
    for slots in [0u64, u64::from(wire::MAX_SLOTS) + 1, 4_294_967_295] {
        let (status, body) = system
            .post_json(
                "/workers",
                &registration("greedy", "http://127.0.0.2:9", slots),
            )
            .await?;
        assert_eq!(status, 400, "slots {slots}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("slots"),
            "{body}"
        );
    }
    honest_mul_still_works(&system).await
}

#[tokio::test]
async fn a_second_planner_on_the_same_data_dir_exits_naming_the_holder() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("OPS", "mul")]).await?;
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        planner_command()?
            .env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("DATA_DIR", system.dir.path().join("planner-data"))
            .output(),
    )
    .await??;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("in use by another planner") && last.contains("pid"),
        "one line naming the holder: {stderr}"
    );
    honest_mul_still_works(&system).await
}

/// Attack 7: one submission with 50,000 made-up op names made `/metrics`
/// 14.1 MB and `/stats` 3.85 MB. Ops no worker offered now count as
/// `op="other"`.
#[tokio::test]
async fn made_up_op_names_count_as_other_in_metrics_and_stats() -> anyhow::Result<()> {
    const NAMES: usize = 50_000;
    let system = System::with_workers(&[], 1, &[("OPS", "mul")]).await?;
    let tasks: Vec<Value> = (0..NAMES)
        .map(|i| json!({"op": format!("zz{i}"), "args": []}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    assert_eq!(ids.len(), NAMES);
    honest_mul_still_works(&system).await?;

    let stats: Value = system.get_json("/stats").await?;
    let ops: Vec<&String> = stats["by_op"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert!(
        ops.iter()
            .all(|op| ["add", "mul", "other"].contains(&op.as_str())),
        "{ops:?}"
    );
    assert_eq!(
        stats["by_op"]["other"]["queued"], NAMES,
        "{}",
        stats["by_op"]
    );
    let stats_len = stats.to_string().len();
    let metrics = system
        .client
        .get(system.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    println!(
        "after {NAMES} made-up op names: /metrics {} bytes, /stats {stats_len} bytes",
        metrics.len()
    );
    assert!(!metrics.contains("zz1"), "a made-up op got a label");
    let other_queued = metrics
        .lines()
        .find_map(|line| line.strip_prefix(r#"planner_queue_depth{op="other"} "#))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(other_queued, Some(NAMES as f64), "{metrics}");
    assert!(metrics.len() < 100_000, "{} bytes", metrics.len());
    Ok(())
}

/// The worker refuses cross-site writes too (the planner did already): a
/// page in a browser on the worker's machine can't run tasks or swap modules
/// there, even with `AUTH=off`.
#[tokio::test]
async fn cross_site_writes_to_a_worker_are_refused_and_curl_is_not() -> anyhow::Result<()> {
    let mut system = System::start(&[("AUTH", "off")]).await?;
    let worker = system.add_worker("w", &[("OPS", "mul")]).await?.url();
    let task = json!({"id": 1, "op": "mul", "args": [6, 7]});
    for (header, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        for request in [
            system.client.post(format!("{worker}/tasks")).json(&task),
            system.client.delete(format!("{worker}/ops/mul")),
            system
                .client
                .post(format!("{worker}/mult"))
                .json(&json!({"a": 6, "b": 7})),
        ] {
            let response = request.header(header, value).send().await?;
            assert_eq!(response.status(), 403, "{header}: {value}");
            assert!(response.json::<Value>().await?["error"].is_string());
        }
    }
    let ops: Vec<Value> = system
        .client
        .get(format!("{worker}/ops"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ops.len(), 1, "mul was not removed");
    let answer: Value = system
        .client
        .post(format!("{worker}/tasks"))
        .json(&task)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["result"], 42, "{answer}");
    Ok(())
}
