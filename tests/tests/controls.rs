//! The task controls end to end (issue 13): deadlines, cancelling a running
//! task, retries with backoff, idempotent submission and priorities, with
//! real planner and worker processes. Also run on PostgreSQL
//! (`E2E_STORE=postgres`, see `scripts/test`).

use std::time::{Duration, Instant};

use e2e::{System, fixture, fixture_dir, poll, wait_until_busy};
use serde_json::{Value, json};
use wire::TaskId;
use wire::planner::{AttemptErrorKind, TaskStatus, TaskView};

/// A planner and one single-slot worker `w1` offering `add`, `mul` and the
/// `spin` fixture (which never returns), whose own call deadline is far
/// away: only the planner's controls stop a spinning call here.
async fn system_with_spin(planner_env: &[(&str, &str)]) -> anyhow::Result<System> {
    let ops_dir = fixture_dir();
    let ops_dir = ops_dir.to_str().unwrap_or_default();
    System::with_workers(
        planner_env,
        1,
        &[
            ("OPS", "add,mul,spin"),
            ("OPS_DIR", ops_dir),
            ("OP_TIMEOUT_MS", "120000"),
        ],
    )
    .await
}

/// Swaps `mul` on `worker` for the fixture `module` (`mul` or `mul_v2`).
async fn put_mul(system: &System, worker: &str, module: &str) -> anyhow::Result<()> {
    let response = system
        .client
        .put(format!("{worker}/ops/mul"))
        .body(std::fs::read(fixture(module))?)
        .send()
        .await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    Ok(())
}

async fn wait_running(system: &System, id: TaskId) -> anyhow::Result<TaskView> {
    let view = poll(Duration::from_secs(20), "the task to run", || async {
        system
            .task(id)
            .await
            .ok()
            .filter(|v| v.status == TaskStatus::Running)
    })
    .await?;
    wait_until_busy(&system.worker("w1").url(), Duration::from_secs(10)).await?;
    Ok(view)
}

/// Submits `add 20 22` and waits for it: it can only run once `w1`'s one
/// slot is free again.
async fn add_runs_on_w1(system: &System) -> anyhow::Result<TaskView> {
    let (status, body) = system
        .post_json(
            "/tasks?wait=true&timeout_ms=20000",
            &json!({"op": "add", "args": [20, 22]}),
        )
        .await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    let view: TaskView = serde_json::from_value(body)?;
    assert_eq!(view.result, Some(42), "{view:?}");
    assert_eq!(view.worker.as_deref(), Some("w1"), "{view:?}");
    Ok(view)
}

