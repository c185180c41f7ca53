//! `GET /events`: server-sent events of task and worker changes
//! (`curl -N localhost:3000/events`).

use std::convert::Infallible;

use axum::extract::State;
use axum::response::Sse as SseResponse;
use axum::response::sse::{Event as Sse, KeepAlive};
use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::AppState;
use crate::events::Event;

/// `event: task` carries a task as `GET /tasks/{id}` shows it;
/// `event: worker` carries `{"id", "change", "worker"}`.
#[utoipa::path(get, path = "/events", tag = "observe", responses((status = 200, description = "Server-sent events: `event: task` carries a task as GET /tasks/{id} shows it, `event: worker` a worker change", content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): State<AppState>,
) -> SseResponse<impl Stream<Item = Result<Sse, Infallible>>> {
    let stopping = state.stopping.clone().cancelled_owned();
    let events = BroadcastStream::new(state.planner.events().subscribe()).map(|item| {
        Ok(match item {
            Ok(Event::Task(view)) => Sse::default()
                .event("task")
                .json_data(view)
                .unwrap_or_default(),
            Ok(Event::Worker(change)) => Sse::default()
                .event("worker")
                .json_data(change)
                .unwrap_or_default(),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                Sse::default().event("lagged").data(missed.to_string())
            }
        })
    });
    // The stream ends when the planner stops, so a subscriber can't hold the
    // drain open (curl -N exits; EventSource reconnects to another replica).
    SseResponse::new(futures_util::StreamExt::take_until(events, stopping))
        .keep_alive(KeepAlive::default())
}
