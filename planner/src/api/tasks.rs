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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    #[serde(default)]
    wait: bool,
    timeout_ms: Option<u64>,
}

/// `POST /tasks`: one task or an array. 202 with the ids; with `?wait=true`,
/// 200 with the finished task(s) (422 when a single task failed), or 202 with
/// their current state if the wait times out.
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
    let finished = tokio::time::timeout(timeout, futures_all(receivers)).await;
    let (status, views) = match finished {
        Ok(Some(views)) => (StatusCode::OK, views),
        _ => (StatusCode::ACCEPTED, current_views(&state, &ids)),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomQuery {
    count: usize,
}

/// `POST /tasks/random?count=N`: the exercise's random add/mul tasks.
pub async fn random(
    State(state): State<AppState>,
    Query(query): Query<RandomQuery>,
) -> Result<Response, ApiError> {
    if query.count == 0 || query.count > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_BATCH}"
        )));
    }
    let tasks = crate::random_tasks::generate(query.count);
    let (ids, _) = state
        .planner
        .submit(tasks, false)
        .await
        .map_err(submit_error)?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { ids })).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Json<TaskView>, ApiError> {
    match state.planner.view(id).map_err(ApiError::internal)? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::not_found(format!("no task {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<TaskStatus>,
    op: Option<String>,
    limit: Option<usize>,
}

/// `GET /tasks`: the most recent tasks kept in memory, newest first.
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Json<Vec<TaskView>> {
    let limit = query.limit.unwrap_or(100).min(10_000);
    Json(state.planner.list(query.status, query.op.as_deref(), limit))
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Json<TaskView>, ApiError> {
    state.planner.cancel(id).map(Json).map_err(|err| match err {
        CancelError::NotFound => ApiError::not_found(format!("no task {id}")),
        CancelError::NotQueued(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
    })
}
