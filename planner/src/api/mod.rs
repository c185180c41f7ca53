//! The planner's HTTP API. `app(state)` builds the router so the binary and
//! the tests share it.

mod events;
mod health;
mod legacy;
mod ops;
mod tasks;
mod ui;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use serve::auth::{Token, require_token};

use crate::planner::Planner;

/// A batch of 100,000 tasks fits; a multi-megabyte body beyond is refused.
const MAX_SUBMISSION_BYTES: usize = 8 << 20;
const MAX_BODY_BYTES: usize = 64 << 10;
/// Same bound as the worker's.
const MAX_MODULE_BYTES: usize = 8 << 20;

#[derive(Clone)]
pub struct AppState {
    pub planner: Arc<Planner>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub struct AuthPolicy {
    pub token: Token,
    /// Submitting and cancelling tasks need the token too.
    pub submit_requires_token: bool,
}

pub fn app(state: AppState, auth: AuthPolicy) -> Router {
    let guard = || axum::middleware::from_fn_with_state(auth.token.clone(), require_token);
    let submit_guard = {
        let token = if auth.submit_requires_token {
            auth.token.clone()
        } else {
            Token::default()
        };
        axum::middleware::from_fn_with_state(token, require_token)
    };
    let worker_routes = Router::new()
        .route("/workers", post(workers::register))
        .route("/workers/{id}", delete(workers::deregister))
        .route("/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/register", post(legacy::register))
        .route(
            "/ops/{name}",
            put(ops::put).layer(DefaultBodyLimit::max(MAX_MODULE_BYTES)),
        )
        .route_layer(guard());
    let submit_routes = Router::new()
        .route(
            "/tasks",
            post(tasks::submit).layer(DefaultBodyLimit::max(MAX_SUBMISSION_BYTES)),
        )
        .route("/tasks/random", post(tasks::random))
        .route("/tasks/{id}", delete(tasks::cancel))
        .route_layer(submit_guard);
    Router::new()
        .route("/", get(ui::index))
        .route("/ui", get(ui::page))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::get))
        .route("/workers", get(workers::list))
        .route("/ops", get(ops::list))
        .route("/events", get(events::stream))
        .route("/stats", get(health::stats))
        .route("/metrics", get(health::metrics))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .merge(worker_routes)
        .merge(submit_routes)
        .fallback(serve::error::fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
