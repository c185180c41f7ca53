//! The exercise's planner routes: `POST /register` and `GET /`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use serve::{ApiError, JsonBody};
use wire::legacy::Register;
use wire::planner::WorkerView;

use super::AppState;

#[utoipa::path(post, path = "/register", tag = "workers", request_body = wire::legacy::Register, security((), ("bearer" = [])), responses((status = 200, description = "Registered a legacy worker (the exercise's protocol), whose ops are learned by trying", body = Object), (status = 400, description = "Invalid URL or id", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token", body = wire::ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Register>,
) -> Result<Json<Value>, ApiError> {
    super::workers::check_url(&body.url, state.listening)?;
    if body.id.is_empty() || body.id.len() > 253 {
        return Err(ApiError::bad_request("`id` must be 1 to 253 characters"));
    }
    let id = body.id.clone();
    state
        .planner
        .register_legacy(body.id, body.url.trim_end_matches('/').to_string());
    Ok(Json(json!({"registered": id})))
}

/// The registered workers, as the exercise's planner lists them.
pub async fn index(State(state): State<AppState>) -> Json<Vec<WorkerView>> {
    Json(state.planner.workers())
}
