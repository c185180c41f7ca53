//! Submitting, watching and cancelling tasks.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serve::{ApiError, JsonBody, Path, Query};
use wire::TaskId;
use wire::planner::{Accepted, CancelReport, CancelRequest, Submission, TaskStatus, TaskView};

use super::AppState;
use crate::board::{CancelError, TaskFilter};
use crate::planner::{CancelOutcome, CancelTarget, SubmitError};
use crate::store::Idempotency;

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

/// What `POST /tasks` answers with 202 (described for the OpenAPI document;
/// the handler builds these shapes directly).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
enum Submitted {
    Accepted(Accepted),
    One(TaskView),
    Many(Vec<TaskView>),
}

/// What `POST /tasks?wait=true` answers with 200.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)]
enum Waited {
    One(TaskView),
    Many(Vec<TaskView>),
}

/// `POST /tasks`: one task or an array. 202 with the ids; with `?wait=true`,
/// 200 with the finished task(s) (422 when a single task failed), or 202 with
/// their current state if the wait times out.
#[utoipa::path(post, path = "/tasks", tag = "tasks", params(SubmitQuery, ("Idempotency-Key" = Option<String>, Header, description = "Names this submission (1 to 255 bytes): a repeat with the same key and body within IDEMPOTENCY_TTL (24 h, at most RESULT_TTL), also after a planner restart, queues nothing and answers the first submission's ids (header `Idempotent-Replayed: true`); the same key with another body is refused (409). For an array, the key names the whole batch.", min_length = 1, max_length = 255)), request_body(content = wire::planner::Submission, description = "One task or an array of tasks, each with optional controls: `timeout_ms`, `retries`, `priority`"), responses((status = 202, description = "Accepted (and durably stored): the ids; with wait=true, the task (or array of tasks) as it is when the wait times out or the planner is stopping", body = Submitted), (status = 200, description = "With wait=true: the finished task (or array of tasks)", body = Waited), (status = 422, description = "With wait=true: the single task failed (overflow, trap...)", body = wire::planner::TaskView), (status = 409, description = "The Idempotency-Key was used with a different submission", body = wire::ErrorBody), (status = 400, description = "Malformed body, invalid op name, wrong arity, a control out of range, a bad Idempotency-Key", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token (when SUBMIT_REQUIRES_TOKEN)", body = wire::ErrorBody), (status = 413, description = "Body over 8 MiB or over 100,000 tasks", body = wire::ErrorBody), (status = 415, description = "Unsupported content type", body = wire::ErrorBody), (status = 503, description = "Queue full or store unavailable; retry after Retry-After seconds", body = wire::ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    Query(query): Query<SubmitQuery>,
    headers: HeaderMap,
    JsonBody(submission): JsonBody<Submission>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers, &submission)?;
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
    let submitted = state
        .planner
        .submit_keyed(tasks, query.wait, key, !single)
        .await
        .map_err(submit_error)?;
    let (ids, receivers, batch) = (submitted.ids, submitted.receivers, submitted.batch);
    let replayed = [(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static(if submitted.replayed { "true" } else { "false" }),
    )];
    if !query.wait {
        return Ok((
            StatusCode::ACCEPTED,
            replayed,
            Json(Accepted { ids, batch }),
        )
            .into_response());
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
        None => (StatusCode::ACCEPTED, current_views(&state, &ids).await),
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
        return Ok((status, replayed, Json(view)).into_response());
    }
    Ok((status, replayed, Json(views)).into_response())
}

/// The submission's idempotency key (as digests), if it has one.
fn idempotency_key(
    headers: &HeaderMap,
    submission: &Submission,
) -> Result<Option<Idempotency>, ApiError> {
    use wire::controls::{IDEMPOTENCY_KEY_HEADER, MAX_IDEMPOTENCY_KEY_LEN};
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "one Idempotency-Key header per submission",
        ));
    }
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key is {} bytes long: from 1 to {MAX_IDEMPOTENCY_KEY_LEN}",
            key.len()
        )));
    }
    // The submission as parsed, written back: the same tasks and controls
    // give the same digest however the client spaced or ordered its JSON.
    let request = serde_json::to_vec(submission).map_err(ApiError::internal)?;
    Ok(Some(Idempotency {
        key: wire::digest_hex(key),
        request: wire::digest_hex(&request),
        created_at_ms: serve::now_ms(),
    }))
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

