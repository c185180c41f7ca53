//! Nothing lost: dead workers, rolling restarts, a planner crash.
//!
//! Each test prints a `submitted / completed / lost / duplicated` line.

use std::collections::HashSet;
use std::time::Duration;

use e2e::{System, expected, poll};
use serde_json::{Value, json};
use wire::TaskId;
use wire::planner::{Stats, TaskStatus, TaskView};

fn tasks(n: usize) -> Value {
    json!(
        (0..n)
            .map(|i| json!({"op": if i % 3 == 0 { "add" } else { "mul" }, "args": [i as i64, 7]}))
            .collect::<Vec<_>>()
    )
}

async fn stats(system: &System) -> anyhow::Result<Stats> {
    system.get_json("/stats").await
}

async fn finished(system: &System) -> u64 {
    stats(system).await.map_or(0, |s| {
        s.by_status.get("done").copied().unwrap_or(0)
            + s.by_status.get("failed").copied().unwrap_or(0)
    })
}

/// Asserts every task is done with the right result and that the planner
/// recorded exactly one result per task; prints the fault figures.
async fn assert_all_done_once(
    system: &System,
    name: &str,
    ids: &[TaskId],
) -> anyhow::Result<Vec<TaskView>> {
    let views = system.wait_final(ids, Duration::from_secs(90)).await?;
    let unique: HashSet<TaskId> = views.iter().map(|v| v.id).collect();
    let completed = views
        .iter()
        .filter(|v| v.status == TaskStatus::Done && v.result == expected(&v.op, &v.args))
        .count();
    let stats = stats(system).await?;
    let recorded = stats.by_status.get("done").copied().unwrap_or(0)
        + stats.by_status.get("failed").copied().unwrap_or(0);
    let duplicated = recorded.saturating_sub(ids.len() as u64);
    println!(
        "{name}: submitted {} / completed {completed} / lost {} / duplicated {duplicated}",
        ids.len(),
        ids.len() - completed
    );
    assert_eq!(unique.len(), ids.len());
    for view in &views {
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
        assert_eq!(view.result, expected(&view.op, &view.args), "{view:?}");
    }
    assert_eq!(
        recorded,
        ids.len() as u64,
        "each task recorded exactly once: {stats:?}"
    );
    Ok(views)
}

#[tokio::test]
async fn a_thousand_tasks_survive_three_workers_killed_and_two_restarted() -> anyhow::Result<()> {
    let mut system = System::start(&[("MAX_ATTEMPTS", "10")]).await?;
    for i in 0..10 {
        system
            .add_worker(&format!("w{i}"), &[("SLOTS", "2"), ("WORK_MS", "5-30")])
            .await?;
    }
    system.wait_for_workers(10).await?;
    let ids = system.submit_ids(&tasks(1000)).await?;
    poll(
        Duration::from_secs(30),
        "a quarter of the tasks to finish",
        || async { (finished(&system).await >= 250).then_some(()) },
    )
    .await?;
    for victim in ["w0", "w1", "w2"] {
        system.worker(victim).kill();
    }
    for restarted in ["w3", "w4"] {
        let worker = system.worker_mut(restarted);
        worker.terminate();
        let status = worker.wait(Duration::from_secs(10)).await?;
        assert!(
            status.success(),
            "SIGTERM: the worker drains and exits 0, got {status}"
        );
    }
    for restarted in ["w3", "w4"] {
        system.workers.retain(|w| w.name != restarted);
        system
            .add_worker(restarted, &[("SLOTS", "2"), ("WORK_MS", "5-30")])
            .await?;
    }
    let views = assert_all_done_once(&system, "kill 3 + restart 2 of 10 workers", &ids).await?;
    let retried = views.iter().filter(|v| v.attempts > 1).count();
    println!("  tasks that needed more than one attempt: {retried}");
    Ok(())
}

#[tokio::test]
async fn a_sigterm_lets_the_task_in_flight_finish_and_the_worker_deregisters() -> anyhow::Result<()>
{
    let mut system = System::start(&[]).await?;
    system
        .add_worker("draining", &[("WORK_MS", "1000")])
        .await?;
    system.wait_for_workers(1).await?;
    let ids = system
        .submit_ids(&json!({"op": "add", "args": [40, 2]}))
        .await?;
    // Running at the worker, not just handed out by the planner: a task that
    // reaches a draining worker is (rightly) bounced back to the queue.
    let url = system.worker("draining").url();
    e2e::wait_until_busy(&url, Duration::from_secs(5)).await?;
    let worker = system.worker_mut("draining");
    worker.terminate();
    let status = worker.wait(Duration::from_secs(10)).await?;
    assert!(status.success(), "exit status {status}");
    let view = system.task(ids[0]).await?;
    assert_eq!(
        (view.status, view.result, view.attempts),
        (TaskStatus::Done, Some(42), 1),
        "{view:?}"
    );
    assert!(
        system.workers().await?.is_empty(),
        "the worker deregistered"
    );
    Ok(())
}

