//! Retention of finished tasks (issue 15): deleted after `RESULT_TTL` and
//! beyond `RESULT_LIMIT`, from memory and from the store, after which
//! `GET /tasks/{id}` answers a JSON 404 saying the task expired or never
//! existed. Runs on whichever store the suite runs on (`E2E_STORE`).

use std::time::Duration;

use anyhow::Result;
use e2e::{System, poll};
use serde_json::{Value, json};
use wire::TaskId;

fn tasks(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"op": "add", "args": [i, 1]}))
            .collect(),
    )
}

/// `GET /tasks/{id}`: the status code and the JSON body.
async fn lookup(system: &System, id: TaskId) -> Result<(u16, Value)> {
    let response = system
        .client
        .get(system.url(&format!("/tasks/{id}")))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

async fn submit_and_wait(system: &System, n: usize) -> Result<Vec<TaskId>> {
    let ids = system.submit_ids(&tasks(n)).await?;
    let views = system.wait_final(&ids, Duration::from_secs(60)).await?;
    assert!(
        views.iter().all(|v| v.result.is_some()),
        "every task ran: {views:?}"
    );
    Ok(ids)
}

#[tokio::test]
async fn finished_tasks_are_deleted_after_the_ttl_and_answer_404() -> Result<()> {
    let system = System::with_workers(&[("RESULT_TTL", "2s")], 1, &[]).await?;
    let old = submit_and_wait(&system, 50).await?;
    // Gone from memory and from the store, within the TTL plus a few passes.
    poll(
        Duration::from_secs(20),
        "the old tasks to expire",
        || async {
            for &id in &old {
                if lookup(&system, id).await.ok()?.0 != 404 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    let (status, body) = lookup(&system, old[0]).await?;
    assert_eq!(status, 404);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expired") && error.contains("never existed"),
        "the 404 says why: {body}"
    );
    // A task finished just now is still there: retention goes by age.
    let recent = submit_and_wait(&system, 1).await?;
    let (status, body) = lookup(&system, recent[0]).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], 1);
    // A queued task never expires, however old: no worker offers `idle`.
    let (status, body) = system.submit(&json!({"op": "idle", "args": [1]})).await?;
    assert_eq!(status, 202, "{body}");
    let idle: TaskId = serde_json::from_value(body["ids"][0].clone())?;
    let later = submit_and_wait(&system, 1).await?;
    poll(
        Duration::from_secs(20),
        "the later task to expire",
        || async { (lookup(&system, later[0]).await.ok()?.0 == 404).then_some(()) },
    )
    .await?;
    let (status, body) = lookup(&system, idle).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    Ok(())
}

#[tokio::test]
async fn past_the_count_cap_the_oldest_finished_tasks_are_deleted() -> Result<()> {
    if e2e::e2e_store_is_postgres() {
        eprintln!("skipped: the PostgreSQL store deletes by age only (RESULT_LIMIT is SQLite's)");
        return Ok(());
    }
    let env = [
        ("RESULT_TTL", "0"),
        ("RESULT_LIMIT", "40"),
        // Memory keeps fewer than the store, so the lookups below read the store.
        ("RETAIN_FINISHED", "10"),
    ];
    let system = System::with_workers(&env, 1, &[]).await?;
    let ids = submit_and_wait(&system, 100).await?;
    let (oldest, newest) = ids.split_at(60);
    poll(
        Duration::from_secs(20),
        "the 60 oldest to be deleted",
        || async {
            for &id in oldest {
                if lookup(&system, id).await.ok()?.0 != 404 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    for &id in newest {
        let (status, body) = lookup(&system, id).await?;
        assert_eq!(
            status, 200,
            "task {id}, one of the newest 40, is kept: {body}"
        );
    }
    Ok(())
}