async fn current_views(state: &AppState, ids: &[TaskId]) -> Vec<TaskView> {
    let mut views = Vec::with_capacity(ids.len());
    for id in ids {
        if let Ok(Some(view)) = state.planner.view(*id).await {
            views.push(view);
        }
    }
    views
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
        SubmitError::KeyReused => ApiError::new(StatusCode::CONFLICT, err.to_string()),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RandomQuery {
    #[param(minimum = 1, maximum = 100_000)]
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
    Ok((StatusCode::ACCEPTED, Json(Accepted { ids, batch: None })).into_response())
}

#[utoipa::path(get, path = "/tasks/{id}", tag = "tasks", params(("id" = u64, Path, description = "Task id")), responses((status = 200, description = "The task", body = wire::planner::TaskView), (status = 400, description = "Not a task id", body = wire::ErrorBody), (status = 404, description = "No such task", body = wire::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Json<TaskView>, ApiError> {
    match state.planner.view(id).await.map_err(ApiError::internal)? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::not_found(format!(
            "no task {id}: it expired (finished tasks are kept for RESULT_TTL) or never existed"
        ))),
    }
}

/// `GET /batches/{id}`: a batch submission followed as one unit.
#[utoipa::path(get, path = "/batches/{id}", tag = "tasks", params(("id" = u64, Path, description = "The batch's id (`batch` in the submission's answer: its first task's id)")), responses((status = 200, description = "The batch's tasks counted by status", body = wire::planner::BatchView), (status = 400, description = "Not a batch id", body = wire::ErrorBody), (status = 404, description = "No such batch (or all its tasks expired)", body = wire::ErrorBody)))]
pub async fn batch(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Json<wire::planner::BatchView>, ApiError> {
    match state.planner.batch(id).await.map_err(ApiError::internal)? {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::not_found(format!(
            "no batch {id}: its tasks expired (finished tasks are kept for RESULT_TTL) or it never existed"
        ))),
    }
}

/// Most ids in one `GET /tasks?ids=`.
const MAX_IDS: usize = 1_000;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state.
    status: Option<TaskStatus>,
    /// Only tasks of this op.
    op: Option<String>,
    /// Most tasks in the answer: 100 unless given, at most 10,000.
    limit: Option<usize>,
    /// Page cursor: only tasks with a smaller id (the last id of the previous page).
    before: Option<TaskId>,
    /// Only tasks submitted at or after this time (unix milliseconds).
    since_ms: Option<u64>,
    /// Comma-separated task ids (at most 1,000): these tasks, in this order, from memory or the store; unknown ids are left out. Not combined with the other parameters.
    ids: Option<String>,
}

/// `GET /tasks`: the most recent tasks kept in memory, newest first, or the
/// tasks named by `ids`.
#[utoipa::path(get, path = "/tasks", tag = "tasks", params(ListQuery), responses((status = 200, description = "Recent tasks, newest first (held in memory: every unfinished task and the latest finished ones); with ids, those tasks in that order", body = Vec<wire::planner::TaskView>), (status = 400, description = "Invalid query, over 1,000 ids, or ids combined with filters", body = wire::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    // The description says int64 (ids and times never come near 2^63).
    for (name, value) in [("before", query.before), ("since_ms", query.since_ms)] {
        if value.is_some_and(|v| v > i64::MAX as u64) {
            return Err(ApiError::bad_request(format!("`{name}` is at most 2^63-1")));
        }
    }
    if let Some(ids) = &query.ids {
        if query.status.is_some()
            || query.op.is_some()
            || query.limit.is_some()
            || query.before.is_some()
            || query.since_ms.is_some()
        {
            return Err(ApiError::bad_request(
                "`ids` names the tasks: it is not combined with status, op, limit, before or since_ms",
            ));
        }
        let ids = parse_ids(ids)?;
        return state
            .planner
            .views(&ids)
            .await
            .map(Json)
            .map_err(ApiError::internal);
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let filter = TaskFilter {
        status: query.status,
        op: query.op,
        before: query.before,
        since_ms: query.since_ms,
    };
    state
        .planner
        .page(&filter, limit)
        .await
        .map(Json)
        .map_err(ApiError::internal)
}