#[tokio::test]
async fn a_task_past_its_deadline_expires_queued_or_running_and_frees_its_slot()
-> anyhow::Result<()> {
    let system = system_with_spin(&[]).await?;
    // The spin takes w1's only slot until its deadline...
    let spin = system
        .submit_ids(&json!({"op": "spin", "args": [1, 2], "timeout_ms": 1500}))
        .await?[0];
    wait_running(&system, spin).await?;
    // ...so this one waits in the queue past its own.
    let queued = system
        .submit_ids(&json!({"op": "add", "args": [1, 2], "timeout_ms": 300}))
        .await?[0];
    let view = system
        .wait_final(&[queued], Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(view.status, TaskStatus::Expired, "{view:?}");
    assert!(
        view.error
            .as_deref()
            .is_some_and(|e| e.contains("still queued")),
        "{view:?}"
    );
    assert_eq!(view.started_at_ms, None, "it never ran: {view:?}");

    let view = system
        .wait_final(&[spin], Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(view.status, TaskStatus::Expired, "{view:?}");
    assert!(
        view.error
            .as_deref()
            .is_some_and(|e| e.contains("while running on worker w1")),
        "{view:?}"
    );
    let deadline = view.deadline_ms.unwrap_or_default();
    assert_eq!(deadline, view.submitted_at_ms + 1500, "{view:?}");
    // The interrupted call freed the slot: the next task runs there.
    let after = add_runs_on_w1(&system).await?;
    println!(
        "running task expired {} ms after its deadline; the next task on its worker finished {} ms after the deadline",
        view.finished_at_ms
            .unwrap_or_default()
            .saturating_sub(deadline),
        after
            .finished_at_ms
            .unwrap_or_default()
            .saturating_sub(deadline),
    );

    let expired: Vec<TaskView> = system.get_json("/tasks?status=expired").await?;
    assert_eq!(expired.len(), 2, "{expired:?}");
    if !e2e::e2e_store_is_postgres() {
        // (On PostgreSQL /stats counts what this replica holds; the queued
        // task expired in the database.)
        let stats: Value = system.get_json("/stats").await?;
        assert_eq!(stats["by_status"]["expired"], 2, "{stats}");
    }
    Ok(())
}

#[tokio::test]
async fn the_planner_default_deadline_applies_to_tasks_without_one() -> anyhow::Result<()> {
    let system = system_with_spin(&[("TASK_TIMEOUT_MS", "400")]).await?;
    let spin = system
        .submit_ids(&json!({"op": "spin", "args": [1, 2]}))
        .await?[0];
    let view = system
        .wait_final(&[spin], Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(view.status, TaskStatus::Expired, "{view:?}");
    assert_eq!(view.deadline_ms, Some(view.submitted_at_ms + 400));
    add_runs_on_w1(&system).await?;
    Ok(())
}

#[tokio::test]
async fn cancelling_a_running_task_interrupts_its_call_and_frees_the_slot() -> anyhow::Result<()> {
    let system = system_with_spin(&[]).await?;
    let spin = system
        .submit_ids(&json!({"op": "spin", "args": [1, 2]}))
        .await?[0];
    wait_running(&system, spin).await?;
    let asked = Instant::now();
    let response = system
        .client
        .delete(system.url(&format!("/tasks/{spin}")))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let view: TaskView = response.json().await?;
    assert_eq!(view.status, TaskStatus::Cancelled, "{view:?}");
    let after = add_runs_on_w1(&system).await?;
    println!(
        "cancel of a spinning task to the next task done on its worker: {} ms",
        asked.elapsed().as_millis()
    );
    assert_eq!(after.attempts, 1, "the worker did not refuse it busy");
    assert_eq!(system.task(spin).await?.status, TaskStatus::Cancelled);

    // In bulk, by filter: every running task of an op.
    let spin = system
        .submit_ids(&json!({"op": "spin", "args": [3, 4]}))
        .await?[0];
    wait_running(&system, spin).await?;
    let (status, report) = system
        .post_json("/tasks/cancel", &json!({"status": "running", "op": "spin"}))
        .await?;
    assert_eq!((status, &report["cancelled"]), (200, &json!(1)), "{report}");
    assert_eq!(system.task(spin).await?.status, TaskStatus::Cancelled);
    add_runs_on_w1(&system).await?;

    // The worker's cancel route is the planner's: it needs the token, and
    // says when there is nothing to interrupt.
    let worker = system.worker("w1").url();
    let anonymous = reqwest::Client::new()
        .delete(format!("{worker}/tasks/{spin}"))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401);
    let idle = system
        .client
        .delete(format!("{worker}/tasks/{spin}"))
        .send()
        .await?;
    assert_eq!(idle.status(), 404);
    let body: Value = idle.json().await?;
    assert!(body["error"].is_string(), "{body}");
    Ok(())
}

#[tokio::test]
async fn an_op_failure_is_retried_with_backoff_until_it_succeeds() -> anyhow::Result<()> {
    let backoff_ms: u64 = 1500;
    let system = System::with_workers(
        &[("RETRY_BACKOFF_MS", &backoff_ms.to_string())],
        1,
        &[("OPS", "mul")],
    )
    .await?;
    let worker = system.worker("w1").url();
    // The v2 test module computes a * b + 1,000,000: it overflows on
    // i64::MAX * 1, which v1 computes. v2 fails the task twice, then v1
    // (put back meanwhile) succeeds.
    put_mul(&system, &worker, "mul_v2").await?;
    let id = system
        .submit_ids(&json!({"op": "mul", "args": [i64::MAX, 1], "retries": 3}))
        .await?[0];
    let failing = poll(Duration::from_secs(20), "two failed attempts", || async {
        system
            .task(id)
            .await
            .ok()
            .filter(|v| v.attempt_errors.len() >= 2)
    })
    .await?;
    assert_eq!(failing.status, TaskStatus::Queued, "{failing:?}");
    assert!(
        failing.retry_at_ms.is_some() && failing.waiting_for.is_some(),
        "waiting out its backoff: {failing:?}"
    );
    put_mul(&system, &worker, "mul").await?;
    let view = system
        .wait_final(&[id], Duration::from_secs(30))
        .await?
        .remove(0);
    assert_eq!(view.status, TaskStatus::Done, "{view:?}");
    assert_eq!(view.result, Some(i64::MAX));
    assert_eq!((view.attempts, view.retried, view.retries), (3, 2, 3));
    let errors = &view.attempt_errors;
    assert_eq!(errors.len(), 2, "{view:?}");
    for (n, error) in errors.iter().enumerate() {
        assert_eq!(error.attempt, n as u32 + 1);
        assert_eq!(error.kind, AttemptErrorKind::Op);
        assert!(error.error.contains("overflow"), "{error:?}");
        assert_eq!(error.worker.as_deref(), Some("w1"));
    }
    // Exponential backoff: the first retry waited at least the base, the
    // second at least twice that.
    let second_gap = errors[1].at_ms - errors[0].at_ms;
    let third_gap = view.started_at_ms.unwrap_or_default() - errors[1].at_ms;
    assert!(second_gap >= backoff_ms, "{second_gap} ms: {view:?}");
    assert!(third_gap >= 2 * backoff_ms, "{third_gap} ms: {view:?}");
    println!(
        "retry gaps: {second_gap} ms, then {third_gap} ms (backoff {backoff_ms} ms, doubling)"
    );

    // Out of retries: the last error is the task's.
    put_mul(&system, &worker, "mul_v2").await?;
    let (status, body) = system
        .post_json(
            "/tasks?wait=true",
            &json!({"op": "mul", "args": [i64::MAX, 1], "retries": 1}),
        )
        .await?;
    assert_eq!(status, 422, "{body}");
    let view: TaskView = serde_json::from_value(body)?;
    assert_eq!((view.attempts, view.retried), (2, 1), "{view:?}");
    assert_eq!(view.attempt_errors.len(), 1);
    assert!(
        view.error
            .as_deref()
            .is_some_and(|e| e.contains("overflow"))
    );
    Ok(())
}

async fn submit_keyed(
    system: &System,
    key: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value, bool)> {
    let response = system
        .client
        .post(system.url("/tasks"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    Ok((status, response.json().await?, replayed))
}

#[tokio::test]
async fn a_resubmission_with_its_idempotency_key_returns_the_same_ids_across_a_restart()
-> anyhow::Result<()> {
    let mut system = System::with_workers(&[], 1, &[]).await?;
    let task = json!({"op": "mul", "args": [6, 7], "priority": 2});
    let (status, first, replayed) = submit_keyed(&system, "order-1234", &task).await?;
    assert_eq!((status, replayed), (202, false), "{first}");
    let ids: Vec<TaskId> = serde_json::from_value(first["ids"].clone())?;
    let done = system.wait_final(&ids, Duration::from_secs(20)).await?;
    assert_eq!(done[0].result, Some(42));

    let (status, again, replayed) = submit_keyed(&system, "order-1234", &task).await?;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again["ids"], first["ids"]);
    // The same key for other work is refused, with a JSON error.
    let other = json!({"op": "mul", "args": [6, 8]});
    let (status, refused, _) = submit_keyed(&system, "order-1234", &other).await?;
    assert_eq!(status, 409, "{refused}");
    assert!(refused["error"].is_string(), "{refused}");
    // A batch: the key names the whole of it.
    let batch = json!([{"op": "add", "args": [1, 1]}, {"op": "add", "args": [2, 2]}]);
    let (_, batch_first, _) = submit_keyed(&system, "batch-7", &batch).await?;
    let (status, batch_again, replayed) = submit_keyed(&system, "batch-7", &batch).await?;
    assert_eq!((status, replayed), (202, true));
    assert_eq!(batch_again["ids"], batch_first["ids"]);
    assert_eq!(batch_first["ids"].as_array().map(Vec::len), Some(2));
    // Keys are bounded.
    let (status, long, _) = submit_keyed(&system, &"k".repeat(256), &task).await?;
    assert_eq!(status, 400, "{long}");

    // After a restart (a crash: SIGKILL), the key still holds.
    system.planner.kill();
    system.planner.wait(Duration::from_secs(10)).await?;
    system.restart_planner(&[]).await?;
    system.wait_for_workers(1).await?;
    let (status, after, replayed) = submit_keyed(&system, "order-1234", &task).await?;
    assert_eq!((status, replayed), (202, true), "{after}");
    assert_eq!(after["ids"], first["ids"]);
    let (status, waited) = {
        let response = system
            .client
            .post(system.url("/tasks?wait=true"))
            .header("Idempotency-Key", "order-1234")
            .json(&task)
            .send()
            .await?;
        (response.status().as_u16(), response.json::<Value>().await?)
    };
    assert_eq!(status, 200, "{waited}");
    assert_eq!(waited["id"], first["ids"][0]);
    assert_eq!(waited["result"], 42);
    // It ran once: the only mul task there is, run once by the worker.
    let muls: Vec<TaskView> = system.get_json("/tasks?op=mul").await?;
    assert_eq!(muls.len(), 1, "{muls:?}");
    assert_eq!(muls[0].attempts, 1);
    let metrics = reqwest::get(format!("{}/metrics", system.worker("w1").url()))
        .await?
        .text()
        .await?;
    let runs: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("worker_tasks_total{") && l.contains("op=\"mul\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(runs, 1.0, "{metrics}");
    Ok(())
}

#[tokio::test]
async fn higher_priority_runs_first_under_a_backlog_fifo_within_a_priority() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("WORK_MS", "150")]).await?;
    // The worker is busy: everything submitted meanwhile waits.
    let blocker = system
        .submit_ids(&json!({"op": "add", "args": [0, 0]}))
        .await?[0];
    wait_running(&system, blocker).await?;
    let priorities = [0, 5, -3, 5, 10, 0, -10];
    let batch: Vec<Value> = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"op": "add", "args": [i, 0], "priority": p}))
        .collect();
    let ids = system.submit_ids(&Value::Array(batch)).await?;
    let views = system.wait_final(&ids, Duration::from_secs(30)).await?;
    assert!(views.iter().all(|v| v.status == TaskStatus::Done));
    let mut by_start: Vec<&TaskView> = views.iter().collect();
    by_start.sort_by_key(|v| (v.started_at_ms, v.id));
    let order: Vec<i64> = by_start.iter().map(|v| v.args[0]).collect();
    // Indexes into `priorities`: 10, then the two 5s in submission order,
    // the two 0s, -3, -10.
    assert_eq!(order, [4, 1, 3, 0, 5, 2, 6], "{by_start:?}");
    assert_eq!(views[4].priority, 10);
    Ok(())
}