#[tokio::test]
async fn a_frozen_worker_is_dropped_after_missed_heartbeats_and_its_late_answer_is_ignored()
-> anyhow::Result<()> {
    let mut system = System::start(&[("HEARTBEAT_TIMEOUT_MS", "800")]).await?;
    system
        .add_worker("frozen", &[("OPS", "mul"), ("WORK_MS", "1500")])
        .await?;
    system.wait_for_workers(1).await?;
    let ids = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7]}))
        .await?;
    poll(Duration::from_secs(5), "the task to start", || async {
        system
            .task(ids[0])
            .await
            .ok()
            .filter(|v| v.status == TaskStatus::Running)
    })
    .await?;
    // SIGSTOP: the process stays, its connections stay open, it just stops
    // answering, like a node that vanished from the network.
    let pid = system.worker("frozen").pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    let requeued = poll(
        Duration::from_secs(10),
        "the task to be re-queued",
        || async {
            system
                .task(ids[0])
                .await
                .ok()
                .filter(|v| v.status == TaskStatus::Queued)
        },
    )
    .await?;
    assert_eq!(requeued.attempts, 1);
    system.add_worker("rescuer", &[("OPS", "mul")]).await?;
    let done = system
        .wait_final(&ids, Duration::from_secs(20))
        .await?
        .remove(0);
    assert_eq!(
        (done.result, done.worker.as_deref(), done.attempts),
        (Some(42), Some("rescuer"), 2)
    );
    // The frozen worker wakes up and answers late: it must not count.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )?;
    poll(
        Duration::from_secs(10),
        "the woken worker to re-register",
        || async {
            system
                .workers()
                .await
                .ok()
                .filter(|w| w.iter().any(|w| w.id == "frozen"))
        },
    )
    .await?;
    let after = system.task(ids[0]).await?;
    assert_eq!(after.worker.as_deref(), Some("rescuer"));
    assert_eq!(stats(&system).await?.by_status.get("done"), Some(&1));
    Ok(())
}

#[tokio::test]
async fn every_acknowledged_task_completes_after_the_planner_is_killed_and_restarted()
-> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    for i in 0..4 {
        system
            .add_worker(&format!("w{i}"), &[("SLOTS", "2"), ("WORK_MS", "10-40")])
            .await?;
    }
    system.wait_for_workers(4).await?;
    let ids = system.submit_ids(&tasks(400)).await?;
    poll(Duration::from_secs(30), "some tasks to finish", || async {
        (finished(&system).await >= 80).then_some(())
    })
    .await?;
    system.planner.kill();
    system.planner.wait(Duration::from_secs(5)).await?;
    system.restart_planner(&[]).await?;
    // Workers notice the new planner by themselves (heartbeat answered 404).
    system.wait_for_workers(4).await?;
    let views = system.wait_final(&ids, Duration::from_secs(90)).await?;
    let completed = views
        .iter()
        .filter(|v| v.status == TaskStatus::Done && v.result == expected(&v.op, &v.args))
        .count();
    let recorded = stats(&system)
        .await?
        .by_status
        .get("done")
        .copied()
        .unwrap_or(0);
    println!(
        "planner SIGKILL + restart: submitted {} / completed {completed} / lost {} / duplicated {}",
        ids.len(),
        ids.len() - completed,
        recorded.saturating_sub(ids.len() as u64)
    );
    assert_eq!(completed, ids.len());
    assert_eq!(
        recorded,
        ids.len() as u64,
        "each task recorded exactly once"
    );
    // New submissions continue after the recovered ids.
    let more = system
        .submit_ids(&json!({"op": "add", "args": [1, 1]}))
        .await?;
    assert!(more[0] > *ids.iter().max().unwrap_or(&0));
    Ok(())
}

#[tokio::test]
async fn a_full_queue_refuses_with_retry_after_and_keeps_what_it_accepted() -> anyhow::Result<()> {
    let mut system = System::start(&[("QUEUE_LIMIT", "50")]).await?;
    let accepted = system.submit_ids(&tasks(50)).await?;
    let response = system
        .client
        .post(system.url("/tasks"))
        .json(&json!({"op": "add", "args": [1, 2]}))
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        response.json::<Value>().await?["error"]
            .as_str()
            .unwrap_or("")
            .contains("queue is full")
    );
    system.add_worker("w", &[("SLOTS", "4")]).await?;
    let views = system
        .wait_final(&accepted, Duration::from_secs(30))
        .await?;
    assert!(views.iter().all(|v| v.status == TaskStatus::Done));
    assert_eq!(
        system
            .submit_ids(&json!({"op": "add", "args": [1, 2]}))
            .await?
            .len(),
        1,
        "room again once drained"
    );
    Ok(())
}
