//! The planner stops in bounded time: SIGTERM with open event streams and
//! `?wait=true` requests exits 0 well within the drain deadline, and every
//! result it acknowledged is still there after a restart.

use std::time::{Duration, Instant};

use e2e::{System, expected};
use serde_json::json;
use wire::planner::TaskStatus;

#[tokio::test]
async fn sigterm_with_open_event_streams_and_waiting_requests_exits_promptly_and_loses_nothing()
-> anyhow::Result<()> {
    let drain = Duration::from_secs(4);
    let drain_ms = drain.as_millis().to_string();
    let mut system =
        System::with_workers(&[("DRAIN_TIMEOUT_MS", &drain_ms)], 1, &[("OPS", "add,mul")]).await?;

    // Results the planner acknowledged before the signal.
    let ids = system
        .submit_ids(&json!(
            (0..50)
                .map(|i| json!({"op": "mul", "args": [i, 3]}))
                .collect::<Vec<_>>()
        ))
        .await?;
    let done = system.wait_final(&ids, Duration::from_secs(30)).await?;
    assert!(done.iter().all(|v| v.status == TaskStatus::Done));

    // Two event streams and a waiting request for a task nobody can run.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = system.client.get(system.url("/events")).send().await?;
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let waiting = {
        let client = system.client.clone();
        let url = system.url("/tasks?wait=true&timeout_ms=600000");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"op": "nobody-offers-this", "args": [1]}))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await?;
            anyhow::Ok((status, body))
        })
    };
    e2e::poll(
        Duration::from_secs(10),
        "the waiting task to be queued",
        || async {
            let listed = system
                .client
                .get(system.url("/tasks?status=queued"))
                .send()
                .await
                .ok()?
                .json::<Vec<serde_json::Value>>()
                .await
                .ok()?;
            (!listed.is_empty()).then_some(())
        },
    )
    .await?;

    let signalled = Instant::now();
    system.planner.terminate();
    let status = system.planner.wait(drain + Duration::from_secs(10)).await?;
    let took = signalled.elapsed();
    println!("planner exited {status} {took:?} after SIGTERM (drain deadline {drain:?})");
    assert!(status.success(), "planner exit: {status}");
    assert!(
        took < drain,
        "streams and waits must end at once, not hold the drain until its deadline ({took:?})"
    );

    // The waiting client got an answer: 202 with the task, still queued.
    let (code, body) = waiting.await??;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "queued");
    // The event streams ended (no hang reading them to the end).
    for stream in streams {
        tokio::time::timeout(Duration::from_secs(5), stream.bytes()).await??;
    }

    // Every acknowledged result survived: the store was flushed before exit.
    system.restart_planner(&[]).await?;
    for view in done {
        let after = system.task(view.id).await?;
        assert_eq!(after.status, TaskStatus::Done);
        assert_eq!(after.result, expected(&after.op, &after.args));
    }
    Ok(())
}