#[tokio::test]
async fn controls_out_of_range_are_refused_with_json_errors() -> anyhow::Result<()> {
    let system = System::start(&[]).await?;
    for (body, word) in [
        (
            json!({"op": "add", "args": [1, 2], "timeout_ms": 0}),
            "timeout_ms",
        ),
        (
            json!({"op": "add", "args": [1, 2], "timeout_ms": 604_800_001u64}),
            "timeout_ms",
        ),
        (
            json!({"op": "add", "args": [1, 2], "retries": 11}),
            "retries",
        ),
        (
            json!({"op": "add", "args": [1, 2], "priority": 11}),
            "priority",
        ),
        (
            json!([{"op": "add", "args": [1, 2], "priority": -11}]),
            "priority",
        ),
        (
            json!({"op": "add", "args": [1, 2], "retries": -1}),
            "integer",
        ),
        (
            json!({"op": "add", "args": [1, 2], "priority": 1.5}),
            "integer",
        ),
    ] {
        let (status, answer) = system.submit(&body).await?;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(word), "{body}: {error}");
    }
    let tasks: Vec<Value> = system.get_json("/tasks").await?;
    assert!(tasks.is_empty(), "nothing queued: {tasks:?}");
    Ok(())
}

#[tokio::test]
async fn a_task_asking_to_wait_longer_outlives_the_unoffered_op_timeout() -> anyhow::Result<()> {
    let mut system = System::start(&[("UNOFFERED_OP_TIMEOUT_MS", "300")]).await?;
    system.add_worker("adder", &[("OPS", "add")]).await?;
    system.wait_for_workers(1).await?;
    let patient = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7], "timeout_ms": 60000}))
        .await?[0];
    let hasty = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7], "timeout_ms": 200}))
        .await?[0];
    let view = system
        .wait_final(&[hasty], Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(view.status, TaskStatus::Expired, "{view:?}");
    // Well past UNOFFERED_OP_TIMEOUT_MS it still waits; a worker offering
    // the op then runs it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(system.task(patient).await?.status, TaskStatus::Queued);
    system.add_worker("muller", &[("OPS", "mul")]).await?;
    let view = system
        .wait_final(&[patient], Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!((view.status, view.result), (TaskStatus::Done, Some(42)));
    Ok(())
}

#[tokio::test]
async fn a_batch_is_followed_as_one_unit_by_its_id() -> anyhow::Result<()> {
    let system = System::with_workers(&[], 1, &[("OPS", "add")]).await?;
    let batch: Vec<Value> = (0..5)
        .map(|i| json!({"op": "add", "args": [i, 1]}))
        .chain([json!({"op": "mul", "args": [2, 3], "timeout_ms": 100})])
        .collect();
    let (status, accepted) = system.submit(&Value::Array(batch)).await?;
    assert_eq!(status, 202, "{accepted}");
    let ids: Vec<TaskId> = serde_json::from_value(accepted["ids"].clone())?;
    assert_eq!(accepted["batch"], json!(ids[0]), "{accepted}");
    let view = poll(Duration::from_secs(20), "the batch to finish", || async {
        let view: Value = system
            .get_json(&format!("/batches/{}", ids[0]))
            .await
            .ok()?;
        (view["finished"] == true).then_some(view)
    })
    .await?;
    assert_eq!(view["total"], 6, "{view}");
    assert_eq!(
        view["by_status"],
        json!({"done": 5, "expired": 1}),
        "{view}"
    );
    assert_eq!(system.task(ids[3]).await?.batch, Some(ids[0]));
    // A single task is no batch.
    let (_, single) = system.submit(&json!({"op": "add", "args": [1, 1]})).await?;
    assert!(single.get("batch").is_none(), "{single}");
    let missing = system
        .client
        .get(system.url(&format!("/batches/{}", ids[5] + 1_000_000)))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    Ok(())
}

/// Two planner replicas on one PostgreSQL database: `holder` with the
/// spinning worker `w1` (so it claims and runs every task), `asked` with
/// no worker. Returned with the database last, so it outlives them.
async fn two_replicas(lease_ms: &str) -> anyhow::Result<(System, System, e2e::postgres::Database)> {
    let db = e2e::postgres::database().await?;
    let env = [
        ("STORE", "postgres"),
        ("DATABASE_URL", db.url.as_str()),
        ("TOKEN", "two-replicas-token"),
        ("REPLICA_LEASE_MS", lease_ms),
        // A replica stopped on purpose below must not find its worker
        // presumed dead when it resumes.
        ("HEARTBEAT_TIMEOUT_MS", "30000"),
    ];
    let ops_dir = fixture_dir();
    let ops_dir = ops_dir.to_str().unwrap_or_default();
    let mut holder = System::start(&env).await?;
    holder
        .add_worker(
            "w1",
            &[
                ("OPS", "add,mul,spin"),
                ("OPS_DIR", ops_dir),
                ("OP_TIMEOUT_MS", "120000"),
            ],
        )
        .await?;
    holder.wait_for_workers(1).await?;
    let asked = System::start(&env).await?;
    Ok((holder, asked, db))
}

/// Submits a spinning task to `asked` and waits until `holder`'s worker
/// runs it.
async fn spin_held_elsewhere(
    holder: &System,
    asked: &System,
    body: &Value,
) -> anyhow::Result<TaskId> {
    let (status, accepted) = asked.submit(body).await?;
    anyhow::ensure!(status == 202, "{status} {accepted}");
    let id: TaskId = serde_json::from_value(accepted["ids"][0].clone())?;
    wait_running(holder, id).await?;
    Ok(id)
}

#[tokio::test]
async fn a_task_running_on_another_replica_is_cancelled_through_any_replica() -> anyhow::Result<()>
{
    let (holder, asked, _db) = two_replicas("1000").await?;

    // A batch (of one spinning task) run by the other replica counts as
    // running, not queued, on the replica asked.
    let (status, accepted) = asked
        .submit(&json!([{"op": "spin", "args": [1, 2]}]))
        .await?;
    assert_eq!(status, 202, "{accepted}");
    let spin: TaskId = serde_json::from_value(accepted["ids"][0].clone())?;
    let batch = accepted["batch"].clone();
    wait_running(&holder, spin).await?;
    let view: Value = asked.get_json(&format!("/batches/{batch}")).await?;
    assert_eq!(view["by_status"], json!({"running": 1}), "{view}");
    assert_eq!(view["finished"], false, "{view}");
    assert_eq!(asked.task(spin).await?.status, TaskStatus::Running);

    // One DELETE to the replica that does not hold it: the holder
    // interrupts its worker, and the answer is the cancelled task.
    let asked_at = Instant::now();
    let response = asked
        .client
        .delete(asked.url(&format!("/tasks/{spin}")))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let view: TaskView = response.json().await?;
    println!(
        "cancel through the other replica answered in {} ms",
        asked_at.elapsed().as_millis()
    );
    assert_eq!(view.status, TaskStatus::Cancelled, "{view:?}");
    assert_eq!(holder.task(spin).await?.status, TaskStatus::Cancelled);
    let after = add_runs_on_w1(&holder).await?;
    assert_eq!(after.attempts, 1, "the worker's slot was free again");
    let view: Value = asked.get_json(&format!("/batches/{batch}")).await?;
    assert_eq!(
        (&view["by_status"], &view["finished"]),
        (&json!({"cancelled": 1}), &json!(true)),
        "{view}"
    );
    // Cancelling it again: it is finished.
    let again = asked
        .client
        .delete(asked.url(&format!("/tasks/{spin}")))
        .send()
        .await?;
    assert_eq!(again.status(), 409);

    // In bulk by filter: every running task of an op, wherever it runs.
    let spin = spin_held_elsewhere(&holder, &asked, &json!({"op": "spin", "args": [3, 4]})).await?;
    let (status, report) = asked
        .post_json("/tasks/cancel", &json!({"status": "running", "op": "spin"}))
        .await?;
    assert_eq!((status, &report["cancelled"]), (200, &json!(1)), "{report}");
    assert_eq!(holder.task(spin).await?.status, TaskStatus::Cancelled);
    add_runs_on_w1(&holder).await?;

    // In bulk by id.
    let spin = spin_held_elsewhere(&holder, &asked, &json!({"op": "spin", "args": [5, 6]})).await?;
    let (status, report) = asked
        .post_json("/tasks/cancel", &json!({"ids": [spin, spin + 1_000_000]}))
        .await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["cancelled"], 1, "{report}");
    assert_eq!(report["not_found"], json!([spin + 1_000_000]), "{report}");
    assert_eq!(holder.task(spin).await?.status, TaskStatus::Cancelled);
    add_runs_on_w1(&holder).await?;

    // A bulk cancel of queued tasks leaves the running one alone, and
    // takes the queued one wherever it waits.
    let running =
        spin_held_elsewhere(&holder, &asked, &json!({"op": "spin", "args": [7, 8]})).await?;
    let queued = asked
        .submit_ids(&json!({"op": "spin", "args": [9, 10]}))
        .await?[0];
    let (status, report) = asked
        .post_json("/tasks/cancel", &json!({"status": "queued", "op": "spin"}))
        .await?;
    assert_eq!((status, &report["cancelled"]), (200, &json!(1)), "{report}");
    assert_eq!(asked.task(queued).await?.status, TaskStatus::Cancelled);
    assert_eq!(asked.task(running).await?.status, TaskStatus::Running);
    let response = asked
        .client
        .delete(asked.url(&format!("/tasks/{running}")))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    add_runs_on_w1(&holder).await?;
    Ok(())
}

