//! The planner's end of the persistent dispatch channel ([`wire::channel`]).
//!
//! A worker opens one channel (a WebSocket) after registering; while it is
//! open, the dispatcher sends that worker's tasks on it instead of one HTTP
//! request each. Each dispatch waits on a oneshot keyed by its dispatch id,
//! resolved by the worker's answer frame, so answers may come in any order
//! and as many tasks as the worker has slots are in flight at once. The
//! board and its exactly-once rule are untouched: an answer is still settled
//! against the dispatch it belongs to, and one for a dispatch that is no
//! longer current is ignored there.
//!
//! A channel that closes, for any reason (the worker died, its socket was
//! cut, it sent a frame we refuse, it fell silent for longer than the
//! heartbeat timeout), answers every dispatch waiting on it `Lost`: the
//! same as a per-task connection reset, so the board drops the worker and
//! re-queues its tasks in flight. A worker that lives re-registers on its
//! next heartbeat and opens a new channel; until then it is sent nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wire::channel::{Refusal, ToPlanner, ToWorker};

use crate::board::{Answer, Assignment};

/// Frames the writer puts into one flush: enough to share a write among
/// every slot of a large worker, small enough to keep each write short.
const MAX_FRAMES_PER_WRITE: usize = 256;
/// How long a closing channel waits to tell the worker why.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The open channels, one per worker id at most.
pub struct Channels {
    open: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    /// A side that hears nothing for this long closes the channel: the
    /// planner's `HEARTBEAT_TIMEOUT_MS`, so a silent worker is noticed no
    /// later than its missed heartbeats would have been.
    silence: Duration,
    /// What the planner presents to workers (see `ToWorker::Hello`).
    authorization: Option<wire::channel::Secret>,
    next_serial: AtomicU64,
}

/// One open channel.
pub struct Link {
    serial: u64,
    worker: Arc<str>,
    out: mpsc::UnboundedSender<ToWorker>,
    state: Mutex<LinkState>,
    closing: CancellationToken,
}

