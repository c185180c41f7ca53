//! What the planner answers while its store is not open yet (PostgreSQL,
//! still connecting): alive, not ready, every other request 503 with
//! `Retry-After`. Each answer closes its connection, so that clients reach
//! the real API on their next request.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Starting {
    stop: CancellationToken,
    server: JoinHandle<()>,
}

/// Serves the not-ready answers on `listener` until [`Starting::stop`].
pub fn serve(listener: TcpListener, database: String) -> Starting {
    let waiting = format!("starting: waiting for the database at {database}");
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(|| async { close(StatusCode::OK, json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get({
                let waiting = waiting.clone();
                move || async move {
                    close(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "starting", "error": waiting}),
                    )
                }
            }),
        )
        .fallback(move || async move {
            let mut response = close(StatusCode::SERVICE_UNAVAILABLE, json!({"error": waiting}));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        });
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::warn!(error = %err, "serving while starting");
            }
        }
    });
    Starting { stop, server }
}

impl Starting {
    /// Stops accepting; answers in flight finish first.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

fn close(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
