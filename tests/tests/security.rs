//! The shared token: who needs it, and that it never leaks; authentication
//! and loopback binding by default.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use e2e::{System, fixture, planner_command, worker_command};
use launcher::process::Service;
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
    let anonymous = reqwest::Client::new();
    let response = anonymous
        .post(system.url("/tasks"))
        .json(&json!({"op": "add", "args": [1, 2]}))
        .send()
        .await?;
    assert_eq!(response.status(), 401);
    let response = anonymous
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

/// A request as a stranger makes it: no token.
async fn status_of(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn by_default_the_planner_generates_a_private_token_and_strangers_get_401()
-> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let file = system.token_file();
    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is private", file.display());
    let token = system.token.clone().expect("a generated token");
    assert!(token.len() >= 32, "a long random token");
    // The harness gives the worker TOKEN_FILE, as a user would.
    let worker = system.add_worker("w", &[("OPS", "mul")]).await?.url();
    system.wait_for_workers(1).await?;

    let stranger = reqwest::Client::new();
    let registration =
        json!({"id": "intruder", "url": "http://127.0.0.2:9", "ops": [], "slots": 1});
    for (what, request) in [
        (
            "register",
            stranger.post(system.url("/workers")).json(&registration),
        ),
        (
            "legacy register",
            stranger
                .post(system.url("/register"))
                .json(&json!({"url": "http://127.0.0.2:9", "id": "x"})),
        ),
        (
            "fleet module upload",
            stranger
                .put(system.url("/ops/mul"))
                .body(std::fs::read(fixture("mul_v2"))?),
        ),
        (
            "dispatch to the worker",
            stranger
                .post(format!("{worker}/tasks"))
                .json(&json!({"id": 1, "op": "mul", "args": [6, 7]})),
        ),
        (
            "legacy dispatch to the worker",
            stranger
                .post(format!("{worker}/mult"))
                .json(&json!({"a": 6, "b": 7})),
        ),
        (
            "module upload to the worker",
            stranger
                .put(format!("{worker}/ops/mul"))
                .body(std::fs::read(fixture("mul_v2"))?),
        ),
    ] {
        let (status, body) = status_of(request).await?;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body["error"].is_string(), "{what}: {body}");
    }
    assert_eq!(system.workers().await?.len(), 1, "no intruder registered");
    // Submitting and reading stay open by default (loopback only); the
    // planner's own token gets the task to the worker.
    let (status, body) = status_of(
        stranger
            .post(system.url("/tasks?wait=true"))
            .json(&json!({"op": "mul", "args": [6, 7]})),
    )
    .await?;
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");

    // The log names the file, never the token.
    let log = std::fs::read_to_string(&system.planner.log)?;
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert!(!log.contains(&token), "the token is in the planner's log");

    // A restarted planner keeps the token: the worker, which has the file,
    // is served again without being told anything.
    system.planner.kill();
    system.planner.wait(Duration::from_secs(5)).await?;
    system.restart_planner(&[]).await?;
    assert_eq!(std::fs::read_to_string(&file)?.trim(), token);
    system.wait_for_workers(1).await?;
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "mul", "args": [7, 8]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(56)), "{body}");
    Ok(())
}

