//! Hostile modules and hostile input: each fails only itself.

use std::time::{Duration, Instant};

use e2e::{System, fixture_dir};
use serde_json::{Value, json};

#[tokio::test]
async fn each_hostile_module_fails_only_its_task_with_the_limit_it_hit() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let dir = fixture_dir();
    let ops_dir = dir.to_str().unwrap_or_default();
    system
        .add_worker(
            "sandbox",
            &[
                ("OPS", "add,spin,hog,crash"),
                ("OPS_DIR", ops_dir),
                ("OP_TIMEOUT_MS", "300"),
                ("OP_MEMORY_MB", "8"),
                ("SLOTS", "2"),
            ],
        )
        .await?;
    system.wait_for_workers(1).await?;
    for (op, expected_error) in [
        ("spin", "deadline exceeded: the call ran longer than 300 ms"),
        ("hog", "memory limit exceeded"),
        ("crash", "the module trapped: wasm `unreachable` executed"),
    ] {
        let started = Instant::now();
        let (status, body) = system
            .post_json("/tasks?wait=true", &json!({"op": op, "args": [1, 2]}))
            .await?;
        assert_eq!(status, 422, "{op}: {body}");
        assert_eq!(body["status"], "failed", "{op}: {body}");
        let error = body["error"].as_str().unwrap_or("");
        assert!(error.contains(expected_error), "{op}: {error}");
        assert_eq!(
            body["attempts"], 1,
            "a module's failure is final, not retried: {body}"
        );
        println!("{op}: failed in {:?}: {error}", started.elapsed());
        // The same worker serves a healthy task right after.
        let (status, body) = system
            .post_json("/tasks?wait=true", &json!({"op": "add", "args": [2, 2]}))
            .await?;
        assert_eq!(
            (status, &body["result"]),
            (200, &json!(4)),
            "after {op}: {body}"
        );
    }
    let workers = system.workers().await?;
    assert_eq!(workers.len(), 1, "the worker is still registered and alive");

    // While a runaway call holds one slot, the other slot keeps serving.
    let spinning = system
        .submit_ids(&json!({"op": "spin", "args": [1, 2]}))
        .await?;
    let mut healthy = Vec::new();
    for i in 0..10 {
        let (status, body) = system
            .post_json("/tasks?wait=true", &json!({"op": "add", "args": [i, 1]}))
            .await?;
        assert_eq!(status, 200, "{body}");
        healthy.push(body["finished_at_ms"].as_u64().unwrap_or(u64::MAX));
    }
    let spin = system
        .wait_final(&spinning, Duration::from_secs(10))
        .await?
        .remove(0);
    let spin_end = spin.finished_at_ms.unwrap_or(0);
    // Had the spin held both slots, nothing could finish before its 300 ms
    // deadline. (Not all ten: on a loaded machine ten round trips may take
    // longer than the spin lives.)
    let during = healthy.iter().filter(|&&end| end <= spin_end).count();
    assert!(
        healthy[0] <= spin_end && during >= 1,
        "healthy tasks finished while the spin ran: {healthy:?} vs {spin_end}"
    );
    Ok(())
}

/// Bad inputs for a JSON body, each a (label, bytes, content type).
fn bad_bodies() -> Vec<(String, Vec<u8>, &'static str)> {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut cases: Vec<(String, Vec<u8>, &'static str)> = vec![
        ("empty".into(), vec![], "application/json"),
        ("malformed".into(), b"{\"op\":".to_vec(), "application/json"),
        ("wrong types".into(), br#"{"op": 1, "args": "x", "id": [], "a": {}, "b": null, "url": 5}"#.to_vec(), "application/json"),
        ("huge number".into(), br#"{"op": "add", "args": [1e400, 2], "id": 18446744073709551616, "a": 1e99, "b": -9223372036854775809}"#.to_vec(), "application/json"),
        ("deeply nested".into(), deep.into_bytes(), "application/json"),
        ("invalid utf-8".into(), vec![b'{', 0xff, 0xfe, b'}'], "application/json"),
        ("null".into(), b"null".to_vec(), "application/json"),
        ("wrong content type".into(), br#"{"op": "add", "args": [1, 2]}"#.to_vec(), "image/png"),
        ("multi-megabyte".into(), vec![b'['; 12 << 20], "application/json"),
    ];
    // A deterministic spray of random bytes.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..20 {
        let len = 1 + (i * 37) % 300;
        let bytes = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state & 0xff) as u8
            })
            .collect();
        cases.push((format!("random bytes #{i}"), bytes, "application/json"));
    }
    cases
}

