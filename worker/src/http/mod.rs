//! The worker's HTTP API. `app(state)` builds the router so tests and the
//! binary share it.

mod health;
mod legacy;
mod ops;
mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use serve::auth::{Token, require_token};

use crate::executor::Executor;

/// Components are at most this big (a ConfigMap holds 1 MiB; leave room).
pub const MAX_MODULE_BYTES: usize = 8 << 20;
/// Any other body.
const MAX_BODY_BYTES: usize = 64 << 10;

#[derive(Clone)]
pub struct AppState {
    pub id: Arc<str>,
    pub executor: Arc<Executor>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn app(state: AppState, token: Token) -> Router {
    let protected = Router::new()
        .route("/tasks", post(tasks::run))
        .route("/add", post(legacy::add))
        .route("/mult", post(legacy::mult))
        .route(
            "/ops/{name}",
            put(ops::upload)
                .delete(ops::remove)
                .layer(DefaultBodyLimit::max(MAX_MODULE_BYTES)),
        )
        .route_layer(axum::middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/", get(legacy::status))
        .route("/ops", get(ops::list))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(health::metrics))
        .merge(protected)
        .fallback(serve::error::fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
