//! The exercise's worker routes: `POST /add`, `POST /mult`, `GET /`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serve::{ApiError, JsonBody};
use wire::legacy::{Answer, Operands};

use super::AppState;
use crate::executor::Refusal;

/// The exercise's `a + b`.
#[utoipa::path(
    post, path = "/add", tag = "exercise",
    request_body = wire::legacy::Operands,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The result, its duration in ms, and this worker's id", body = wire::legacy::Answer),
        (status = 400, description = "Malformed body", body = wire::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 403, description = "Busy: all slots run a task (the exercise's convention)", body = wire::ErrorBody),
        (status = 404, description = "This worker does not offer the op", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_TIMEOUT_MS", body = wire::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = wire::ErrorBody),
        (status = 415, description = "Unsupported content type", body = wire::ErrorBody),
        (status = 422, description = "The op failed (overflow...)", body = wire::ErrorBody),
        (status = 503, description = "Shutting down", body = wire::ErrorBody),
    )
)]
pub async fn add(
    state: State<AppState>,
    body: JsonBody<Operands>,
) -> Result<Json<Answer>, ApiError> {
    run(state, "add", body).await
}

/// The exercise's `a * b`.
#[utoipa::path(
    post, path = "/mult", tag = "exercise",
    request_body = wire::legacy::Operands,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The result, its duration in ms, and this worker's id", body = wire::legacy::Answer),
        (status = 400, description = "Malformed body", body = wire::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 403, description = "Busy: all slots run a task (the exercise's convention)", body = wire::ErrorBody),
        (status = 404, description = "This worker does not offer the op", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_TIMEOUT_MS", body = wire::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = wire::ErrorBody),
        (status = 415, description = "Unsupported content type", body = wire::ErrorBody),
        (status = 422, description = "The op failed (overflow...)", body = wire::ErrorBody),
        (status = 503, description = "Shutting down", body = wire::ErrorBody),
    )
)]
pub async fn mult(
    state: State<AppState>,
    body: JsonBody<Operands>,
) -> Result<Json<Answer>, ApiError> {
    run(state, "mul", body).await
}

/// Busy is 403 here, as the exercise's planner expects.
async fn run(
    State(state): State<AppState>,
    op: &str,
    JsonBody(operands): JsonBody<Operands>,
) -> Result<Json<Answer>, ApiError> {
    let run = state
        .executor
        .run(None, op, vec![operands.a, operands.b])
        .await
        .map_err(|refusal| match refusal {
            Refusal::Busy(_) => ApiError::new(StatusCode::FORBIDDEN, refusal.to_string()),
            other => super::tasks::refusal_to_error(other),
        })?;
    let duration = run.elapsed.as_millis() as u64;
    match run.output {
        Ok(res) => Ok(Json(Answer {
            res,
            duration,
            id: state.id.to_string(),
        })),
        Err(err) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.to_string(),
        )),
    }
}

/// The task(s) in progress, or `ready to work <id>` when idle.
#[utoipa::path(
    get, path = "/", tag = "exercise",
    responses(
        (status = 200, description = "`ready to work <id>` when idle, else the tasks in progress", content(
            (String = "text/plain"),
            (Vec<crate::executor::Running> = "application/json"),
        )),
    )
)]
pub async fn status(State(state): State<AppState>) -> Response {
    let running = state.executor.running();
    if running.is_empty() {
        format!("ready to work {}", state.id).into_response()
    } else {
        Json(running).into_response()
    }
}
