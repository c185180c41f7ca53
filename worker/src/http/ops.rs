//! `GET /ops`, and replacing or removing a module: `PUT`/`DELETE /ops/{name}`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serve::{ApiError, Path, RawBody};
use wire::worker::{LoadedOp, ModuleSource};

use super::AppState;

#[utoipa::path(
    get, path = "/ops", tag = "modules",
    responses(
        (status = 200, description = "Loaded modules, and files that failed to load with their error", body = Vec<wire::worker::LoadedOp>),
    )
)]
pub async fn list(State(state): State<AppState>) -> Json<Vec<LoadedOp>> {
    Json(state.executor.catalog.list())
}

/// Compiles and checks the upload before anything is replaced; a refused
/// module leaves the serving one in place.
#[utoipa::path(
    put, path = "/ops/{name}", tag = "modules",
    params(("name" = String, Path, description = "The op name", pattern = r"^[a-z][a-z0-9_-]*$", min_length = 1, max_length = 64)),
    request_body(content = wire::worker::ComponentBytes, content_type = "application/wasm", description = "The component's bytes"),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Loaded: calls from now on use it", body = wire::worker::LoadedOp),
        (status = 400, description = "Invalid op name, empty body, not a component, or it breaks the contract (the serving version stays)", body = wire::ErrorBody),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 408, description = "The body did not arrive within BODY_TIMEOUT_MS", body = wire::ErrorBody),
        (status = 413, description = "Larger than 8 MiB", body = wire::ErrorBody),
    )
)]
pub async fn upload(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<LoadedOp>, ApiError> {
    if !wire::is_valid_op_name(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid op name `{name}`: 1 to {} of `a-z`, `0-9`, `-`, `_`, starting with a letter",
            wire::limits::MAX_OP_NAME_LEN
        )));
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
        loaded_at_ms: installed.loaded_at_ms(),
        last_error: None,
    }))
}

#[utoipa::path(
    delete, path = "/ops/{name}", tag = "modules",
    params(("name" = String, Path, description = "The op name")),
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "Removed: calls already running finish, no new ones start"),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 404, description = "This worker has no such op", body = wire::ErrorBody),
    )
)]
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
