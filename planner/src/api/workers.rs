//! Workers registering, heartbeating and leaving.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use serve::{ApiError, JsonBody, Path};
use wire::planner::{Registration, WorkerView};

use super::AppState;

#[utoipa::path(post, path = "/workers", tag = "workers", request_body = wire::planner::Registration, security((), ("bearer" = [])), responses((status = 200, description = "Registered (or updated)", body = Object), (status = 400, description = "Invalid registration", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token (when TOKEN is set)", body = wire::ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(registration): JsonBody<Registration>,
) -> Result<Json<Value>, ApiError> {
    validate(&registration)?;
    let id = registration.id.clone();
    state.planner.register(registration);
    Ok(Json(json!({"registered": id})))
}

fn validate(registration: &Registration) -> Result<(), ApiError> {
    if registration.id.is_empty() || registration.id.len() > 253 {
        return Err(ApiError::bad_request("`id` must be 1 to 253 characters"));
    }
    check_url(&registration.url)?;
    if registration.slots == 0 {
        return Err(ApiError::bad_request("`slots` must be at least 1"));
    }
    if let Some(bad) = registration
        .ops
        .iter()
        .find(|op| !wire::is_valid_op_name(&op.name))
    {
        return Err(ApiError::bad_request(format!(
            "invalid op name `{}`",
            bad.name
        )));
    }
    Ok(())
}

pub fn check_url(url: &str) -> Result<(), ApiError> {
    if (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2048
        && reqwest::Url::parse(url).is_ok()
    {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`url` must be an http(s) URL, got `{}`",
            url.chars().take(100).collect::<String>()
        )))
    }
}

#[utoipa::path(post, path = "/workers/{id}/heartbeat", tag = "workers", params(("id" = String, Path, description = "Worker id")), security((), ("bearer" = [])), responses((status = 204, description = "Seen"), (status = 401, description = "Missing or wrong token (when TOKEN is set)", body = wire::ErrorBody), (status = 404, description = "Unknown worker: register again", body = wire::ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.planner.heartbeat(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "unknown worker `{id}`: register first"
        )))
    }
}

#[utoipa::path(delete, path = "/workers/{id}", tag = "workers", params(("id" = String, Path, description = "Worker id")), security((), ("bearer" = [])), responses((status = 204, description = "Leaving: gets no new tasks"), (status = 401, description = "Missing or wrong token (when TOKEN is set)", body = wire::ErrorBody), (status = 404, description = "Unknown worker", body = wire::ErrorBody)))]
pub async fn deregister(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.planner.deregister(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("unknown worker `{id}`")))
    }
}

#[utoipa::path(get, path = "/workers", tag = "workers", responses((status = 200, description = "Workers with their ops, slots, busy slots and counts", body = Vec<wire::planner::WorkerView>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<WorkerView>> {
    Json(state.planner.workers())
}