async fn spray(base: &str, routes: &[(&str, &str)], token: Option<&str>) -> anyhow::Result<usize> {
    let mut checked = 0;
    for (method, path) in routes {
        for (label, body, content_type) in bad_bodies() {
            // A fresh client: a refused oversized body closes the connection.
            let client = reqwest::Client::new();
            let mut request = client
                .request(method.parse()?, format!("{base}{path}"))
                .header("content-type", content_type)
                .body(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let oversized = label == "multi-megabyte";
            let response = match request.send().await {
                Ok(response) => response,
                // The server answered 413 and closed before the client had
                // written the whole body: refused, which is the point.
                Err(err) if oversized && err.is_request() => {
                    checked += 1;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            let status = response.status();
            let text = response.text().await?;
            assert!(
                status.is_client_error(),
                "{method} {path} with {label}: {status} {text}"
            );
            let parsed: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{method} {path} {label}: not JSON ({e}): {text}"))?;
            assert!(
                parsed["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {path} {label}: {text}"
            );
            checked += 1;
        }
    }
    Ok(checked)
}

#[tokio::test]
async fn malformed_bodies_on_every_route_get_a_4xx_json_error_and_nothing_crashes()
-> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", "fuzz-token")]).await?;
    let worker = system.add_worker("w", &[]).await?.url();
    system.wait_for_workers(1).await?;
    let planner_routes = [
        ("POST", "/tasks"),
        ("POST", "/tasks?wait=true"),
        ("POST", "/workers"),
        ("POST", "/register"),
    ];
    let worker_routes = [
        ("POST", "/tasks"),
        ("POST", "/add"),
        ("POST", "/mult"),
        ("PUT", "/ops/add"),
    ];
    let planner_checked = spray(&system.planner.url(), &planner_routes, Some("fuzz-token")).await?;
    let worker_checked = spray(&worker, &worker_routes, Some("fuzz-token")).await?;
    println!(
        "bad requests answered with a 4xx JSON error: planner {planner_checked}, worker {worker_checked}"
    );
    // Both still serve, and the worker's add module is unchanged.
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "add", "args": [20, 22]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
    let ops: Vec<Value> = reqwest::get(format!("{worker}/ops")).await?.json().await?;
    assert!(ops.iter().all(|o| o["source"] == "embedded"), "{ops:?}");
    tokio::time::timeout(
        Duration::from_secs(2),
        reqwest::get(format!("{worker}/healthz")),
    )
    .await??;
    Ok(())
}

/// Issue 12, attack 9: a module describing itself with a 2.8 MB doc made a
/// worker unregistrable. Now the worker refuses it at load, saying why, and
/// a `describe()` that never returns is one readable error, not a wasmtime
/// backtrace; the worker stays registered and serving throughout.
#[tokio::test]
async fn modules_whose_description_breaks_the_limits_are_refused_at_load() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system
        .add_worker("w", &[("OP_TIMEOUT_MS", "300")])
        .await?
        .url();
    system.wait_for_workers(1).await?;
    let client = system.client.clone();
    for (op, expected) in [
        ("bigdoc", "doc is 2800000 bytes, over the 1024-byte limit"),
        (
            "stall",
            "describe() failed: deadline exceeded: the call ran longer than 300 ms",
        ),
    ] {
        let module = std::fs::read(e2e::fixture(op))?;
        let response = client
            .put(format!("{url}/ops/{op}"))
            .body(module)
            .send()
            .await?;
        assert_eq!(response.status(), 400, "{op}");
        let error = response.json::<Value>().await?["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(expected), "{op}: {error}");
        assert!(
            !error.contains('\n') && !error.contains("backtrace"),
            "{op}: one readable line: {error}"
        );
    }
    // Still registered (a heartbeat and a re-registration both went
    // through) and serving.
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "add", "args": [1, 1]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(2)), "{body}");
    let workers = system.workers().await?;
    let ops: Vec<&str> = workers[0]
        .ops
        .iter()
        .flatten()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(ops, ["add", "mul"]);
    Ok(())
}
