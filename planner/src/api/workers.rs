//! Workers registering, heartbeating and leaving.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use serve::{ApiError, JsonBody, Path, Query};
use wire::planner::{Registration, WorkerView, WorkersSummary};

use super::AppState;
use crate::board::WorkerQuery;

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

/// Workers in one page unless asked for fewer: enough for any fleet the
/// dashboard lists one by one, small enough to answer in milliseconds.
const DEFAULT_PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;
const DEFAULT_SHOWN: usize = 10;
const MAX_SHOWN: usize = 100;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page cursor: only workers whose id sorts after this one (the last id of the previous page; the `Link: rel="next"` header gives the next page's address).
    #[param(max_length = 253)]
    after: Option<String>,
    /// Most workers in the answer: 1,000 unless given, at most 10,000.
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// Only workers of this flavor (`general`, `mul`, `add+sq`...).
    #[param(max_length = 1024)]
    flavor: Option<String>,
    /// Only workers offering this op.
    #[param(min_length = 1, max_length = 64, pattern = r"^[a-z][a-z0-9_-]*$")]
    op: Option<String>,
}

/// `GET /workers`: a page of the workers in id order.
#[utoipa::path(get, path = "/workers", tag = "workers", params(ListQuery), responses((status = 200, description = "Workers with their ops, slots, busy slots and counts, in id order; when more follow, a `Link: <...>; rel=\"next\"` header gives the next page", body = Vec<wire::planner::WorkerView>), (status = 400, description = "Invalid query", body = wire::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<(HeaderMap, Json<Vec<WorkerView>>), ApiError> {
    let query = worker_query(query)?;
    let page = state.planner.workers_page(&query);
    let mut headers = HeaderMap::new();
    if page.more
        && let Some(last) = page.workers.last()
    {
        let next = next_link(&query, &last.id);
        if let Ok(value) = HeaderValue::from_str(&next) {
            headers.insert(header::LINK, value);
        }
    }
    Ok((headers, Json(page.workers)))
}

fn worker_query(query: ListQuery) -> Result<WorkerQuery, ApiError> {
    if query.limit == Some(0) {
        return Err(ApiError::bad_request("`limit` is at least 1"));
    }
    if query.after.as_ref().is_some_and(|id| id.len() > 253) {
        return Err(ApiError::bad_request(
            "`after` is a worker id: at most 253 characters",
        ));
    }
    if query.flavor.as_ref().is_some_and(|f| f.len() > 1_024) {
        return Err(ApiError::bad_request(
            "`flavor` is at most 1,024 characters",
        ));
    }
    if let Some(op) = query.op.as_deref().filter(|op| !wire::is_valid_op_name(op)) {
        return Err(ApiError::bad_request(format!(
            "invalid op name `{}`",
            op.chars().take(64).collect::<String>()
        )));
    }
    Ok(WorkerQuery {
        after: query.after,
        limit: query.limit.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE),
        flavor: query.flavor,
        op: query.op,
    })
}

/// `</workers?after=…&limit=…>; rel="next"`, keeping the filters.
fn next_link(query: &WorkerQuery, last: &str) -> String {
    let mut params = url::form_urlencoded::Serializer::new(String::new());
    params.append_pair("after", last);
    params.append_pair("limit", &query.limit.to_string());
    if let Some(flavor) = &query.flavor {
        params.append_pair("flavor", flavor);
    }
    if let Some(op) = &query.op {
        params.append_pair("op", op);
    }
    format!("</workers?{}>; rel=\"next\"", params.finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// How many workers of each flavor to include (the first in id order): 10 unless given, at most 100.
    #[param(maximum = 100)]
    top: Option<usize>,
}

/// `GET /workers/summary`: the fleet by flavor.
#[utoipa::path(get, path = "/workers/summary", tag = "workers", params(SummaryQuery), responses((status = 200, description = "Workers, slots and busy slots in total and by flavor, each flavor's digests per op with how many workers run each (a rollout's progress), and its first `top` workers", body = wire::planner::WorkersSummary), (status = 400, description = "Invalid query", body = wire::ErrorBody)))]
pub async fn summary(
    State(state): State<AppState>,
    Query(query): Query<SummaryQuery>,
) -> Result<Json<WorkersSummary>, ApiError> {
    let top = query.top.unwrap_or(DEFAULT_SHOWN);
    if top > MAX_SHOWN {
        return Err(ApiError::bad_request(format!(
            "`top` is at most {MAX_SHOWN}"
        )));
    }
    Ok(Json(state.planner.workers_summary(top)))
}
