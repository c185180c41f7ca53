//! The planner's HTTP API. `app(state, auth)` builds the router: the binary
//! serves it, `planner/tests/api.rs` calls it in process; each route's OpenAPI
//! description sits on its handler.

mod channel;
mod events;
mod health;
mod legacy;
mod ops;
mod tasks;
mod ui;
mod workers;

use serve::auth::BearerAuth;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use serve::auth::require;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::access::Access;
use crate::planner::Planner;

/// A batch of 100,000 tasks fits; a multi-megabyte body beyond is refused.
const MAX_SUBMISSION_BYTES: usize = 8 << 20;
const MAX_BODY_BYTES: usize = 64 << 10;

#[derive(Clone)]
pub struct AppState {
    pub planner: Arc<Planner>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Cancelled when the planner starts stopping: long-lived answers (event
    /// streams, `?wait=true`) end on it so that draining never hangs.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The planner's own listening address: a worker URL pointing back at it
    /// is refused (dispatching or pushing modules to ourselves).
    pub listening: std::net::SocketAddr,
}

/// The router, and the OpenAPI description generated from the same route
/// list (`utoipa-axum`), served at `/openapi.json`: a route can't exist
/// undocumented, nor be documented without existing.
pub fn app(state: AppState, access: &Access) -> Router {
    let (router, mut api) = routes(access).split_for_parts();
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
        .layer(axum::middleware::from_fn(
            serve::cross_origin::refuse_cross_site,
        ))
        .with_state(state)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "workers planner", description = "Submit compute tasks; workers running WebAssembly op modules compute them."),
    components(schemas(wire::planner::WorkerEvent, wire::planner::WorkerChange)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

fn routes(access: &Access) -> OpenApiRouter<AppState> {
    let modules = OpenApiRouter::new()
        .routes(routes!(ops::put))
        .layer(DefaultBodyLimit::max(wire::limits::MAX_MODULE_BYTES));
    // Sized from the limits a worker enforces on the modules it loads, so
    // any worker within them can register.
    let registration = OpenApiRouter::new()
        .routes(routes!(workers::register))
        .layer(DefaultBodyLimit::max(wire::limits::MAX_REGISTRATION_BYTES));
    let worker_routes = OpenApiRouter::new()
        .merge(registration)
        .routes(routes!(workers::deregister))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(channel::open))
        .routes(routes!(legacy::register))
        .merge(modules)
        .route_layer(axum::middleware::from_fn_with_state(
            access.admin_guard(),
            require,
        ));
    let submission = OpenApiRouter::new()
        .routes(routes!(tasks::submit))
        .routes(routes!(tasks::cancel_many))
        .layer(DefaultBodyLimit::max(MAX_SUBMISSION_BYTES));
    let submit_routes = OpenApiRouter::new()
        .merge(submission)
        .routes(routes!(tasks::random))
        .routes(routes!(tasks::cancel))
        .route_layer(axum::middleware::from_fn_with_state(
            access.submit_guard(),
            require,
        ));
    let read_routes = OpenApiRouter::new()
        .routes(routes!(ui::index))
        .routes(routes!(tasks::list))
        .routes(routes!(tasks::get))
        .routes(routes!(tasks::batch))
        .routes(routes!(workers::list))
        .routes(routes!(workers::summary))
        .routes(routes!(ops::list))
        .routes(routes!(events::stream))
        .routes(routes!(health::stats))
        .routes(routes!(health::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            access.read_guard(),
            require,
        ));
    // Probes and the descriptions stay open: they show nothing of the work.
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(ui::page))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
        .merge(read_routes)
        .merge(worker_routes)
        .merge(submit_routes)
}
