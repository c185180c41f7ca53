//! Submitting, watching and cancelling tasks.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serve::{ApiError, JsonBody, Path, Query};
use wire::TaskId;
use wire::planner::{Accepted, Submission, TaskStatus, TaskView};

use super::AppState;
use crate::board::CancelError;
use crate::planner::SubmitError;

/// Most tasks in one submission.
const MAX_BATCH: usize = 100_000;
const DEFAULT_WAIT_MS: u64 = 30_000;
const MAX_WAIT_MS: u64 = 600_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    #[serde(default)]
    wait: bool,
    timeout_ms: Option<u64>,
}

/// `POST /tasks`: one task or an array. 202 with the ids; with `?wait=true`,
/// 200 with the finished task(s) (422 when a single task failed), or 202 with
/// their current state if the wait times out.
#[utoipa::path(post, path = "/tasks", tag = "tasks", params(SubmitQuery), request_body(content = wire::planner::Submission, description = "One task or an array of tasks"), responses((status = 202, description = "Accepted (and durably stored): the ids", body = wire::planner::Accepted), (status = 200, description = "With wait=true: the finished task (or array of tasks); 202 with their current state when the wait times out or the planner is stopping", body = wire::planner::TaskView), (status = 422, description = "With wait=true: the single task failed (overflow, trap...)", body = wire::planner::TaskView), (status = 400, description = "Malformed body, invalid op name, wrong arity", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token (when SUBMIT_REQUIRES_TOKEN)", body = wire::ErrorBody), (status = 413, description = "Body over 8 MiB or over 100,000 tasks", body = wire::ErrorBody), (status = 415, description = "Unsupported content type", body = wire::ErrorBody), (status = 503, description = "Queue full or store unavailable; retry after Retry-After seconds", body = wire::ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    Query(query): Query<SubmitQuery>,
    JsonBody(submission): JsonBody<Submission>,
) -> Result<Response, ApiError> {
    let single = matches!(submission, Submission::One(_));
    let tasks = submission.into_tasks();
    if tasks.len() > MAX_BATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} tasks in one submission; at most {MAX_BATCH}",
                tasks.len()
            ),
        ));
    }
    let (ids, receivers) = state
        .planner
        .submit(tasks, query.wait)
        .await
        .map_err(submit_error)?;
    if !query.wait {
        return Ok((StatusCode::ACCEPTED, Json(Accepted { ids })).into_response());
    }
    let timeout =
        Duration::from_millis(query.timeout_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
    // A planner that is stopping answers at once with what it has (202, as
    // for a timeout): the tasks are stored and run on, the client polls.
    let finished = tokio::select! {
        finished = tokio::time::timeout(timeout, futures_all(receivers)) => finished.ok().flatten(),
        () = state.stopping.cancelled() => None,
    };
    let (status, views) = match finished {
        Some(views) => (StatusCode::OK, views),
        None => (StatusCode::ACCEPTED, current_views(&state, &ids)),
    };
    if single {
        let Some(view) = views.into_iter().next() else {
            return Err(ApiError::internal("a submitted task vanished"));
        };
        let status = if status == StatusCode::OK && view.status == TaskStatus::Failed {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            status
        };
        return Ok((status, Json(view)).into_response());
    }
    Ok((status, Json(views)).into_response())
}

async fn futures_all(
    receivers: Vec<tokio::sync::oneshot::Receiver<TaskView>>,
) -> Option<Vec<TaskView>> {
    let mut views = Vec::with_capacity(receivers.len());
    for receiver in receivers {
        views.push(receiver.await.ok()?);
    }
    Some(views)
}

fn current_views(state: &AppState, ids: &[TaskId]) -> Vec<TaskView> {
    ids.iter()
        .filter_map(|id| state.planner.view(*id).ok().flatten())
        .collect()
}

fn submit_error(err: SubmitError) -> ApiError {
    match err {
        SubmitError::Invalid(message) => ApiError::bad_request(message),
        SubmitError::QueueFull { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()).retry_after(1)
        }
        SubmitError::Store(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()).retry_after(1)
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RandomQuery {
    count: usize,
}

/// `POST /tasks/random?count=N`: the exercise's random add/mul tasks.
#[utoipa::path(post, path = "/tasks/random", tag = "tasks", params(RandomQuery), responses((status = 202, description = "N random add/mul tasks, as in the exercise", body = wire::planner::Accepted), (status = 400, description = "count missing or out of range", body = wire::ErrorBody), (status = 503, description = "Queue full", body = wire::ErrorBody)))]
pub async fn random(
    State(state): State<AppState>,
    Query(query): Query<RandomQuery>,
) -> Result<Response, ApiError> {
    if query.count == 0 || query.count > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_BATCH}"
        )));
    }
    let tasks = wire::random::generate(query.count);
    let (ids, _) = state
        .planner
        .submit(tasks, false)
        .await
        .map_err(submit_error)?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { ids })).into_response())
}

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = u64, Path, description = "Task id")), responses((status = 200, description = "The task", body = wire::planner::TaskView), (status = 400, description = "Not a task id", body = wire::ErrorBody), (status = 404, description = "No such task", body = wire::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Json<TaskView>, ApiError> {
    match state.planner.view(id).map_err(ApiError::internal)? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<TaskStatus>,
    op: Option<String>,
    limit: Option<usize>,
}

/// `GET /tasks`: the most recent tasks kept in memory, newest first.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListQuery), responses((status = 200, description = "Recent tasks, newest first", body = Vec<wire::planner::TaskView>), (status = 400, description = "Invalid query", body = wire::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Json<Vec<TaskView>> {
    let limit = query.limit.unwrap_or(100).min(10_000);
    Json(state.planner.list(query.status, query.op.as_deref(), limit))
}

#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = u64, Path, description = "Task id")), responses((status = 200, description = "Cancelled", body = wire::planner::TaskView), (status = 404, description = "No such task", body = wire::ErrorBody), (status = 409, description = "The task is running or finished", body = wire::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Json<TaskView>, ApiError> {
    state.planner.cancel(id).map(Json).map_err(|err| match err {
        CancelError::NotFound => ApiError::not_found(format!("no task {id}")),
        CancelError::NotQueued(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
    })
}