#[derive(Default)]
struct LinkState {
    /// Why it closed; nothing is added to `waiting` once set.
    closed: Option<String>,
    /// Dispatches sent and not yet answered. At most the worker's slots:
    /// the board never has more of its tasks in flight.
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Channels {
    pub fn new(silence: Duration, token: &serve::auth::Token) -> Self {
        let authorization = token
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(|value| wire::channel::Secret(value.to_string()));
        Self {
            open: Mutex::new(HashMap::new()),
            silence: silence.max(Duration::from_millis(30)),
            authorization,
            next_serial: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Link>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker's open channel, if it has one.
    pub fn get(&self, worker: &str) -> Option<Arc<Link>> {
        self.lock().get(worker).cloned()
    }

    /// Serves a worker's channel until it closes. A channel the same worker
    /// had open before is closed first (its tasks are lost, as they would be
    /// if it had reconnected after a cut).
    /// `stopping`: the planner is shutting down; the channel closes (its
    /// tasks in flight are lost and run again, as after a restart).
    pub async fn serve(
        self: Arc<Self>,
        worker: Arc<str>,
        socket: WebSocket,
        stopping: CancellationToken,
    ) {
        let (out, mut frames) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
            worker: worker.clone(),
            out,
            state: Mutex::new(LinkState::default()),
            closing: CancellationToken::new(),
        });
        let replaced = self.lock().insert(worker.clone(), link.clone());
        if let Some(old) = replaced {
            old.close("replaced by a new channel from the same worker");
        }
        tracing::info!(worker = %worker, "dispatch channel open");
        crate::telemetry::channel_opened();

        let (mut sink, mut stream) = socket.split();
        let ping = self.silence / 3;
        let hello = ToWorker::Hello {
            ping_ms: ping.as_millis() as u64,
            silence_ms: self.silence.as_millis() as u64,
            authorization: self.authorization.clone(),
        };
        let ending = {
            let writer = write_frames(&mut sink, &mut frames, hello, ping);
            let reader = read_frames(&mut stream, &link, self.silence);
            tokio::select! {
                ending = reader => ending,
                ending = writer => ending,
                () = link.closing.cancelled() => Ending::normal(link.reason()),
                () = stopping.cancelled() => Ending::normal("the planner is stopping".into()),
            }
        };
        link.close(&ending.reason);
        {
            let mut open = self.lock();
            if open.get(&worker).is_some_and(|l| l.serial == link.serial) {
                open.remove(&worker);
            }
        }
        if ending.code == close_code::NORMAL {
            tracing::info!(worker = %worker, reason = %ending.reason, "dispatch channel closed");
        } else {
            tracing::warn!(worker = %worker, reason = %ending.reason, "dispatch channel closed");
        }
        crate::telemetry::channel_closed(ending.kind);
        let close = Message::Close(Some(CloseFrame {
            code: ending.code,
            reason: Utf8Bytes::from(close_reason(&ending.reason)),
        }));
        // The worker may be gone already: telling it is best effort.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close)).await;
    }
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reason(&self) -> String {
        self.lock()
            .closed
            .clone()
            .unwrap_or_else(|| "closed by the planner".into())
    }

    /// Sends a task and waits for its answer, at most `timeout`.
    pub async fn dispatch(&self, assignment: &Assignment, timeout: Duration) -> Answer {
        let (answered, answer) = oneshot::channel();
        {
            let mut state = self.lock();
            if let Some(reason) = &state.closed {
                return Answer::Lost(format!("dispatch channel closed: {reason}"));
            }
            state.waiting.insert(assignment.dispatch, answered);
        }
        let frame = ToWorker::Task {
            dispatch: assignment.dispatch,
            id: assignment.task,
            op: assignment.op.to_string(),
            args: assignment.args.to_vec(),
        };
        if self.out.send(frame).is_err() {
            self.lock().waiting.remove(&assignment.dispatch);
            return Answer::Lost("dispatch channel closed".into());
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Answer::Lost("dispatch channel closed".into()),
            Err(_) => {
                self.lock().waiting.remove(&assignment.dispatch);
                Answer::Lost(format!("no answer within {} ms", timeout.as_millis()))
            }
        }
    }

    /// Asks the worker to stop a task's call; false if the channel is gone.
    pub fn cancel(&self, task: wire::TaskId) -> bool {
        self.out.send(ToWorker::Cancel { id: task }).is_ok()
    }

    /// Marks the channel closed and answers every waiting dispatch `Lost`.
    fn close(&self, reason: &str) {
        let waiting = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(reason.to_string());
            }
            std::mem::take(&mut state.waiting)
        };
        if !waiting.is_empty() {
            tracing::warn!(
                worker = %self.worker,
                in_flight = waiting.len(),
                reason,
                "dispatch channel closed with tasks in flight; they are lost"
            );
        }
        for (_, answered) in waiting {
            let _ = answered.send(Answer::Lost(format!("dispatch channel closed: {reason}")));
        }
        self.closing.cancel();
    }

    fn answer(&self, dispatch: u64, answer: Answer) {
        let waiting = self.lock().waiting.remove(&dispatch);
        match waiting {
            Some(answered) => {
                let _ = answered.send(answer);
            }
            // Its wait timed out (it was settled as lost already).
            None => {
                tracing::debug!(worker = %self.worker, dispatch, "answer for no waiting dispatch ignored")
            }
        }
    }
}

/// Why a channel ended, what the worker is told, and the metric's label.
struct Ending {
    reason: String,
    code: u16,
    kind: &'static str,
}

impl Ending {
    fn normal(reason: String) -> Self {
        Self {
            reason,
            code: close_code::NORMAL,
            kind: "closed",
        }
    }

    fn refused(reason: String, code: u16) -> Self {
        Self {
            reason,
            code,
            kind: "refused_frame",
        }
    }
}

