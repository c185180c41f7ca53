//! The worker's HTTP API. `app(state)` builds the router; each route's
//! OpenAPI description sits on its handler and is served at `/openapi.json`,
//! generated from the same route list (`utoipa-axum`).

mod health;
mod legacy;
mod ops;
mod tasks;

use serve::auth::BearerAuth;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use serve::auth::{Token, require_token};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::executor::Executor;

/// Any body but a module's.
const MAX_BODY_BYTES: usize = 64 << 10;

#[derive(Clone)]
pub struct AppState {
    pub id: Arc<str>,
    pub executor: Arc<Executor>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn app(state: AppState, token: Token) -> Router {
    let (router, mut api) = routes(token).split_for_parts();
    // After the routes are in: it adds to each of their operations.
    utoipa::Modify::modify(&serve::openapi::ServerAnswers, &mut api);
    let api = Arc::new(api);
    router
        .route(
            "/openapi.json",
            get(move || async move { Json(api.as_ref().clone()) }),
        )
        .fallback(serve::error::fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A page in a browser on the worker's host must not reach its
        // routes either (the token guards them, but `AUTH=off` labs exist).
        .layer(axum::middleware::from_fn(
            serve::cross_origin::refuse_cross_site,
        ))
        .with_state(state)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "workers worker",
        description = "Runs WebAssembly operation modules for the planner."
    ),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

fn routes(token: Token) -> OpenApiRouter<AppState> {
    let modules = OpenApiRouter::new()
        .routes(routes!(ops::upload, ops::remove))
        .layer(DefaultBodyLimit::max(wire::limits::MAX_MODULE_BYTES));
    let protected = OpenApiRouter::new()
        .routes(routes!(tasks::run))
        .routes(routes!(tasks::cancel))
        .routes(routes!(legacy::add))
        .routes(routes!(legacy::mult))
        .merge(modules)
        .route_layer(axum::middleware::from_fn_with_state(token, require_token));
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(legacy::status))
        .routes(routes!(ops::list))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .merge(protected)
}
