//! The fleet's modules: `PUT /ops/{name}` rolls one out, `GET /ops` shows progress.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serve::{ApiError, Path, RawBody};
use wire::planner::{OpRollout, RolloutReport};

use super::AppState;
use crate::planner::ModuleError;

#[utoipa::path(put, path = "/ops/{name}", tag = "modules", params(("name" = String, Path, description = "The op name")), request_body(content = wire::worker::ComponentBytes, content_type = "application/wasm", description = "The component's bytes"), security((), ("bearer" = [])), responses((status = 200, description = "Checked on one worker, stored, and pushed to every worker offering the op", body = wire::planner::RolloutReport), (status = 400, description = "Not a component, or a worker refused it (the fleet keeps its version)", body = wire::ErrorBody), (status = 401, description = "Missing or wrong token", body = wire::ErrorBody), (status = 413, description = "Larger than 8 MiB", body = wire::ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawBody(bytes): RawBody,
) -> Result<Json<RolloutReport>, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty body: send the component's bytes",
        ));
    }
    state
        .planner
        .put_module(&name, bytes)
        .await
        .map(Json)
        .map_err(|err| match err {
            ModuleError::Invalid(_) | ModuleError::Refused { .. } => {
                ApiError::bad_request(err.to_string())
            }
            ModuleError::Store(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
            }
        })
}

#[utoipa::path(get, path = "/ops", tag = "modules", responses((status = 200, description = "Per op: the fleet's module digest and which worker runs which digest", body = Vec<wire::planner::OpRollout>)))]
pub async fn list(State(state): State<AppState>) -> Json<Vec<OpRollout>> {
    Json(state.planner.rollouts())
}
