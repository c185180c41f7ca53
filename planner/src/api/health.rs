use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use wire::planner::Stats;

use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "observe", responses((status = 200, description = "The process is alive", body = Object)))]
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "observe", responses((status = 200, description = "Ready to accept tasks", body = Object), (status = 503, description = "Stopping, or (several replicas) this replica lost its lease on the shared store: send new work elsewhere", body = Object)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.stopping.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopping"})),
        );
    }
    if !state.planner.is_healthy() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "no lease: the shared store is not answering"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"status": "ready", "durable": state.planner.store().is_durable()})),
    )
}

#[utoipa::path(get, path = "/stats", tag = "observe", responses((status = 200, description = "Counts by status and op, workers by flavor, throughput, dispatch gap", body = wire::planner::Stats)))]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(crate::telemetry::bounded(state.planner.stats().await))
}

/// Prometheus text; the gauges are brought up to date first.
#[utoipa::path(get, path = "/metrics", tag = "observe", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    crate::telemetry::refresh(
        &state.planner.stats().await,
        &state.planner.workers_summary(0),
    );
    serve::metrics::render(&state.metrics)
}
