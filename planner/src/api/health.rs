use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use wire::planner::Stats;

use super::AppState;

pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn ready(State(state): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ready", "durable": state.planner.store().is_durable()}))
}

pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(state.planner.stats())
}

/// Prometheus text; the gauges are brought up to date first.
pub async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    crate::telemetry::refresh(&state.planner.stats(), &state.planner.workers());
    serve::metrics::render(&state.metrics)
}
