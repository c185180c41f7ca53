//! The planner's end of the persistent dispatch channel ([`wire::channel`]).
//!
//! A worker opens one channel (a WebSocket) after registering; while it is
//! open, the dispatcher sends that worker's tasks on it instead of one HTTP
//! request each. A task sent is kept by its dispatch id until the worker's
//! answer frame names it, so answers may come in any order and as many tasks
//! as the worker has slots are in flight at once. The answer is settled
//! right where it is read (no task spawned, no oneshot, no timer per task:
//! those were most of the planner's cost per task); a sweep a few times per
//! dispatch timeout settles the ones that never came as lost. The board and
//! its exactly-once rule are untouched: an answer is still settled against
//! the dispatch it belongs to, and one for a dispatch that is no longer
//! current is ignored there.
//!
//! A channel that closes, for any reason (the worker died, its socket was
//! cut, it sent a frame we refuse, it fell silent for longer than the
//! heartbeat timeout), answers every dispatch waiting on it `Lost`: the
//! same as a per-task connection reset, so the board drops the worker and
//! re-queues its tasks in flight. A worker that lives re-registers on its
//! next heartbeat and opens a new channel; until then it is sent nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wire::channel::{Refusal, ToPlanner, ToWorker};

use crate::board::{Answer, Assignment};

/// Frames the writer puts into one flush: enough to share a write among
/// every slot of a large worker, small enough to keep each write short.
const MAX_FRAMES_PER_WRITE: usize = 256;
/// How long a closing channel waits to tell the worker why.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What settles an answer read from a channel (the planner's board).
pub type Settle = Arc<dyn Fn(Assignment, Answer) + Send + Sync>;

/// How a task was handed to a worker's channel.
pub enum Sent {
    /// On its way; its answer will be settled when it comes.
    Sent,
    /// The worker has no channel: send it some other way.
    NoChannel(Assignment),
    /// The channel closed: the worker is presumed gone, as if the send had
    /// failed on a connection.
    Closed(Assignment, String),
}

/// The open channels, one per worker id at most.
pub struct Channels {
    open: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    settle: OnceLock<Settle>,
    /// How long a task sent may go unanswered before it is settled as lost.
    timeout: Duration,
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
    settle: Settle,
}

#[derive(Default)]
struct LinkState {
    /// Why it closed; nothing is added to `waiting` once set.
    closed: Option<String>,
    /// Dispatches sent and not yet answered, with when they were sent. At
    /// most the worker's slots: the board never has more of its tasks in
    /// flight.
    waiting: rustc_hash::FxHashMap<u64, (Assignment, Instant)>,
}

impl Channels {
    pub fn new(silence: Duration, timeout: Duration, token: &serve::auth::Token) -> Self {
        let authorization = token
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(|value| wire::channel::Secret(value.to_string()));
        Self {
            open: Mutex::new(HashMap::new()),
            settle: OnceLock::new(),
            timeout,
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

    /// Where answers go; set once, before any channel opens.
    pub fn settle_with(&self, settle: Settle) {
        if self.settle.set(settle).is_err() {
            tracing::error!("the channels' answers were already routed; ignoring the second route");
        }
    }

    /// Sends a task on its worker's channel, if it has one open.
    pub fn send(&self, assignment: Assignment) -> Sent {
        match self.get(&assignment.worker) {
            Some(link) => link.send(assignment),
            None => Sent::NoChannel(assignment),
        }
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
        let Some(settle) = self.settle.get().cloned() else {
            tracing::error!(worker = %worker, "a channel opened before answers had a route; closing it");
            return;
        };
        let (out, mut frames) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
            worker: worker.clone(),
            out,
            state: Mutex::new(LinkState::default()),
            closing: CancellationToken::new(),
            settle,
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
            let sweeper = link.sweep_forever(self.timeout);
            tokio::select! {
                ending = reader => ending,
                ending = writer => ending,
                never = sweeper => match never {},
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

    /// Sends a task; its answer is settled when it comes (or when the
    /// channel closes, or its time runs out).
    pub fn send(&self, assignment: Assignment) -> Sent {
        let frame = ToWorker::Task {
            dispatch: assignment.dispatch,
            id: assignment.task,
            op: assignment.op.to_string(),
            args: assignment.args.to_vec(),
        };
        let dispatch = assignment.dispatch;
        {
            let mut state = self.lock();
            if let Some(reason) = &state.closed {
                let reason = format!("dispatch channel closed: {reason}");
                return Sent::Closed(assignment, reason);
            }
            state.waiting.insert(dispatch, (assignment, Instant::now()));
        }
        if self.out.send(frame).is_err()
            && let Some((assignment, _)) = self.lock().waiting.remove(&dispatch)
        {
            return Sent::Closed(assignment, "dispatch channel closed".into());
        }
        Sent::Sent
    }

    /// Settles as lost, every `timeout / 4`, the tasks unanswered for longer
    /// than `timeout` (the worker hung, or never got them). Never returns.
    async fn sweep_forever(&self, timeout: Duration) -> std::convert::Infallible {
        let every = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            let expired: Vec<Assignment> = {
                let mut state = self.lock();
                let due: Vec<u64> = state
                    .waiting
                    .iter()
                    .filter(|(_, (_, sent))| now.duration_since(*sent) >= timeout)
                    .map(|(dispatch, _)| *dispatch)
                    .collect();
                due.iter()
                    .filter_map(|d| state.waiting.remove(d))
                    .map(|(assignment, _)| assignment)
                    .collect()
            };
            for assignment in expired {
                let reason = format!("no answer within {} ms", timeout.as_millis());
                (self.settle)(assignment, Answer::Lost(reason));
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
        self.closing.cancel();
        for (_, (assignment, _)) in waiting {
            (self.settle)(
                assignment,
                Answer::Lost(format!("dispatch channel closed: {reason}")),
            );
        }
    }

    fn answer(&self, dispatch: u64, answer: Answer) {
        let waiting = self.lock().waiting.remove(&dispatch);
        match waiting {
            Some((assignment, _)) => (self.settle)(assignment, answer),
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
                // tasks handed out together share one write.
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