fn parse_ids(list: &str) -> Result<Vec<TaskId>, ApiError> {
    let ids: Vec<TaskId> = list
        .split(',')
        .map(|id| {
            id.trim().parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "`ids`: `{}` is not a task id",
                    id.chars().take(40).collect::<String>()
                ))
            })
        })
        .take(MAX_IDS + 1)
        .collect::<Result<_, _>>()?;
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad_request(format!(
            "`ids`: at most {MAX_IDS} per request"
        )));
    }
    Ok(ids)
}

/// `POST /tasks/cancel`: many tasks in one request, by id or by filter.
#[utoipa::path(post, path = "/tasks/cancel", tag = "tasks", request_body(content = wire::planner::CancelRequest, description = "`{\"ids\": [...]}`, or a filter `{\"status\": \"queued\", \"op\": \"mul\"}` (`queued` or `running`; op optional); running tasks are interrupted on their workers"), responses((status = 200, description = "How many were cancelled; listed ids that were unknown or already finished", body = wire::planner::CancelReport), (status = 400, description = "Neither ids nor a filter, both, a status other than queued or running, over 100,000 ids, invalid op name", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token (when SUBMIT_REQUIRES_TOKEN)", body = wire::ErrorBody), (status = 413, description = "Body over 8 MiB", body = wire::ErrorBody)))]
pub async fn cancel_many(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<CancelRequest>,
) -> Result<Json<CancelReport>, ApiError> {
    let target = match (&request.ids, request.status, &request.op) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::bad_request(
                "give either `ids` or a filter (`status`, `op`), not both",
            ));
        }
        (Some(ids), None, None) => {
            if ids.is_empty() || ids.len() > MAX_BATCH {
                return Err(ApiError::bad_request(format!(
                    "`ids`: between 1 and {MAX_BATCH} task ids"
                )));
            }
            CancelTarget::Ids(ids)
        }
        (None, Some(status @ (TaskStatus::Queued | TaskStatus::Running)), op) => {
            if let Some(op) = op
                && !wire::is_valid_op_name(op)
            {
                return Err(ApiError::bad_request(format!(
                    "invalid op name `{}`",
                    op.chars().take(80).collect::<String>()
                )));
            }
            if status == TaskStatus::Queued {
                CancelTarget::Queued { op: op.as_deref() }
            } else {
                CancelTarget::Running { op: op.as_deref() }
            }
        }
        (None, Some(status), _) => {
            return Err(ApiError::bad_request(format!(
                "only queued and running tasks can be cancelled, not {}",
                status.as_str()
            )));
        }
        (None, None, _) => {
            return Err(ApiError::bad_request(
                "give `ids`, or `\"status\": \"queued\"` or `\"running\"` (and optionally `op`) to cancel every such task",
            ));
        }
    };
    state
        .planner
        .cancel_many(target)
        .await
        .map(Json)
        .map_err(|err| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()))
}

#[utoipa::path(delete, path = "/tasks/{id}", tag = "tasks", params(("id" = u64, Path, description = "Task id")), responses((status = 200, description = "Cancelled (a running task is interrupted on its worker; with several replicas, the one holding the task does it and this answer waits for it)", body = wire::planner::TaskView), (status = 202, description = "Several replicas: the task is held by another replica, which had not cancelled it within 2 s; the request stands and is carried out when that replica sees it. The body is the task as it stands", body = wire::planner::TaskView), (status = 400, description = "Not a task id", body = wire::ErrorBody), (status = 404, description = "No such task", body = wire::ErrorBody), (status = 409, description = "The task already finished", body = wire::ErrorBody), (status = 503, description = "The shared store could not be reached", body = wire::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<TaskId>,
) -> Result<Response, ApiError> {
    state
        .planner
        .cancel(id)
        .await
        .map(|outcome| match outcome {
            CancelOutcome::Done(view) => (StatusCode::OK, Json(view)).into_response(),
            CancelOutcome::Requested(view) => (StatusCode::ACCEPTED, Json(view)).into_response(),
        })
        .map_err(|err| match err {
            CancelError::NotFound => ApiError::not_found(format!("no task {id}")),
            CancelError::NotQueued(_) => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            CancelError::Store(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            }
        })
}
