//! Operation modules: the sandbox contract, user ops, refusals.

use std::time::Duration;

use e2e::{System, fixture, fixture_dir, worker_command};
use launcher::process::Service;
use serde_json::json;

#[tokio::test]
async fn a_module_importing_outside_the_contract_is_refused_at_load_naming_the_import()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = worker_command()?;
    cmd.env("PORT", "0")
        .env("OPS", "sneaky")
        .env("OPS_DIR", fixture_dir())
        .env("AUTH", "off")
        .env("PLANNER", "http://127.0.0.1:9");
    let err = match Service::start("sneaky", cmd, &dir.path().join("w.log")).await {
        Ok(_) => panic!("a worker loading a module with a forbidden import must not start"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("imports `read-env`"), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    Ok(())
}

#[tokio::test]
async fn an_unknown_op_stops_the_worker_with_one_clear_line() -> anyhow::Result<()> {
    let output = worker_command()?
        .env("OPS", "nope")
        .env("AUTH", "off")
        .env("PORT", "0")
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("worker: ") && last.contains("op `nope` has no module"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn a_user_op_from_ops_dir_runs_through_the_planner() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    system
        .add_worker(
            "pow-1",
            &[
                ("OPS", "pow"),
                ("OPS_DIR", fixture_dir().to_str().unwrap_or_default()),
            ],
        )
        .await?;
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "pow", "args": [2, 10]}))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 1024);
    let digest = body["digest"].as_str().unwrap_or("").to_string();
    let bytes = std::fs::read(fixture("pow"))?;
    assert_eq!(
        digest,
        sha256_hex(&bytes),
        "the digest names the exact module file"
    );
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "pow", "args": [2, 1, 1]}))
        .await?;
    assert_eq!(
        status, 400,
        "arity is known from the registered module: {body}"
    );
    Ok(())
}

/// Nothing of one call reaches the next, however often a pooled memory slot
/// is reused (with one slot, every call reuses the same one): a module that
/// keeps a counter in its data and values on its heap sees neither.
#[tokio::test]
async fn a_module_never_sees_state_from_an_earlier_call() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    system
        .add_worker(
            "remember-1",
            &[
                ("OPS", "remember"),
                ("SLOTS", "1"),
                ("OPS_DIR", fixture_dir().to_str().unwrap_or_default()),
            ],
        )
        .await?;
    system.wait_for_workers(1).await?;
    // Each call writes its own value over ~64 KiB to 2 MiB of heap.
    let tasks: Vec<serde_json::Value> = (0..60)
        .map(|i| json!({"op": "remember", "args": [i + 1, (i % 4) * 80_000 + 8_000]}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    let views = system.wait_final(&ids, Duration::from_secs(60)).await?;
    let results: Vec<Option<i64>> = views.iter().map(|v| v.result).collect();
    assert_eq!(results, vec![Some(1001); 60], "{views:?}");
    Ok(())
}

#[tokio::test]
async fn a_worker_refuses_bad_task_bodies_with_json_errors() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system.add_worker("w", &[]).await?.url();
    let client = system.client.clone();
    for (what, body, want) in [
        ("malformed", r#"{"id": 1, "op": "add""#, 400),
        (
            "wrong type",
            r#"{"id": "x", "op": "add", "args": [1, 2]}"#,
            400,
        ),
        (
            "unknown op",
            r#"{"id": 1, "op": "div", "args": [1, 2]}"#,
            404,
        ),
        ("wrong arity", r#"{"id": 1, "op": "add", "args": [1]}"#, 422),
        (
            "overflow",
            r#"{"id": 1, "op": "mul", "args": [9223372036854775807, 2]}"#,
            422,
        ),
        ("empty", "", 400),
    ] {
        let response = client
            .post(format!("{url}/tasks"))
            .body(body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), want, "{what}");
        let body: serde_json::Value = response.json().await?;
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    let legacy = client
        .post(format!("{url}/add"))
        .body(r#"{"a": 1}"#)
        .send()
        .await?;
    assert_eq!(legacy.status(), 400);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get(format!("{url}/healthz")).send(),
    )
    .await??;
    Ok(())
}

/// The built-in guests allocate from a 64 KiB static arena (ops/guest-arena);
/// a call whose arguments alone are larger goes on in memory the arena grows,
/// and the op answers as it would with any allocator.
#[tokio::test]
async fn a_call_outgrowing_the_guest_s_arena_still_runs_to_the_op_s_answer() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system.add_worker("w", &[]).await?.url();
    // 20,000 arguments: 160 KB of `list<s64>` in the guest, past the arena
    // at once (and 40 KB of JSON, within the worker's 64 KiB body limit).
    let args = vec![0i64; 20_000];
    let response = system
        .client
        .post(format!("{url}/tasks"))
        .json(&json!({"id": 1, "op": "add", "args": args}))
        .send()
        .await?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "add takes 2 arguments, got 20000", "{body}");
    // And the next call, in a reused slot, is back within the arena.
    let response = system
        .client
        .post(format!("{url}/tasks"))
        .json(&json!({"id": 2, "op": "add", "args": [40, 2]}))
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["result"], 42, "{body}");
    Ok(())
}

