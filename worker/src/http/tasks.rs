//! `POST /tasks`: run one task for the planner.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serve::{ApiError, JsonBody, Path};
use wire::worker::{TaskOutcome, TaskRequest};

use super::AppState;
use crate::executor::Refusal;

/// 200 with the result; 422 with the same body when the op (or the sandbox)
/// failed the task, so a caller can't take an error for a value.
#[utoipa::path(
    post, path = "/tasks", tag = "tasks",
    request_body = wire::worker::TaskRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The op's result", body = wire::worker::TaskOutcome),
        (status = 422, description = "The op (or the sandbox: deadline, memory cap, trap) failed the task", body = wire::worker::TaskOutcome),
        (status = 400, description = "Malformed body", body = wire::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 404, description = "This worker does not offer the op", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_TIMEOUT_MS", body = wire::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = wire::ErrorBody),
        (status = 415, description = "Unsupported content type", body = wire::ErrorBody),
        (status = 429, description = "All slots are busy", body = wire::ErrorBody),
        (status = 503, description = "Shutting down", body = wire::ErrorBody),
    )
)]
pub async fn run(
    State(state): State<AppState>,
    JsonBody(task): JsonBody<TaskRequest>,
) -> Result<Response, ApiError> {
    let run = state
        .executor
        .run(Some(task.id), &task.op, task.args)
        .await
        .map_err(refusal_to_error)?;
    let status = if run.output.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let outcome = TaskOutcome {
        output: run.wire_output(),
        op: run.op,
        digest: run.digest,
        duration_ms: wire::worker::millis(run.elapsed),
        worker: state.id.to_string(),
    };
    Ok((status, Json(outcome)).into_response())
}

pub fn refusal_to_error(refusal: Refusal) -> ApiError {
    let status = match refusal {
        Refusal::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::NoSuchOp { .. } => StatusCode::NOT_FOUND,
        Refusal::Draining => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(status, refusal.to_string())
}

/// How many runs of a task a cancel interrupted.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Interrupted {
    pub interrupted: u64,
}

/// `DELETE /tasks/{id}`: the planner cancelled the task (or its deadline
/// passed): its call stops within one epoch tick and its slot is free; the
/// dispatch's own request is answered 422 (its answer is ignored).
#[utoipa::path(
    delete, path = "/tasks/{id}", tag = "tasks",
    params(("id" = u64, Path, description = "The planner's task id", minimum = 0, maximum = 9_223_372_036_854_775_807_i64)),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Interrupted", body = Interrupted),
        (status = 400, description = "Not a task id", body = wire::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 404, description = "The task is not running here (it ended, or never came)", body = wire::ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<wire::TaskId>,
) -> Result<Json<Interrupted>, ApiError> {
    match state.executor.cancel(id) {
        0 => Err(ApiError::not_found(format!(
            "task {id} is not running here"
        ))),
        n => Ok(Json(Interrupted {
            interrupted: n as u64,
        })),
    }
}
