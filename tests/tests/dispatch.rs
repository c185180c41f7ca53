//! Routing: capability-aware, specialist-first, late workers, busy workers.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{System, expected};
use serde_json::json;
use wire::planner::TaskStatus;

fn mixed_tasks(n: usize) -> serde_json::Value {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let op = if i % 2 == 0 { "add" } else { "mul" };
            json!({"op": op, "args": [i as i64, (i % 40) as i64]})
        })
        .collect();
    json!(tasks)
}

#[tokio::test]
async fn a_hundred_mixed_tasks_complete_and_none_reaches_a_worker_lacking_its_op()
-> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    for (id, ops) in [
        ("general-1", "add,mul"),
        ("general-2", "add,mul"),
        ("mul-1", "mul"),
        ("mul-2", "mul"),
        ("add-1", "add"),
        ("add-2", "add"),
    ] {
        system
            .add_worker(id, &[("OPS", ops), ("WORK_MS", "0-5")])
            .await?;
    }
    system.wait_for_workers(6).await?;
    let ids = system.submit_ids(&mixed_tasks(100)).await?;
    let views = system.wait_final(&ids, Duration::from_secs(60)).await?;
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for view in &views {
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
        assert_eq!(view.result, expected(&view.op, &view.args), "{view:?}");
        let worker = view.worker.clone().unwrap_or_default();
        let offers = worker.starts_with("general") || worker.starts_with(&view.op);
        assert!(offers, "task {} ({}) ran on {worker}", view.id, view.op);
        *per_worker.entry(worker).or_default() += 1;
    }
    let workers = system.workers().await?;
    assert_eq!(
        workers.iter().map(|w| w.wrong_op).sum::<u64>(),
        0,
        "no dispatch was answered 'no such op'"
    );
    assert_eq!(workers.iter().map(|w| w.done).sum::<u64>(), 100);
    // Specialists are preferred, so each of them did some work.
    for specialist in ["mul-1", "mul-2", "add-1", "add-2"] {
        assert!(
            per_worker.get(specialist).copied().unwrap_or(0) > 0,
            "{specialist} idle: {per_worker:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn specialists_take_their_op_before_generalists() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    system
        .add_worker("general-1", &[("OPS", "add,mul")])
        .await?;
    system.add_worker("mul-1", &[("OPS", "mul")]).await?;
    system.wait_for_workers(2).await?;
    // One at a time: an idle specialist must win every mul task.
    for i in 0..5 {
        let (status, body) = system
            .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [i, 3]}))
            .await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["worker"], "mul-1", "{body}");
    }
    Ok(())
}

#[tokio::test]
async fn workers_started_after_tasks_were_submitted_receive_work() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let ids = system.submit_ids(&mixed_tasks(20)).await?;
    let queued = system.task(ids[0]).await?;
    assert_eq!(queued.status, TaskStatus::Queued);
    assert!(queued.waiting_for.is_some());
    system
        .add_worker("late-1", &[("OPS", "add,mul"), ("SLOTS", "2")])
        .await?;
    system
        .add_worker("late-2", &[("OPS", "add,mul"), ("SLOTS", "2")])
        .await?;
    let views = system.wait_final(&ids, Duration::from_secs(30)).await?;
    assert!(
        views
            .iter()
            .all(|v| v.status == TaskStatus::Done && v.result == expected(&v.op, &v.args))
    );
    Ok(())
}

#[tokio::test]
async fn a_busy_one_slot_worker_refuses_a_second_task_with_429_and_403_on_legacy_routes()
-> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let url = system
        .add_worker("slow", &[("WORK_MS", "1500")])
        .await?
        .url();
    let client = system.client.clone();
    let first = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            client
                .post(format!("{url}/tasks"))
                .json(&json!({"id": 1, "op": "add", "args": [1, 2]}))
                .send()
                .await
        })
    };
    e2e::wait_until_busy(&url, Duration::from_secs(5)).await?;
    let second = client
        .post(format!("{url}/tasks"))
        .json(&json!({"id": 2, "op": "add", "args": [1, 2]}))
        .send()
        .await?;
    assert_eq!(second.status(), 429);
    assert!(
        second.json::<serde_json::Value>().await?["error"]
            .as_str()
            .unwrap_or("")
            .contains("busy")
    );
    let legacy = client
        .post(format!("{url}/add"))
        .json(&json!({"a": 1, "b": 2}))
        .send()
        .await?;
    assert_eq!(legacy.status(), 403);
    let done = first.await??;
    assert_eq!(done.status(), 200);
    let body: serde_json::Value = done.json().await?;
    assert_eq!(body["result"], 3);
    assert_eq!(body["worker"], "slow");
    assert!(
        body["duration_ms"].as_f64().unwrap_or(0.0) >= 1500.0,
        "{body}"
    );
    Ok(())
}