async fn write_frames(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    frames: &mut mpsc::UnboundedReceiver<ToWorker>,
    hello: ToWorker,
    ping: Duration,
) -> Ending {
    let failed = |err: axum::Error| Ending {
        reason: format!("could not write to the worker: {err}"),
        code: close_code::ABNORMAL,
        kind: "write_error",
    };
    if let Err(err) = sink.send(text(&hello)).await {
        return failed(err);
    }
    let mut pings = tokio::time::interval(ping);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let Some(frame) = frame else {
                    return Ending::normal("closed by the planner".into());
                };
                // Everything already queued goes out in the same flush:
                // tasks handed out together share one write. Yielding once
                // first lets the dispatches woken by the same read (answers
                // free slots, which the pump refills) queue theirs too.
                tokio::task::yield_now().await;
                let mut batch = vec![frame];
                while batch.len() < MAX_FRAMES_PER_WRITE {
                    match frames.try_recv() {
                        Ok(frame) => batch.push(frame),
                        Err(_) => break,
                    }
                }
                for frame in &batch {
                    if let Err(err) = sink.feed(text(frame)).await {
                        return failed(err);
                    }
                }
                if let Err(err) = sink.flush().await {
                    return failed(err);
                }
            }
            _ = pings.tick() => {
                if let Err(err) = sink.send(Message::Ping(Default::default())).await {
                    return failed(err);
                }
            }
        }
    }
}

fn text(frame: &ToWorker) -> Message {
    // Serializing plain data with string keys does not fail.
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

async fn read_frames(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    link: &Link,
    silence: Duration,
) -> Ending {
    loop {
        let message = match tokio::time::timeout(silence, stream.next()).await {
            Err(_) => {
                return Ending {
                    reason: format!(
                        "the worker sent nothing for {} ms (not even a ping)",
                        silence.as_millis()
                    ),
                    code: close_code::POLICY,
                    kind: "silent",
                };
            }
            Ok(None) => {
                return Ending {
                    reason: "the worker's connection ended".into(),
                    code: close_code::ABNORMAL,
                    kind: "dropped",
                };
            }
            Ok(Some(Err(err))) => return read_error(err),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => match serde_json::from_str::<ToPlanner>(text.as_str()) {
                Ok(ToPlanner::Done {
                    dispatch,
                    output,
                    digest,
                }) => link.answer(
                    dispatch,
                    Answer::Done {
                        output,
                        digest: Some(digest),
                    },
                ),
                Ok(ToPlanner::Refused { dispatch, reason }) => link.answer(
                    dispatch,
                    match reason {
                        Refusal::Busy => Answer::Busy,
                        Refusal::Lacks => Answer::Lacks,
                        Refusal::Draining => Answer::Draining,
                    },
                ),
                Err(err) => {
                    return Ending::refused(format!("malformed frame: {err}"), close_code::POLICY);
                }
            },
            Message::Binary(_) => {
                return Ending::refused(
                    "binary frame: the channel speaks JSON text frames".into(),
                    close_code::UNSUPPORTED,
                );
            }
            // Signs of life; tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(frame) => {
                let why = frame
                    .map(|f| format!("{} ({})", f.reason.as_str(), f.code))
                    .unwrap_or_else(|| "no reason given".into());
                return Ending::normal(format!("the worker closed the channel: {why}"));
            }
        }
    }
}

fn read_error(err: axum::Error) -> Ending {
    // axum wraps tungstenite's error; an over-long message is a capacity error.
    let capacity = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
    if capacity {
        Ending::refused(
            format!(
                "oversized frame (at most {} bytes): {err}",
                wire::channel::MAX_FRAME_BYTES
            ),
            close_code::SIZE,
        )
    } else {
        Ending {
            reason: format!("could not read from the worker: {err}"),
            code: close_code::PROTOCOL,
            kind: "read_error",
        }
    }
}

/// A close frame's reason is at most 123 bytes.
fn close_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
