//! `GET /workers/{id}/channel`: a registered worker opens its persistent
//! dispatch channel (a WebSocket, see `wire::channel`); from then on its
//! tasks go there instead of one HTTP request each.

use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::StatusCode;
use axum::response::Response;
use serve::{ApiError, Path};

use super::AppState;

#[utoipa::path(
    get, path = "/workers/{id}/channel", tag = "workers",
    params(("id" = String, Path, description = "The registered worker's id")),
    security((), ("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket dispatch channel: JSON text frames, each at most 64 KiB"),
        (status = 401, description = "Missing or wrong token", body = wire::ErrorBody),
        (status = 404, description = "Unknown worker: register first", body = wire::ErrorBody),
        (status = 426, description = "Not a WebSocket upgrade request", body = wire::ErrorBody),
    )
)]
pub async fn open(
    State(state): State<AppState>,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Only a worker registered here (its heartbeats come here too) gets a
    // channel, so there are never more channels than workers.
    if !state.planner.heartbeat(&id) {
        return Err(ApiError::not_found(format!(
            "unknown worker `{id}`: register first"
        )));
    }
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            format!("the dispatch channel is a WebSocket: {rejection}"),
        )
    })?;
    let channels = state.planner.channels().clone();
    let stopping = state.stopping.clone();
    let worker: std::sync::Arc<str> = id.into();
    Ok(upgrade
        .max_message_size(wire::channel::MAX_FRAME_BYTES)
        .max_frame_size(wire::channel::MAX_FRAME_BYTES)
        .read_buffer_size(wire::channel::READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            channels.serve(worker, socket, stopping).await;
        }))
}
