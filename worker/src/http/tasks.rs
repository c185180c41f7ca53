//! `POST /tasks`: run one task for the planner.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serve::{ApiError, JsonBody};
use wire::worker::{TaskOutcome, TaskRequest};

use super::AppState;
use crate::executor::Refusal;

/// 200 with the result; 422 with the same body when the op (or the sandbox)
/// failed the task, so a caller can't take an error for a value.
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
        duration_ms: run.elapsed.as_secs_f64() * 1000.0,
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
