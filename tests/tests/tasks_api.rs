//! The planner's task API end to end: submit, wait, query, cancel, errors.

use std::time::Duration;

use e2e::System;
use serde_json::{Value, json};
use wire::planner::TaskStatus;

#[tokio::test]
async fn curl_style_submission_with_wait_answers_the_result() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[]).await?;
    // What `curl -d '{"op":"mul","args":[6,7]}' URL?wait=true` sends.
    let response = system
        .client
        .post(system.url("/tasks?wait=true"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"op":"mul","args":[6,7]}"#)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(body["result"], 42, "{body}");
    assert_eq!(body["status"], "done");
    assert_eq!(body["worker"], "w1");
    assert_eq!(body["attempts"], 1);
    assert_eq!(
        body["digest"].as_str().map(str::len),
        Some(64),
        "sha256 hex of the module: {body}"
    );
    Ok(())
}

#[tokio::test]
async fn a_task_is_queryable_listable_and_overflow_fails_it_with_a_reason() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[]).await?;
    let (status, body) = system
        .post_json(
            "/tasks?wait=true",
            &json!({"op": "add", "args": [i64::MAX, 1]}),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["status"], "failed");
    assert!(
        body["error"].as_str().unwrap_or("").contains("overflow"),
        "{body}"
    );

    let ids = system
        .submit_ids(&json!([{"op": "add", "args": [2, 3]}, {"op": "mul", "args": [4, 5]}]))
        .await?;
    let views = system.wait_final(&ids, Duration::from_secs(20)).await?;
    assert_eq!(
        views.iter().map(|v| v.result).collect::<Vec<_>>(),
        vec![Some(5), Some(20)]
    );
    assert!(
        views
            .iter()
            .all(|v| v.started_at_ms.is_some() && v.finished_at_ms >= v.started_at_ms)
    );

    let list: Vec<Value> = system.get_json("/tasks?status=done&op=mul&limit=5").await?;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["result"], 20);
    let failed: Vec<Value> = system.get_json("/tasks?status=failed").await?;
    assert_eq!(failed.len(), 1);

    let stats: Value = system.get_json("/stats").await?;
    assert_eq!(stats["by_status"]["done"], 2, "{stats}");
    assert_eq!(stats["by_status"]["failed"], 1, "{stats}");
    assert_eq!(stats["workers_by_flavor"]["general"], 1, "{stats}");
    Ok(())
}

#[tokio::test]
async fn a_task_no_worker_offers_waits_with_a_reason_and_can_be_cancelled() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    system.add_worker("adder", &[("OPS", "add")]).await?;
    system.wait_for_workers(1).await?;
    let ids = system
        .submit_ids(&json!({"op": "mul", "args": [2, 3]}))
        .await?;
    let view = system.task(ids[0]).await?;
    assert_eq!(view.status, TaskStatus::Queued);
    // (With several replicas on PostgreSQL the reason adds that no other
    // replica has claimed it.)
    assert!(
        view.waiting_for
            .as_deref()
            .is_some_and(|why| why.starts_with("no live worker offers op `mul`")),
        "{view:?}"
    );

    let cancelled = system
        .client
        .delete(system.url(&format!("/tasks/{}", ids[0])))
        .send()
        .await?;
    assert_eq!(cancelled.status(), 200);
    assert_eq!(system.task(ids[0]).await?.status, TaskStatus::Cancelled);
    let again = system
        .client
        .delete(system.url(&format!("/tasks/{}", ids[0])))
        .send()
        .await?;
    assert_eq!(again.status(), 409);
    let missing = system
        .client
        .delete(system.url("/tasks/999999"))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await?;
    assert!(body["error"].is_string());
    Ok(())
}