#[tokio::test]
async fn auth_off_opens_the_planner_and_the_worker_and_says_so() -> anyhow::Result<()> {
    let mut system = System::start(&[("AUTH", "off")]).await?;
    assert!(
        !system.token_file().exists(),
        "no token generated with AUTH=off"
    );
    let worker = system.add_worker("w", &[("OPS", "add")]).await?.url();
    system.wait_for_workers(1).await?;
    let stranger = reqwest::Client::new();
    let (status, body) = status_of(
        stranger
            .post(format!("{worker}/tasks"))
            .json(&json!({"id": 1, "op": "add", "args": [40, 2]})),
    )
    .await?;
    assert_eq!((status, &body["result"]), (200, &json!(42)), "{body}");
    let (status, body) = status_of(
        stranger
            .post(system.url("/register"))
            .json(&json!({"url": worker, "id": "legacy"})),
    )
    .await?;
    assert_eq!(status, 200, "{body}");
    for service in [&system.planner, system.worker("w")] {
        let log = std::fs::read_to_string(&service.log)?;
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("AUTH=off")),
            "{}: {log}",
            service.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_worker_without_a_token_does_not_start_and_says_how_to_get_one() -> anyhow::Result<()> {
    let output = worker_command()?
        .env("PORT", "0")
        .env("PLANNER", "http://127.0.0.1:9")
        .env_remove("TOKEN")
        .env_remove("TOKEN_FILE")
        .env_remove("AUTH")
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with("worker: no token") && last.contains("TOKEN_FILE"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "it never listened"
    );
    Ok(())
}

#[tokio::test]
async fn both_binaries_listen_on_loopback_only_by_default() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut planner = planner_command()?;
    planner
        .env("PORT", "0")
        .env("DATA_DIR", dir.path().join("data"))
        .env_remove("BIND");
    let planner = Service::start("planner", planner, &dir.path().join("planner.log")).await?;
    let mut worker = worker_command()?;
    worker
        .env("PORT", "0")
        .env("PLANNER", planner.url())
        .env("TOKEN_FILE", dir.path().join("data").join("token"))
        .env_remove("BIND");
    let worker = Service::start("worker", worker, &dir.path().join("worker.log")).await?;
    for service in [&planner, &worker] {
        assert_eq!(
            service.addr.ip(),
            std::net::Ipv4Addr::LOCALHOST,
            "{}",
            service.name
        );
        // Another loopback address reaches a server bound to 0.0.0.0, not
        // one bound to 127.0.0.1.
        let elsewhere = std::net::SocketAddr::from(([127, 0, 0, 2], service.addr.port()));
        assert!(
            tokio::net::TcpStream::connect(elsewhere).await.is_err(),
            "{} answers on 127.0.0.2",
            service.name
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_client_token_submits_and_reads_but_cannot_act_as_a_worker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, format!("{TOKEN}\n"))?;
    let admin_file = admin_file.display().to_string();
    let mut system = System::start(&[
        ("TOKEN_FILE", &admin_file),
        ("CLIENT_TOKEN", "client-t0k3n"),
        ("SUBMIT_REQUIRES_TOKEN", "true"),
        ("READ_REQUIRES_TOKEN", "true"),
    ])
    .await?;
    system
        .add_worker("w", &[("TOKEN_FILE", &admin_file)])
        .await?;
    system.wait_for_workers(1).await?;
    let stranger = reqwest::Client::new();
    let client = e2e::client_with(Some("client-t0k3n"))?;
    let task = json!({"op": "add", "args": [2, 3]});

    let (status, _) = status_of(stranger.post(system.url("/tasks")).json(&task)).await?;
    assert_eq!(status, 401, "anonymous submission");
    for path in ["/tasks", "/workers", "/stats", "/metrics", "/ops", "/"] {
        let (status, _) = status_of(stranger.get(system.url(path))).await?;
        assert_eq!(status, 401, "anonymous GET {path}");
    }
    for path in ["/healthz", "/readyz", "/openapi.json", "/ui"] {
        let response = stranger.get(system.url(path)).send().await?;
        assert_eq!(response.status(), 200, "GET {path} stays open");
    }
    let (status, body) = status_of(client.post(system.url("/tasks?wait=true")).json(&task)).await?;
    assert_eq!((status, &body["result"]), (200, &json!(5)), "{body}");
    let (status, body) = status_of(client.get(system.url("/workers"))).await?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = status_of(
        client
            .post(system.url("/workers"))
            .json(&json!({"id": "c", "url": "http://127.0.0.2:9", "ops": [], "slots": 1})),
    )
    .await?;
    assert_eq!(status, 401, "the client token is not a worker's");
    let (status, _) = status_of(
        client
            .put(system.url("/ops/add"))
            .body(std::fs::read(fixture("add"))?),
    )
    .await?;
    assert_eq!(status, 401, "nor an administrator's");
    Ok(())
}

/// Issue 12, item 11: a worker that refuses the planner's token showed as
/// healthy while tasks sat queued forever with no reason given.
#[tokio::test]
async fn a_worker_refusing_the_planners_token_is_shown_and_its_tasks_say_why() -> anyhow::Result<()>
{
    // The planner has no token to present; the worker insists on one.
    let mut system = System::start(&[("AUTH", "off")]).await?;
    system
        .add_worker("picky", &[("TOKEN", "another-token"), ("OPS", "mul")])
        .await?;
    system.wait_for_workers(1).await?;
    let id = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7]}))
        .await?[0];
    let refusing = e2e::poll(
        Duration::from_secs(10),
        "the worker to show it refuses the token",
        || async {
            let workers: Vec<Value> = system.get_json("/workers").await.ok()?;
            (workers[0]["refuses_token"] == true).then_some(workers)
        },
    )
    .await?;
    assert_eq!(refusing[0]["id"], "picky");
    let view = e2e::poll(
        Duration::from_secs(10),
        "the queued task to say why",
        || async {
            let view = system.task(id).await.ok()?;
            view.waiting_for.is_some().then_some(view)
        },
    )
    .await?;
    assert_eq!(view.status, wire::planner::TaskStatus::Queued);
    let reason = view.waiting_for.unwrap_or_default();
    assert!(
        reason.contains("refuses the planner's token") && reason.contains("picky"),
        "{reason}"
    );
    Ok(())
}
