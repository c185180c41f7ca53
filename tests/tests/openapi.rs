//! The planner's OpenAPI description matches what the planner does: every
//! documented operation is called, and must answer with a status the
//! description lists for it, in the documented shape.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::{System, fixture};
use serde_json::{Value, json};

const TOKEN: &str = "openapi-token";

/// One call: method, concrete path, body, whether to send the token, and the
/// status this call must get.
struct Call {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Vec<u8>>,
    auth: bool,
    want: u16,
}

fn call(
    method: &'static str,
    template: &'static str,
    path: impl Into<String>,
    body: Option<Value>,
    auth: bool,
    want: u16,
) -> Call {
    let body = body.map(|b| serde_json::to_vec(&b).unwrap_or_default());
    Call {
        method,
        template,
        path: path.into(),
        body,
        auth,
        want,
    }
}

#[tokio::test]
async fn every_documented_route_answers_as_documented() -> anyhow::Result<()> {
    let mut system = System::start(&[("TOKEN", TOKEN)]).await?;
    let worker_url = system.add_worker("w", &[]).await?.url();
    let workers = system.wait_for_workers(1).await?;
    let ops = serde_json::to_value(workers[0].ops.clone())?;
    let (_, done) = system
        .post_json("/tasks?wait=true", &json!({"op": "add", "args": [1, 2]}))
        .await?;
    let done_id = done["id"].as_u64().unwrap_or(0);
    let stuck = system
        .submit_ids(&json!({"op": "nothing-offers-this", "args": []}))
        .await?[0];
    let stuck_too = system
        .submit_ids(&json!({"op": "nothing-offers-this", "args": []}))
        .await?[0];
    let (_, batch) = system
        .submit(&json!([{"op": "add", "args": [1, 1]}, {"op": "add", "args": [2, 2]}]))
        .await?;
    let batch = batch["batch"].as_u64().unwrap_or(0);
    let too_many_ids = (1..=1001)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");

    let spec: Value = system.get_json("/openapi.json").await?;
    assert_eq!(
        spec["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true),
        "an OpenAPI 3 document"
    );

    let mul = std::fs::read(fixture("mul"))?;
    let calls = vec![
        call("GET", "/", "/", None, false, 200),
        call("GET", "/ui", "/ui", None, false, 200),
        call("GET", "/events", "/events", None, false, 200),
        call("GET", "/healthz", "/healthz", None, false, 200),
        call("GET", "/readyz", "/readyz", None, false, 200),
        call("GET", "/stats", "/stats", None, false, 200),
        call("GET", "/metrics", "/metrics", None, false, 200),
        call("GET", "/ops", "/ops", None, false, 200),
        call("GET", "/workers", "/workers", None, false, 200),
        call(
            "GET",
            "/workers",
            "/workers?flavor=general&limit=1",
            None,
            false,
            200,
        ),
        call("GET", "/workers", "/workers?limit=0", None, false, 400),
        call(
            "GET",
            "/workers/summary",
            "/workers/summary?top=2",
            None,
            false,
            200,
        ),
        call(
            "GET",
            "/workers/summary",
            "/workers/summary?top=101",
            None,
            false,
            400,
        ),
        call(
            "GET",
            "/tasks",
            "/tasks?status=done&limit=5",
            None,
            false,
            200,
        ),
        call("GET", "/tasks", "/tasks?status=sleeping", None, false, 400),
        call(
            "GET",
            "/tasks",
            format!("/tasks?op=add&before={}&since_ms=0&limit=5", done_id + 1),
            None,
            false,
            200,
        ),
        call(
            "GET",
            "/tasks",
            format!("/tasks?ids={done_id},987654"),
            None,
            false,
            200,
        ),
        call(
            "GET",
            "/tasks",
            format!("/tasks?ids={too_many_ids}"),
            None,
            false,
            400,
        ),
        call(
            "GET",
            "/tasks",
            "/tasks?ids=1&status=done",
            None,
            false,
            400,
        ),
        call(
            "POST",
            "/tasks/cancel",
            "/tasks/cancel",
            Some(json!({"ids": [stuck_too, 987654]})),
            false,
            200,
        ),
        call(
            "POST",
            "/tasks/cancel",
            "/tasks/cancel",
            Some(json!({"status": "queued", "op": "nothing-queued-here"})),
            false,
            200,
        ),
        call(
            "POST",
            "/tasks/cancel",
            "/tasks/cancel",
            Some(json!({"status": "done"})),
            false,
            400,
        ),
        call(
            "GET",
            "/tasks/{id}",
            format!("/tasks/{done_id}"),
            None,
            false,
            200,
        ),
        call("GET", "/tasks/{id}", "/tasks/987654", None, false, 404),
        call(
            "GET",
            "/batches/{id}",
            format!("/batches/{batch}"),
            None,
            false,
            200,
        ),
        call("GET", "/batches/{id}", "/batches/987654", None, false, 404),
        call("GET", "/batches/{id}", "/batches/x", None, false, 400),
        call("GET", "/tasks/{id}", "/tasks/x", None, false, 400),
        call(
            "POST",
            "/tasks",
            "/tasks",
            Some(json!({"op": "add", "args": [2, 2]})),
            false,
            202,
        ),
        call(
            "POST",
            "/tasks",
            "/tasks?wait=true",
            Some(json!({"op": "mul", "args": [3, 3]})),
            false,
            200,
        ),
        call(
            "POST",
            "/tasks",
            "/tasks?wait=true",
            Some(json!({"op": "mul", "args": [i64::MAX, 3]})),
            false,
            422,
        ),
        call(
            "POST",
            "/tasks",
            "/tasks",
            Some(json!({"op": "add"})),
            false,
            400,
        ),
        call(
            "POST",
            "/tasks",
            "/tasks",
            Some(
                json!([{"op": "add", "args": [2, 2], "timeout_ms": 60000, "retries": 2, "priority": -4}]),
            ),
            false,
            202,
        ),
        call(
            "POST",
            "/tasks",
            "/tasks",
            Some(json!({"op": "add", "args": [2, 2], "priority": 11})),
            false,
            400,
        ),
        call(
            "POST",
            "/tasks/random",
            "/tasks/random?count=2",
            None,
            false,
            202,
        ),
        call(
            "POST",
            "/tasks/random",
            "/tasks/random?count=0",
            None,
            false,
            400,
        ),
        call(
            "DELETE",
            "/tasks/{id}",
            format!("/tasks/{stuck}"),
            None,
            false,
            200,
        ),
        call(
            "DELETE",
            "/tasks/{id}",
            format!("/tasks/{stuck}"),
            None,
            false,
            409,
        ),
        call("DELETE", "/tasks/{id}", "/tasks/987654", None, false, 404),
        call(
            "POST",
            "/workers",
            "/workers",
            Some(json!({"id": "temp", "url": worker_url, "ops": ops, "slots": 1})),
            true,
            200,
        ),
        call(
            "POST",
            "/workers",
            "/workers",
            Some(json!({"id": "temp", "url": "ftp://x", "ops": [], "slots": 1})),
            true,
            400,
        ),
        call(
            "POST",
            "/workers",
            "/workers",
            Some(json!({"id": "temp", "url": worker_url, "ops": [], "slots": 1})),
            false,
            401,
        ),
        call(
            "POST",
            "/workers/{id}/heartbeat",
            "/workers/temp/heartbeat",
            None,
            true,
            204,
        ),
        call(
            "POST",
            "/workers/{id}/heartbeat",
            "/workers/ghost/heartbeat",
            None,
            true,
            404,
        ),
        call(
            "POST",
            "/workers/{id}/heartbeat",
            "/workers/temp/heartbeat",
            None,
            false,
            401,
        ),
        // The dispatch channel is a WebSocket: a plain GET is told so.
        call(
            "GET",
            "/workers/{id}/channel",
            "/workers/w/channel",
            None,
            true,
            426,
        ),
        call(
            "GET",
            "/workers/{id}/channel",
            "/workers/ghost/channel",
            None,
            true,
            404,
        ),
        call(
            "GET",
            "/workers/{id}/channel",
            "/workers/w/channel",
            None,
            false,
            401,
        ),
        call("DELETE", "/workers/{id}", "/workers/temp", None, true, 204),
        call("DELETE", "/workers/{id}", "/workers/ghost", None, true, 404),
        call("DELETE", "/workers/{id}", "/workers/w", None, false, 401),
        call(
            "POST",
            "/register",
            "/register",
            Some(json!({"url": worker_url, "id": "legacy-view"})),
            true,
            200,
        ),
        call(
            "POST",
            "/register",
            "/register",
            Some(json!({"url": "nope", "id": "x"})),
            true,
            400,
        ),
        call(
            "POST",
            "/register",
            "/register",
            Some(json!({"url": worker_url, "id": "x"})),
            false,
            401,
        ),
        Call {
            method: "PUT",
            template: "/ops/{name}",
            path: "/ops/mul".into(),
            body: Some(mul.clone()),
            auth: true,
            want: 200,
        },
        Call {
            method: "PUT",
            template: "/ops/{name}",
            path: "/ops/mul".into(),
            body: Some(b"junk".to_vec()),
            auth: true,
            want: 400,
        },
        Call {
            method: "PUT",
            template: "/ops/{name}",
            path: "/ops/mul".into(),
            body: Some(mul),
            auth: false,
            want: 401,
        },
    ];

    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .map(move |(method, _)| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let exercised: BTreeSet<(String, String)> = calls
        .iter()
        .map(|c| (c.method.to_string(), c.template.to_string()))
        .collect();
    assert_eq!(
        documented, exercised,
        "every documented operation is exercised, and only those"
    );

    for c in &calls {
        let operation = &spec["paths"][c.template][c.method.to_lowercase()];
        let response_doc = &operation["responses"][c.want.to_string()];
        assert!(
            response_doc.is_object(),
            "{} {} does not document a {} answer",
            c.method,
            c.template,
            c.want
        );
        // A client of its own: `system.client` presents the token always.
        let mut request = reqwest::Client::new()
            .request(c.method.parse()?, system.url(&c.path))
            .timeout(Duration::from_secs(20));
        if let Some(body) = &c.body {
            request = request.body(body.clone());
        }
        if c.auth {
            request = request.bearer_auth(TOKEN);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(status, c.want, "{} {}", c.method, c.path);
        let documented_types: Vec<&String> = response_doc["content"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        if documented_types.is_empty() {
            continue;
        }
        assert!(
            documented_types
                .iter()
                .any(|t| content_type.starts_with(t.as_str())),
            "{} {}: content type {content_type} not among {documented_types:?}",
            c.method,
            c.path
        );
        if content_type.starts_with("application/json") {
            let body: Value = response.json().await?;
            let schema = &response_doc["content"]["application/json"]["schema"];
            let expect_array = schema["type"] == "array";
            assert_eq!(
                body.is_array(),
                expect_array,
                "{} {}: {body}",
                c.method,
                c.path
            );
            if status >= 400 {
                assert!(body["error"].is_string(), "{} {}: {body}", c.method, c.path);
            }
        }
    }
    Ok(())
}