#[tokio::test]
async fn a_retry_waiting_out_its_backoff_still_waits_after_a_planner_restart() -> anyhow::Result<()>
{
    let backoff_ms: u64 = 5000;
    let backoff = backoff_ms.to_string();
    let env = [("RETRY_BACKOFF_MS", backoff.as_str())];
    let mut system = System::with_workers(&env, 1, &[("OPS", "mul")]).await?;
    let worker = system.worker("w1").url();
    // v2 overflows on i64::MAX * 1: the first attempt fails, the retry
    // waits out its backoff.
    put_mul(&system, &worker, "mul_v2").await?;
    let id = system
        .submit_ids(&json!({"op": "mul", "args": [i64::MAX, 1], "retries": 1}))
        .await?[0];
    let waiting = poll(
        Duration::from_secs(20),
        "the first attempt to fail",
        || async {
            system
                .task(id)
                .await
                .ok()
                .filter(|v| v.attempt_errors.len() == 1 && v.retry_at_ms.is_some())
        },
    )
    .await?;
    let retry_at = waiting.retry_at_ms.unwrap_or_default();
    put_mul(&system, &worker, "mul").await?;

    // A crash and a restart in the middle of the backoff.
    system.planner.kill();
    system.planner.wait(Duration::from_secs(10)).await?;
    system.restart_planner(&env).await?;
    system.wait_for_workers(1).await?;
    let restarted = system.task(id).await?;
    assert!(
        serve_now_ms() < retry_at,
        "the restart took longer than the backoff: the test shows nothing"
    );
    assert_eq!(restarted.status, TaskStatus::Queued, "{restarted:?}");
    assert_eq!(restarted.retry_at_ms, Some(retry_at), "{restarted:?}");

    let done = system
        .wait_final(&[id], Duration::from_secs(60))
        .await?
        .remove(0);
    assert_eq!(
        (done.status, done.result),
        (TaskStatus::Done, Some(i64::MAX)),
        "{done:?}"
    );
    let started = done.started_at_ms.unwrap_or_default();
    assert!(
        started >= retry_at,
        "the retry ran {} ms before its backoff ended: {done:?}",
        retry_at - started
    );
    assert_eq!((done.attempts, done.retried), (2, 1), "{done:?}");
    Ok(())
}

