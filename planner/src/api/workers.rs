//! Workers registering, heartbeating and leaving.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use serve::{ApiError, JsonBody, Path};
use wire::planner::{Registration, WorkerView};

use super::AppState;

#[utoipa::path(post, path = "/workers", tag = "workers", request_body = wire::planner::Registration, security((), ("bearer" = [])), responses((status = 200, description = "Registered (or updated)", body = Object), (status = 400, description = "Invalid registration", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token", body = wire::ErrorBody), (status = 409, description = "The id belongs to a live worker at another address", body = wire::ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(registration): JsonBody<Registration>,
) -> Result<Json<Value>, ApiError> {
    validate(&registration, state.listening)?;
    let id = registration.id.clone();
    for op in &registration.ops {
        crate::telemetry::offered(&op.name);
    }
    state
        .planner
        .register(registration)
        .map_err(|taken| ApiError::new(StatusCode::CONFLICT, taken.to_string()))?;
    // With several replicas, the worker's heartbeats must reach this one.
    Ok(Json(match state.planner.advertised() {
        Some(url) => json!({"registered": id, "heartbeat_to": url}),
        None => json!({"registered": id}),
    }))
}

fn validate(registration: &Registration, listening: SocketAddr) -> Result<(), ApiError> {
    if registration.id.is_empty() || registration.id.len() > 253 {
        return Err(ApiError::bad_request("`id` must be 1 to 253 characters"));
    }
    check_url(&registration.url, listening)?;
    if registration.slots == 0 || registration.slots > wire::MAX_SLOTS {
        return Err(ApiError::bad_request(format!(
            "`slots` must be 1 to {}",
            wire::MAX_SLOTS
        )));
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
    if registration.ops.len() > wire::limits::MAX_OPS_PER_WORKER {
        return Err(ApiError::bad_request(format!(
            "{} ops; a worker offers at most {}",
            registration.ops.len(),
            wire::limits::MAX_OPS_PER_WORKER
        )));
    }
    if let Some(long) = registration
        .ops
        .iter()
        .find(|op| op.doc.len() > wire::limits::MAX_OP_DOC_BYTES)
    {
        return Err(ApiError::bad_request(format!(
            "the doc of op `{}` is {} bytes; at most {}",
            long.name,
            long.doc.len(),
            wire::limits::MAX_OP_DOC_BYTES
        )));
    }
    Ok(())
}

/// A worker URL is an origin and nothing else (`http://host:port`): no
/// user, path, query or fragment that would make the planner's requests land
/// elsewhere than the worker's routes; and never the planner itself.
pub fn check_url(url: &str, listening: SocketAddr) -> Result<(), ApiError> {
    let shown: String = url.chars().take(100).collect();
    let refuse = |why: &str| ApiError::bad_request(format!("`url` {why}, got `{shown}`"));
    if url.len() > 2048 {
        return Err(refuse("is longer than 2048 characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| refuse("is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(refuse("must be http or https"));
    }
    let origin_only = parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none()
        && !url.contains('#')
        && !url.contains('?');
    if !origin_only {
        return Err(refuse(
            "must be an origin only (scheme://host:port), without user, path, query or fragment",
        ));
    }
    if points_at(&parsed, listening) {
        return Err(refuse("points at this planner itself"));
    }
    Ok(())
}

/// Whether `url` reaches the planner listening on `listening`: same port on
/// a loopback or unspecified address, `localhost`, or the bound address.
fn points_at(url: &reqwest::Url, listening: SocketAddr) -> bool {
    if url.port_or_known_default() != Some(listening.port()) {
        return false;
    }
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => {
            let ip = IpAddr::V4(ip);
            ip.is_loopback() || ip.is_unspecified() || ip == listening.ip()
        }
        Some(url::Host::Ipv6(ip)) => {
            let ip = IpAddr::V6(ip);
            ip.is_loopback() || ip.is_unspecified() || ip == listening.ip()
        }
        None => false,
    }
}

#[utoipa::path(post, path = "/workers/{id}/heartbeat", tag = "workers", params(("id" = String, Path, description = "Worker id")), security((), ("bearer" = [])), responses((status = 204, description = "Seen"), (status = 401, description = "Missing or wrong token", body = wire::ErrorBody), (status = 404, description = "Unknown worker: register again", body = wire::ErrorBody)))]
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

#[utoipa::path(delete, path = "/workers/{id}", tag = "workers", params(("id" = String, Path, description = "Worker id")), security((), ("bearer" = [])), responses((status = 204, description = "Leaving: gets no new tasks"), (status = 401, description = "Missing or wrong token", body = wire::ErrorBody), (status = 404, description = "Unknown worker", body = wire::ErrorBody)))]
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