#[tokio::test]
async fn random_tasks_come_from_startup_and_from_the_api() -> anyhow::Result<()> {
    let mut system = System::start(&[("TASKS", "7")]).await?;
    let (status, body) = system
        .post_json("/tasks/random?count=5", &json!(null))
        .await?;
    assert_eq!(status, 202, "{body}");
    system.add_worker("w1", &[("SLOTS", "4")]).await?;
    let listed: Vec<wire::planner::TaskView> = system.get_json("/tasks?limit=100").await?;
    let ids: Vec<u64> = listed.iter().map(|t| t.id).collect();
    assert_eq!(ids.len(), 12, "7 from TASKS and 5 from the API");
    let views = system.wait_final(&ids, Duration::from_secs(30)).await?;
    for view in views {
        assert_eq!(view.status, TaskStatus::Done);
        assert!(view.args.iter().all(|a| (0..40).contains(a)), "{view:?}");
        assert_eq!(view.result, e2e::expected(&view.op, &view.args));
    }
    // A restart on the same data dir does not enqueue the TASKS batch again.
    system.planner.stop(Duration::from_secs(5)).await;
    system.restart_planner(&[("TASKS", "7")]).await?;
    let stats: Value = system.get_json("/stats").await?;
    assert_eq!(stats["by_status"]["done"], 12, "{stats}");
    assert_eq!(
        stats["by_status"]
            .get("queued")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        0,
        "{stats}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_submissions_get_4xx_json_errors_and_nothing_is_queued() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[]).await?;
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("malformed JSON", r#"{"op": "add", "args": [1,"#, None, 400),
        (
            "wrong type",
            r#"{"op": "add", "args": ["1", 2]}"#,
            None,
            400,
        ),
        (
            "number out of i64 range",
            r#"{"op": "add", "args": [99999999999999999999, 2]}"#,
            None,
            400,
        ),
        (
            "unknown field",
            r#"{"op": "add", "args": [1, 2], "x": 1}"#,
            None,
            400,
        ),
        (
            "invalid op name",
            r#"{"op": "../etc", "args": [1, 2]}"#,
            None,
            400,
        ),
        (
            "wrong arity for a known op",
            r#"{"op": "add", "args": [1, 2, 3]}"#,
            None,
            400,
        ),
        ("empty body", "", None, 400),
        ("empty batch", "[]", None, 400),
        ("not an object", "42", None, 400),
        (
            "wrong content type",
            r#"{"op": "add", "args": [1, 2]}"#,
            Some("text/xml"),
            415,
        ),
        ("invalid UTF-8", "\u{0}", None, 400),
    ];
    for (what, body, content_type, want) in cases {
        let mut request = system
            .client
            .post(system.url("/tasks"))
            .body(body.to_string());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), want, "{what}");
        let body: Value = response.json().await?;
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {body}"
        );
    }
    let bytes = system
        .client
        .post(system.url("/tasks"))
        .body(vec![0xff, 0xfe, 0x7b])
        .send()
        .await?;
    assert_eq!(bytes.status(), 400);
    // Its own connection: the server closes it after refusing the body.
    let huge = reqwest::Client::new()
        .post(system.url("/tasks"))
        .body(vec![b' '; 9 << 20])
        .send()
        .await?;
    assert_eq!(huge.status(), 413);
    let bad_query = system
        .client
        .get(system.url("/tasks?status=sleeping"))
        .send()
        .await?;
    assert_eq!(bad_query.status(), 400);
    assert!(bad_query.json::<Value>().await?["error"].is_string());
    let bad_path = system.client.get(system.url("/tasks/abc")).send().await?;
    assert_eq!(bad_path.status(), 400);
    let no_route = system.client.get(system.url("/nope")).send().await?;
    assert_eq!(no_route.status(), 404);
    assert!(no_route.json::<Value>().await?["error"].is_string());

    let stats: Value = system.get_json("/stats").await?;
    assert_eq!(
        stats["by_status"].as_object().map(|m| m.len()),
        Some(0),
        "nothing was accepted: {stats}"
    );
    Ok(())
}

#[tokio::test]
async fn health_and_readiness_answer() -> anyhow::Result<()> {
    let system = System::start(&[]).await?;
    for path in ["/healthz", "/readyz"] {
        let response = system.client.get(system.url(path)).send().await?;
        assert_eq!(response.status(), 200, "{path}");
    }
    let ready: Value = system.get_json("/readyz").await?;
    assert_eq!(ready["durable"], true, "durable is the default");
    Ok(())
}

#[tokio::test]
async fn a_task_for_an_op_no_worker_offers_fails_after_the_unoffered_timeout() -> anyhow::Result<()>
{
    let mut system = System::start(&[("UNOFFERED_OP_TIMEOUT_MS", "300")]).await?;
    system.add_worker("adder", &[("OPS", "add")]).await?;
    system.wait_for_workers(1).await?;
    let typo = system
        .submit_ids(&json!({"op": "mull", "args": [6, 7]}))
        .await?;
    let fine = system
        .submit_ids(&json!({"op": "add", "args": [6, 7]}))
        .await?;
    let views = system.wait_final(&typo, Duration::from_secs(20)).await?;
    assert_eq!(views[0].status, TaskStatus::Failed, "{:?}", views[0]);
    let error = views[0].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("no worker offered op `mull`"),
        "error: {error}"
    );
    let views = system.wait_final(&fine, Duration::from_secs(20)).await?;
    assert_eq!(views[0].result, Some(13));
    Ok(())
}