#[tokio::test]
async fn a_cancel_the_holding_replica_is_too_stalled_to_carry_out_is_answered_202_and_kept()
-> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // A long lease: the stalled replica is not presumed dead meanwhile.
    let (holder, asked, _db) = two_replicas("60000").await?;
    let spin = spin_held_elsewhere(&holder, &asked, &json!({"op": "spin", "args": [1, 2]})).await?;
    let pid = Pid::from_raw(holder.planner.pid().unwrap_or_default());
    kill(pid, Signal::SIGSTOP)?;
    let response = asked
        .client
        .delete(asked.url(&format!("/tasks/{spin}")))
        .send()
        .await;
    kill(pid, Signal::SIGCONT)?;
    let response = response?;
    assert_eq!(
        response.status(),
        202,
        "the holder could not answer in time"
    );
    let view: TaskView = response.json().await?;
    assert_eq!(view.status, TaskStatus::Running, "{view:?}");
    // The request stood: resumed, the holder carries it out.
    poll(
        Duration::from_secs(20),
        "the stalled holder to cancel it",
        || async {
            asked
                .task(spin)
                .await
                .ok()
                .filter(|v| v.status == TaskStatus::Cancelled)
        },
    )
    .await?;
    add_runs_on_w1(&holder).await?;
    Ok(())
}

