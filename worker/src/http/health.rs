use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "observe", responses((status = 200, description = "The process is alive", body = Object)))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready means able to take tasks: registered with a planner that answers,
/// and not draining. Kubernetes then counts the pod as capacity only when it
/// really is.
#[utoipa::path(
    get, path = "/readyz", tag = "observe",
    responses(
        (status = 200, description = "Ready: registered, the ops it offers", body = Object),
        (status = 503, description = "Not registered with an answering planner, or draining", body = Object),
    )
)]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.executor.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
    } else if !state.executor.is_registered() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not registered with the planner"})),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "ops": state.executor.catalog.names()})),
        )
    }
}

/// Prometheus text; the gauges are brought up to date first.
#[utoipa::path(get, path = "/metrics", tag = "observe", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let executor = &state.executor;
    crate::telemetry::refresh(
        executor.slot_count(),
        executor.busy(),
        executor.catalog.names().len(),
    );
    serve::metrics::render(&state.metrics)
}
