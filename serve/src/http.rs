//! Serving a router over HTTP/1 with the connection hygiene `axum::serve`
//! lacks: a deadline on each request head and each request body, a cap on
//! open connections, bounded request targets and headers with JSON errors,
//! and a graceful stop driven by the caller's shutdown future.
//!
//! Built on hyper's own connection builder (`header_read_timeout` needs its
//! timer, which `axum::serve` does not set); the body deadline is a small
//! body wrapper because `tower-http`'s body timeout restarts at every frame,
//! which a client sending one byte a second never trips.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::ApiError;

/// Request targets (path and query) longer than this get a JSON 414; just
/// under hyper's own limit (64 KiB), so batch queries like `GET /tasks?ids=`
/// have room.
pub const MAX_URI_BYTES: usize = 60 << 10;
/// Request headers beyond this many, or this many bytes in all, get a JSON 431.
pub const MAX_HEADERS: usize = 100;
pub const MAX_HEADER_BYTES: usize = 32 << 10;
/// hyper's own limits, the backstop past ours: a head beyond them is
/// answered by hyper itself (a bare 414/431) and the connection closed.
const HARD_MAX_HEADERS: usize = 2 * MAX_HEADERS;
const HARD_MAX_HEAD_BYTES: usize = 4 * MAX_HEADER_BYTES;
/// Connections refused for capacity at once; past it they are just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal may take to write its 503 and see the client go.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// A failed `accept` (e.g. out of file descriptors) is retried after this.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long our own HTTP clients keep an idle connection: shorter than the
/// default header timeout, after which a server closes an idle connection,
/// so a request is never sent on a connection the server is closing.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

/// What one client connection may hold; flags and environment variables of
/// both binaries.
#[derive(clap::Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Ms a connection may take to send a request's head (request line and
    /// headers); also how long an idle keep-alive connection stays open.
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub header_timeout_ms: u64,
    /// Ms a request's body may take to arrive whole, from the end of its
    /// head (an 8 MiB module needs ~140 KB/s at the default).
    #[arg(long, env = "BODY_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub body_timeout_ms: u64,
    /// Client connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_connections: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            max_connections: 512,
        }
    }
}

impl ConnectionLimits {
    fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops
/// accepting, lets requests in progress finish (idle connections close at
/// once) and returns when every connection is closed.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let service = TowerToHyperService::new(harden(router, limits));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_headers(HARD_MAX_HEADERS)
        .max_buf_size(HARD_MAX_HEAD_BYTES);
    let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    // Each connection holds a receiver: once `stop` says so it finishes
    // its request in progress and closes; `stop.closed()` resolves when
    // every one of them has. (hyper-util's `GracefulShutdown` does not take
    // connections that may be upgraded.)
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(slot) = connections.clone().try_acquire_owned() else {
            metrics::counter!("http_connections_refused_total").increment(1);
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_over_capacity(stream, limits.max_connections).await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Upgrades: the planner's dispatch channel is a WebSocket. The
        // connection's slot is given back once it is upgraded; the channels
        // are bounded by the registered workers instead (one each), and end
        // on the planner's own stop signal.
        let connection = builder
            .serve_connection(TokioIo::new(stream), service.clone())
            .with_upgrades();
        let mut stopping = stopping.clone();
        let open = metrics::gauge!("http_connections_open");
        open.increment(1.0);
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = async {
                    // Only the signal matters, not the value's guard.
                    let _ = stopping.wait_for(|stop| *stop).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            drop(stopping);
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection closed with an error");
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    stop.closed().await;
    Ok(())
}

/// The router as served: JSON errors for a wrong method, an overlong target
/// or too many headers, and a deadline on every request body.
pub fn harden(router: Router, limits: ConnectionLimits) -> Router {
    router
        .method_not_allowed_fallback(crate::error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(limits, guard))
}

async fn guard(State(limits): State<ConnectionLimits>, request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "{} headers, {header_bytes} bytes; the limits are {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
                headers.len()
            ),
        )
        .into_response();
    }
    let (parts, body) = request.into_parts();
    let body = Body::new(DeadlineBody::new(body, limits.body_timeout()));
    next.run(Request::from_parts(parts, body)).await
}

/// Answers a connection over the cap with a JSON 503 and closes it.
async fn refuse_over_capacity(mut stream: TcpStream, cap: u32) {
    let body = serde_json::to_string(&wire::ErrorBody::new(format!(
        "server busy: {cap} connections are open (MAX_CONNECTIONS); retry shortly"
    )))
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread
        // data would reset the connection, and the client could lose the 503.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// The error a body gets when it is not whole by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} ms (BODY_TIMEOUT_MS)")]
pub struct BodyTimeout(pub u64);

/// A request body that fails once its deadline passes, however steadily it
/// trickles in.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    fn new(inner: Body, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // Data first: a body complete right at the deadline is not lost.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let timeout = BodyTimeout(this.limit.as_millis() as u64);
            return Poll::Ready(Some(Err(axum::Error::new(timeout))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (e.g. a body extractor's rejection) comes from a body
/// deadline, so it can be answered 408.
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.is::<BodyTimeout>() {
            return true;
        }
        current = err.source();
    }
    false
}