/// A call is first made inline with a deadline of one epoch tick (≤ 5 ms);
/// one that takes longer is made again on a blocking thread under the rest
/// of its deadline. It must still answer right; and once an op's calls take
/// longer than the tick, its next calls go to a blocking thread at once, and
/// stay cancellable there.
#[tokio::test]
async fn a_call_past_the_brief_inline_attempt_finishes_on_a_blocking_thread_and_stays_cancellable()
-> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let worker = system
        .add_worker(
            "w",
            &[
                ("OPS", "add,slow"),
                ("OPS_DIR", fixture_dir().to_str().unwrap_or_default()),
                ("OP_TIMEOUT_MS", "120000"),
            ],
        )
        .await?
        .url();
    system.wait_for_workers(1).await?;
    // 200 million dependent rounds: a tenth of a second at the very least,
    // so the op's average call (1/8 of this one) outlasts the 5 ms tick.
    let (rounds, seed) = (200_000_000, 7);
    let (status, body) = system
        .post_json(
            "/tasks?wait=true&timeout_ms=60000",
            &json!({"op": "slow", "args": [rounds, seed]}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], xorshift(rounds, seed), "{body}");
    assert_eq!(
        metric(&worker, MOVED_AFTER_INLINE).await?,
        1.0,
        "the call was made again off the async threads"
    );

    // Practically endless: only cancelling stops it.
    let id = system
        .submit_ids(&json!({"op": "slow", "args": [i64::MAX, seed]}))
        .await?[0];
    e2e::poll(
        Duration::from_secs(20),
        "the endless call to start",
        || async {
            let moved = metric(&worker, MOVED_AT_ONCE).await;
            (moved.ok()? == 1.0).then_some(())
        },
    )
    .await?;
    assert_eq!(
        metric(&worker, MOVED_AFTER_INLINE).await?,
        1.0,
        "no inline attempt for an op whose calls outlast it"
    );
    let response = system
        .client
        .delete(system.url(&format!("/tasks/{id}")))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    e2e::poll(
        Duration::from_secs(10),
        "the call to stop, cancelled",
        || async {
            let key = r#"worker_tasks_total{op="slow",outcome="cancelled"}"#;
            (metric(&worker, key).await.ok()? == 1.0).then_some(())
        },
    )
    .await?;
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "add", "args": [40, 2]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
    Ok(())
}

const MOVED_AFTER_INLINE: &str = r#"worker_wasm_calls_moved_total{op="slow",first="inline"}"#;
const MOVED_AT_ONCE: &str = r#"worker_wasm_calls_moved_total{op="slow",first="blocking"}"#;

/// The `slow` fixture's computation, natively.
fn xorshift(rounds: i64, seed: i64) -> i64 {
    let mut x = seed as u64 | 1;
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x as i64
}

/// One series of a worker's `/metrics` (0 when absent).
async fn metric(worker: &str, series: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{worker}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(e2e::series_value(&text, series))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
