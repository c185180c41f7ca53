//! Request validation and error mapping, in process: the router from
//! `api::app` called with `tower::ServiceExt::oneshot`, no socket. What needs
//! real processes (dispatch, workers, faults) is in the end-to-end suites.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clap::Parser;
use planner::access::Access;
use planner::api::{AppState, app};
use planner::config::Cli;
use serde_json::Value;
use serve::auth::Token;
use tower::ServiceExt;

const TOKEN: &str = "in-process-test-token";

async fn router() -> anyhow::Result<Router> {
    let cli = Cli::try_parse_from(["planner", "--store", "memory"])?;
    let token = Token::new(Some(TOKEN.into()));
    let planner = planner::build(&cli.serve, &token).await?;
    let state = AppState {
        planner,
        metrics: serve::metrics::install(),
        stopping: tokio_util::sync::CancellationToken::new(),
        listening: "127.0.0.1:3000".parse()?,
    };
    Ok(app(
        state,
        &Access {
            admin: token,
            ..Access::default()
        },
    ))
}

async fn call(request: Request<Body>) -> anyhow::Result<(StatusCode, Value)> {
    let response = router().await?.oneshot(request).await?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, body))
}

fn post_json(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("a valid request")
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_valid_task_is_accepted_with_its_id() -> anyhow::Result<()> {
    let (status, body) = call(post_json("/tasks", r#"{"op":"add","args":[1,2]}"#)).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["ids"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_json_error() -> anyhow::Result<()> {
    let (status, body) = call(post_json("/tasks", r#"{"op":"add","args":[1,"#)).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!error_of(&body).is_empty(), "{body}");
    Ok(())
}

#[tokio::test]
async fn an_op_name_too_long_says_the_limit() -> anyhow::Result<()> {
    let op = "a".repeat(65);
    let (status, body) = call(post_json(
        "/tasks",
        &format!(r#"{{"op":"{op}","args":[1,2]}}"#),
    ))
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("at most 64"), "{body}");
    Ok(())
}

#[tokio::test]
async fn an_op_name_with_bad_characters_says_the_rule() -> anyhow::Result<()> {
    let (status, body) = call(post_json("/tasks", r#"{"op":"Mul!","args":[1,2]}"#)).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("lowercase"), "{body}");
    Ok(())
}

#[tokio::test]
async fn too_many_arguments_are_refused() -> anyhow::Result<()> {
    let args: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    let body = format!(r#"{{"op":"add","args":[{}]}}"#, args.join(","));
    let (status, body) = call(post_json("/tasks", &body)).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("too many arguments"), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_task_id_that_is_not_a_number_is_a_400_and_an_unknown_one_a_404() -> anyhow::Result<()> {
    let (status, body) = call(Request::get("/tasks/abc").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(!error_of(&body).is_empty());
    let (status, body) = call(Request::get("/tasks/424242").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(error_of(&body).contains("424242"), "{body}");
    Ok(())
}

#[tokio::test]
async fn cancelling_an_unknown_task_is_a_404() -> anyhow::Result<()> {
    let (status, body) = call(Request::delete("/tasks/424242").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    Ok(())
}

#[tokio::test]
async fn worker_routes_refuse_a_missing_or_wrong_token() -> anyhow::Result<()> {
    let registration = r#"{"id":"w1","url":"http://127.0.0.1:9","ops":[],"slots":1}"#;
    let (status, body) = call(post_json("/workers", registration)).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(!error_of(&body).is_empty());
    let mut wrong = post_json("/workers", registration);
    wrong
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer not-the-token".parse()?);
    let (status, _) = call(wrong).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn an_unknown_route_is_a_404_with_a_json_error() -> anyhow::Result<()> {
    let (status, body) = call(Request::get("/no-such-route").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!error_of(&body).is_empty(), "{body}");
    Ok(())
}

#[tokio::test]
async fn an_empty_batch_is_refused() -> anyhow::Result<()> {
    let (status, body) = call(post_json("/tasks", "[]")).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(error_of(&body).contains("no tasks"), "{body}");
    Ok(())
}