fn serve_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[tokio::test]
async fn idempotency_keys_expire_on_their_own_window_even_when_results_are_kept_forever()
-> anyhow::Result<()> {
    let key_ttl = Duration::from_secs(2);
    let system =
        System::with_workers(&[("RESULT_TTL", "0"), ("IDEMPOTENCY_TTL", "2s")], 1, &[]).await?;
    let task = json!({"op": "mul", "args": [6, 7]});
    let stored_at = Instant::now();
    let (status, first, replayed) = submit_keyed(&system, "nightly-report", &task).await?;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (_, again, replayed) = submit_keyed(&system, "nightly-report", &task).await?;
    if stored_at.elapsed() < key_ttl {
        assert!(replayed, "a repeat within the window is a replay: {again}");
        assert_eq!(again["ids"], first["ids"]);
    }
    // Past the window the key is forgotten: the same submission is new
    // work. The first task's result is still kept (RESULT_TTL=0).
    let fresh = poll(Duration::from_secs(30), "the key to expire", || async {
        let (status, body, replayed) = submit_keyed(&system, "nightly-report", &task).await.ok()?;
        (status == 202 && !replayed).then_some(body)
    })
    .await?;
    assert!(
        stored_at.elapsed() >= key_ttl,
        "forgotten before its window ended"
    );
    assert_ne!(fresh["ids"], first["ids"], "{fresh}");
    let first_id: TaskId = serde_json::from_value(first["ids"][0].clone())?;
    let kept = system
        .wait_final(&[first_id], Duration::from_secs(20))
        .await?;
    assert_eq!(kept[0].result, Some(42));
    // The window must be bounded: zero is refused at start.
    let refused = e2e::planner_command()?
        .env("IDEMPOTENCY_TTL", "0")
        .env("PORT", "0")
        .env("DATA_DIR", system.dir.path().join("refused"))
        .output()
        .await?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("IDEMPOTENCY_TTL")
            || String::from_utf8_lossy(&refused.stderr).contains("idempotency"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    Ok(())
}
