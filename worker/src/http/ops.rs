//! `GET /ops`, and replacing or removing a module: `PUT`/`DELETE /ops/{name}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serve::{ApiError, RawBody};
use wire::worker::{LoadedOp, ModuleSource};

use super::AppState;

pub async fn list(State(state): State<AppState>) -> Json<Vec<LoadedOp>> {
    Json(state.executor.catalog.list())
}

/// Compiles and checks the upload before anything is replaced; a refused
/// module leaves the serving one in place.
pub async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<LoadedOp>, ApiError> {
    if !wire::is_valid_op_name(&name) {
        return Err(ApiError::bad_request(format!("invalid op name `{name}`")));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty body: send the component's bytes",
        ));
    }
    let catalog = state.executor.catalog.clone();
    let op = name.clone();
    let installed =
        tokio::task::spawn_blocking(move || catalog.install(&op, &body, ModuleSource::Upload))
            .await
            .map_err(ApiError::internal)?
            .map_err(|err| ApiError::bad_request(err.to_string()))?;
    Ok(Json(LoadedOp {
        info: installed.module.info(),
        source: installed.source,
        loaded_at_ms: installed.loaded_at_ms,
        last_error: None,
    }))
}

pub async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.executor.catalog.remove(&name) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!(
            "this worker has no op `{name}`"
        )))
    }
}
