//! The original exercise's wire protocol, both directions.

use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::routing::post;
use e2e::{System, poll, worker_command};
use launcher::process::Service;
use serde_json::{Value, json};
use wire::planner::TaskStatus;

#[tokio::test]
async fn a_worker_speaks_the_exercise_routes() -> anyhow::Result<()> {
    // As next to the exercise's planner, which has no token to present.
    let mut system = System::start(&[("AUTH", "off")]).await?;
    let url = system
        .add_worker("mul-only", &[("OPS", "mul")])
        .await?
        .url();
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(format!("{url}/")).send().await?.text().await?,
        "ready to work mul-only"
    );
    let answer: Value = client
        .post(format!("{url}/mult"))
        .json(&json!({"a": 6, "b": 7}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["res"], 42);
    assert_eq!(answer["id"], "mul-only");
    assert!(answer["duration"].is_u64());
    let missing = client
        .post(format!("{url}/add"))
        .json(&json!({"a": 1, "b": 2}))
        .send()
        .await?;
    assert_eq!(
        missing.status(),
        404,
        "a worker without the op answers 404 on its route"
    );
    let ops: Vec<Value> = client
        .get(format!("{url}/ops"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0]["name"], "mul");
    assert_eq!(ops[0]["arity"], 2);
    assert_eq!(ops[0]["source"], "embedded");
    Ok(())
}

#[tokio::test]
async fn seed_env_mult_and_add_select_the_ops_when_ops_is_unset() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system
        .add_worker("adder", &[("MULT", "false")])
        .await?
        .url();
    let ops: Vec<Value> = reqwest::get(format!("{url}/ops")).await?.json().await?;
    assert_eq!(
        ops.iter()
            .map(|o| o["name"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["add"]
    );
    Ok(())
}

#[tokio::test]
async fn legacy_workers_registered_by_register_get_tasks_and_a_404_teaches_the_planner()
-> anyhow::Result<()> {
    // The exercise's workers present no token: the planner is told so.
    let mut system = System::start(&[("AUTH", "off")]).await?;
    // Our worker binary speaks the legacy routes; its own registration goes
    // nowhere (no planner on port 9), so only the legacy record exists.
    let mut legacy_ids = Vec::new();
    for (id, ops) in [("legacy-mul", "mul"), ("legacy-add", "add")] {
        let mut cmd = worker_command()?;
        cmd.env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("PLANNER", "http://127.0.0.1:9")
            .env("OPS", ops)
            .env("AUTH", "off")
            .env("WORKER_ID", id);
        let service = Service::start(id, cmd, &system.dir.path().join(format!("{id}.log"))).await?;
        let (status, body) = system
            .post_json("/register", &json!({"url": service.url(), "id": id}))
            .await?;
        assert_eq!(status, 200, "{body}");
        legacy_ids.push(id);
        system.workers.push(service);
    }
    let listed: Vec<Value> = system.get_json("/").await?;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|w| w["legacy"] == true));

    // Both idle and alike, the planner tries the lower id first: a `mul`
    // goes to legacy-add, which answers 404, and is then run by legacy-mul.
    let (status, first) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [6, 7]}))
        .await?;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (&first["result"], &first["worker"]),
        (&json!(42), &json!("legacy-mul"))
    );
    let taught = system.workers().await?;
    let adder = taught
        .iter()
        .find(|w| w.id == "legacy-add")
        .context("legacy-add")?;
    assert_eq!(
        (adder.lacks.as_slice(), adder.wrong_op),
        (&["mul".to_string()][..], 1)
    );

    let tasks: Vec<Value> = (0..10)
        .map(|i| json!({"op": if i % 2 == 0 { "add" } else { "mul" }, "args": [i, 2]}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    let views = system.wait_final(&ids, Duration::from_secs(30)).await?;
    for view in &views {
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
        assert_eq!(view.result, e2e::expected(&view.op, &view.args));
        assert_eq!(
            view.worker.as_deref(),
            Some(if view.op == "add" {
                "legacy-add"
            } else {
                "legacy-mul"
            })
        );
    }
    let workers = system.workers().await?;
    let learned: Vec<(String, Vec<String>)> = workers
        .iter()
        .map(|w| (w.id.clone(), w.lacks.clone()))
        .collect();
    // Each legacy worker was tried at most once for the op it lacks, then never again.
    for worker in &workers {
        assert!(worker.wrong_op <= 1, "{learned:?}");
    }
    assert!(
        workers
            .iter()
            .any(|w| w.id == "legacy-add" && w.lacks == ["mul"] && w.wrong_op == 1),
        "{learned:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_worker_registers_the_exercise_way_with_a_planner_that_only_has_register()
-> anyhow::Result<()> {
    // A stand-in for the exercise's JS planner: it has `POST /register` only.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/register",
        post(move |Json(body): Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let planner_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let mut cmd = worker_command()?;
    cmd.env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env("PLANNER", &planner_url)
        // The exercise's planner has no token to give.
        .env("AUTH", "off")
        .env("WORKER_ID", "old-style");
    let worker = Service::start("old-style", cmd, &dir.path().join("w.log")).await?;
    let registered = poll(Duration::from_secs(10), "a legacy registration", || {
        let got = rx.try_recv().ok();
        async move { got }
    })
    .await?;
    assert_eq!(registered, json!({"url": worker.url(), "id": "old-style"}));
    Ok(())
}
