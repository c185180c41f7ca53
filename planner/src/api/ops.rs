//! The fleet's modules: `PUT /ops/{name}` rolls one out, `GET /ops` shows progress.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serve::{ApiError, Path, RawBody};
use wire::planner::{OpRollout, RolloutReport};

use super::AppState;
use crate::planner::ModuleError;

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

pub async fn list(State(state): State<AppState>) -> Json<Vec<OpRollout>> {
    Json(state.planner.rollouts())
}
