//! The shared token: who needs it, and that it never leaks.

use std::time::Duration;

use e2e::{System, fixture};
use serde_json::{Value, json};

const TOKEN: &str = "t0k3n-that-must-not-leak";

#[tokio::test]
async fn with_a_token_registration_uploads_and_dispatch_require_it_and_it_never_leaks()
-> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", TOKEN)]).await?;
    let worker = system.add_worker("w", &[]).await?.url();
    system.wait_for_workers(1).await?;
    let client = reqwest::Client::new();
    let registration =
        json!({"id": "intruder", "url": "http://127.0.0.1:9", "ops": [], "slots": 1});

    for (what, request) in [
        (
            "register without token",
            client.post(system.url("/workers")).json(&registration),
        ),
        (
            "register with a wrong token",
            client
                .post(system.url("/workers"))
                .bearer_auth("guess")
                .json(&registration),
        ),
        (
            "legacy register",
            client
                .post(system.url("/register"))
                .json(&json!({"url": "http://127.0.0.1:9", "id": "x"})),
        ),
        ("heartbeat", client.post(system.url("/workers/w/heartbeat"))),
        ("deregister", client.delete(system.url("/workers/w"))),
        (
            "task to a worker",
            client
                .post(format!("{worker}/tasks"))
                .json(&json!({"id": 1, "op": "add", "args": [1, 2]})),
        ),
        (
            "legacy task to a worker",
            client
                .post(format!("{worker}/add"))
                .json(&json!({"a": 1, "b": 2})),
        ),
        (
            "module upload",
            client
                .put(format!("{worker}/ops/add"))
                .body(std::fs::read(fixture("pow"))?),
        ),
        ("module removal", client.delete(format!("{worker}/ops/add"))),
    ] {
        let response = request.send().await?;
        assert_eq!(response.status(), 401, "{what}");
        assert!(
            response.json::<Value>().await?["error"].is_string(),
            "{what}"
        );
    }
    // Submission stays open by default, and dispatch carries the token.
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "add", "args": [40, 2]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
    assert_eq!(
        system.workers().await?.len(),
        1,
        "the intruder was not registered"
    );

    let mut exposed = String::new();
    for url in [
        system.url("/workers"),
        system.url("/stats"),
        system.url("/tasks"),
        system.url("/"),
        format!("{worker}/ops"),
        format!("{worker}/"),
    ] {
        exposed.push_str(&client.get(url).send().await?.text().await?);
    }
    for service in std::iter::once(&system.planner).chain(&system.workers) {
        exposed.push_str(&std::fs::read_to_string(&service.log)?);
    }
    assert!(
        !exposed.contains(TOKEN),
        "the token appeared in a GET answer or a log"
    );
    Ok(())
}

#[tokio::test]
async fn submission_can_be_made_to_require_the_token() -> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", TOKEN), ("SUBMIT_REQUIRES_TOKEN", "true")]).await?;
    system.add_worker("w", &[]).await?;
    let (status, _) = system.submit(&json!({"op": "add", "args": [1, 2]})).await?;
    assert_eq!(status, 401);
    let response = system
        .client
        .post(system.url("/tasks?wait=true"))
        .bearer_auth(TOKEN)
        .json(&json!({"op": "add", "args": [1, 2]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await?["result"], 3);
    Ok(())
}

/// Issue 12, attack 11: `Authorization: bearer x` (lowercase scheme) was
/// refused; RFC 9110 makes the scheme case-insensitive. The token itself
/// stays case-sensitive.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() -> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", TOKEN)]).await?;
    let worker = system.add_worker("w", &[]).await?.url();
    let client = reqwest::Client::new();
    let task = json!({"id": 1, "op": "add", "args": [1, 2]});
    for (authorization, want) in [
        (format!("bearer {TOKEN}"), 200),
        (format!("BEARER {TOKEN}"), 200),
        (format!("Bearer {}", TOKEN.to_uppercase()), 401),
    ] {
        let response = client
            .post(format!("{worker}/tasks"))
            .header("authorization", &authorization)
            .json(&task)
            .send()
            .await?;
        assert_eq!(response.status(), want, "{authorization}");
    }
    let response = client
        .delete(system.url("/workers/nobody"))
        .header("authorization", format!("bEaReR {TOKEN}"))
        .send()
        .await?;
    assert_eq!(
        response.status(),
        404,
        "admitted, and the worker is unknown"
    );
    Ok(())
}
