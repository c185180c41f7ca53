//! The worker's end of the persistent dispatch channel ([`wire::channel`]).
//!
//! Once registered, the worker opens a WebSocket to the planner replica that
//! registered it (`GET /workers/{id}/channel`, with its token) and runs the
//! tasks that arrive on it through the same [`Executor`] as `POST /tasks`
//! (same slots, same refusals), answering each with its dispatch id as soon
//! as it finishes; answers that finish together share one write.
//!
//! The planner treats a closed channel as a dead worker for the tasks in
//! flight on it and runs them again elsewhere, so when the channel closes
//! this side interrupts those calls (their answers could not be delivered
//! anyway), then reconnects with backoff. A planner that does not answer
//! the channel (an older one: no route) leaves the worker on per-task HTTP,
//! which keeps working throughout. `CHANNEL=off` never opens one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use reqwest::header::HeaderValue;
use serve::auth::Token;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wire::channel::{MAX_FRAME_BYTES, READ_BUFFER_BYTES, Refusal, ToPlanner, ToWorker};
use wire::{Output, TaskId};

use crate::executor::{Executor, Refusal as Refused};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Until the planner's hello says otherwise.
const DEFAULT_PING: Duration = Duration::from_secs(1);
const DEFAULT_SILENCE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// After the planner failed to present the token.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// An op's error message longer than this is cut on the channel, so that
/// an answer always fits in one frame (a hostile op can return megabytes).
const MAX_ERROR_BYTES: usize = 16 << 10;

pub struct Channel {
    pub id: String,
    pub token: Token,
    pub executor: Arc<Executor>,
    /// The planner replica that registered this worker, once registered
    /// (`None` before): where the channel goes.
    pub home: watch::Receiver<Option<String>>,
}

/// Why a session ended.
enum End {
    /// `finish` came and nothing was left in flight: the worker is stopping.
    Finished,
    /// The channel closed; open a new one.
    Closed(String),
    /// The planner lacks this worker's token: try again much later (a
    /// redeploy may fix it; per-task HTTP answers 401 meanwhile).
    Refused(String),
}

impl Channel {
    /// Keeps a channel open while the worker runs. Returns once `finish` is
    /// cancelled (the worker stopped taking tasks and every HTTP request is
    /// answered) and every task that came on the channel has been answered.
    pub async fn run(mut self, finish: CancellationToken) {
        let mut retry = MIN_RETRY;
        loop {
            let home = tokio::select! {
                biased;
                () = finish.cancelled() => return,
                home = self.home.wait_for(Option::is_some) => match home {
                    Ok(home) => home.clone().unwrap_or_default(),
                    Err(_) => return,
                },
            };
            let connected = tokio::select! {
                biased;
                () = finish.cancelled() => return,
                connected = self.connect(&home) => connected,
            };
            match connected {
                Ok(socket) => {
                    retry = MIN_RETRY;
                    tracing::info!(planner = %home, "dispatch channel open");
                    crate::telemetry::channel_open(true);
                    let end = self.session(socket, &home, &finish).await;
                    crate::telemetry::channel_open(false);
                    match end {
                        End::Finished => {
                            tracing::info!("dispatch channel closed: the worker is stopping");
                            return;
                        }
                        End::Closed(reason) => {
                            tracing::warn!(%reason, "dispatch channel closed; opening a new one")
                        }
                        End::Refused(reason) => {
                            tracing::warn!(%reason, retry_in = ?REFUSED_RETRY, "dispatch channel refused");
                            retry = REFUSED_RETRY;
                        }
                    }
                }
                Err(reason) => {
                    tracing::debug!(planner = %home, %reason, retry_in = ?retry, "could not open the dispatch channel; tasks come over HTTP meanwhile")
                }
            }
            tokio::select! {
                biased;
                () = finish.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(MAX_RETRY.max(retry));
        }
    }

    async fn connect(&self, home: &str) -> Result<Socket, String> {
        let url = match home.split_once("://") {
            Some(("http", rest)) => format!("ws://{rest}"),
            // No TLS stack here: behind https the worker stays on HTTP.
            _ => return Err(format!("no channel to {home}: only http:// planners")),
        };
        let mut request = format!("{url}{}", wire::channel::path(&self.id))
            .into_client_request()
            .map_err(|err| format!("bad channel address: {err}"))?;
        request.headers_mut().extend(self.token.headers());
        // The default 128 KiB, zero-filled before every read, was 5 % of the
        // worker's CPU under load too.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
        }
    }

    async fn session(&mut self, socket: Socket, home: &str, finish: &CancellationToken) -> End {
        let (mut sink, mut stream) = socket.split();
        let mut running = Tasks::new();
        let mut silence = DEFAULT_SILENCE;
        let mut pings = tokio::time::interval(DEFAULT_PING);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut finishing = false;
        // No task runs before the planner's hello proved it has our token.
        let mut greeted = false;
        let mut token_refused = false;
        let end = loop {
            if finishing && running.is_empty() {
                let close = Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: Utf8Bytes::from_static("the worker is stopping"),
                }));
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
                return End::Finished;
            }
            tokio::select! {
                message = stream.next() => {
                    heard = Instant::now();
                    let message = match message {
                        None => break "the planner's connection ended".to_string(),
                        Some(Err(err)) => break format!("could not read from the planner: {err}"),
                        Some(Ok(message)) => message,
                    };
                    let frame = match message {
                        Message::Text(text) => match serde_json::from_str::<ToWorker>(text.as_str()) {
                            Ok(frame) => frame,
                            Err(err) => break format!("malformed frame from the planner: {err}"),
                        },
                        Message::Close(frame) => {
                            let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                            break format!("the planner closed the channel: {why}");
                        }
                        Message::Binary(_) | Message::Frame(_) => {
                            break "unexpected binary frame from the planner".to_string()
                        }
                        Message::Ping(_) | Message::Pong(_) => continue,
                    };
                    match frame {
                        ToWorker::Hello { ping_ms, silence_ms, authorization } => {
                            // The same rule as `POST /tasks`: a worker with a
                            // token runs tasks only for a planner that has it.
                            let presented = authorization
                                .and_then(|secret| HeaderValue::from_str(&secret.0).ok());
                            if !self.token.admits(presented.as_ref()) {
                                tracing::error!("the planner's channel did not present this worker's token: check that both have the same TOKEN; tasks come over HTTP (and are refused 401)");
                                token_refused = true;
                                break "the planner did not present this worker's token".to_string();
                            }
                            greeted = true;
                            silence = Duration::from_millis(silence_ms.max(30));
                            pings = tokio::time::interval(Duration::from_millis(ping_ms.max(10)));
                            pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                        _ if !greeted => break "the planner's first frame was not a hello".to_string(),
                        ToWorker::Task { dispatch, id, op, args } => {
                            // Bounded by the slots: a task beyond them is
                            // refused at once, as `POST /tasks` answers 429.
                            if running.len() >= self.executor.slot_count() as usize {
                                let refused = ToPlanner::Refused { dispatch, reason: Refusal::Busy };
                                if let Err(err) = sink.send(text(&refused)).await {
                                    break format!("could not write to the planner: {err}");
                                }
                                continue;
                            }
                            let brief = self.executor.runs_briefly(&op);
                            let executor = self.executor.clone();
                            let task = async move {
                                let answer = run(&executor, dispatch, id, &op, args).await;
                                (dispatch, answer)
                            };
                            running.start(dispatch, id, task, brief);
                        }
                        ToWorker::Cancel { id } => {
                            self.executor.cancel(id);
                        }
                    }
                }
                Some(done) = running.next(), if !running.is_empty() => {
                    // Everything finished by now goes out in one flush.
                    let mut batch = vec![done];
                    running.finished(&mut batch);
                    if let Err(err) = write_all(&mut sink, &batch).await {
                        break format!("could not write to the planner: {err}");
                    }
                }
                _ = pings.tick() => {
                    if let Err(err) = sink.send(Message::Ping(Default::default())).await {
                        break format!("could not write to the planner: {err}");
                    }
                }
                () = tokio::time::sleep_until((heard + silence).into()) => {
                    break format!("the planner sent nothing for {} ms", silence.as_millis());
                }
                () = finish.cancelled(), if !finishing => finishing = true,
                Ok(()) = self.home.changed() => {
                    let moved = self.home.borrow().as_deref().is_some_and(|now| now != home);
                    if moved {
                        break "registered with another planner replica".to_string();
                    }
                }
            }
        };
        // The planner counts these tasks lost and runs them again elsewhere:
        // stop their calls rather than compute answers nobody will read.
        running.stop(&self.executor);
        if token_refused {
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Policy,
                reason: Utf8Bytes::from_static("the planner did not present this worker's token"),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
            return End::Refused(end);
        }
        End::Closed(end)
    }
}

/// The tasks a session has in flight. The calls of an op that runs briefly
/// (microseconds, see [`Executor::runs_briefly`]) are polled by the session
/// itself: a spawned task per call cost more than the call, in wake-ups of
/// the other runtime threads. Longer ones get a task each, so that the
/// slots' calls run in parallel on the runtime's threads.
struct Tasks<F> {
    polled: FuturesUnordered<F>,
    spawned: JoinSet<(u64, ToPlanner)>,
    /// dispatch -> task id, to interrupt what is left if the channel closes.
    ids: HashMap<u64, TaskId>,
}

impl<F: Future<Output = (u64, ToPlanner)> + Send + 'static> Tasks<F> {
    fn new() -> Self {
        Self {
            polled: FuturesUnordered::new(),
            spawned: JoinSet::new(),
            ids: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.polled.len() + self.spawned.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn start(&mut self, dispatch: u64, id: TaskId, task: F, brief: bool) {
        self.ids.insert(dispatch, id);
        if brief {
            self.polled.push(task);
        } else {
            self.spawned.spawn(task);
        }
    }

    /// The next task to finish (`None` once none is left).
    async fn next(&mut self) -> Option<ToPlanner> {
        loop {
            let done = tokio::select! {
                Some(done) = self.polled.next(), if !self.polled.is_empty() => done,
                Some(joined) = self.spawned.join_next(), if !self.spawned.is_empty() => match joined {
                    Ok(done) => done,
                    Err(err) => {
                        tracing::error!(error = %err, "a channel task failed");
                        continue;
                    }
                },
                else => return None,
            };
            self.ids.remove(&done.0);
            return Some(done.1);
        }
    }

    /// Adds every task finished by now to `batch`.
    fn finished(&mut self, batch: &mut Vec<ToPlanner>) {
        while let Some(Some(answer)) = self.next().now_or_never() {
            batch.push(answer);
        }
    }

    /// Interrupts every call still running and drops the tasks.
    fn stop(self, executor: &Executor) {
        for id in self.ids.values() {
            executor.cancel(*id);
        }
    }
}

async fn run(
    executor: &Executor,
    dispatch: u64,
    id: TaskId,
    op: &str,
    args: Vec<i64>,
) -> ToPlanner {
    match executor.run(Some(id), op, args).await {
        Ok(run) => ToPlanner::Done {
            dispatch,
            output: match run.wire_output() {
                Output::Error(message) => Output::Error(cut(message)),
                result => result,
            },
            digest: run.digest,
        },
        Err(refused) => ToPlanner::Refused {
            dispatch,
            reason: match refused {
                Refused::Busy(_) => Refusal::Busy,
                Refused::NoSuchOp { .. } => Refusal::Lacks,
                Refused::Draining => Refusal::Draining,
            },
        },
    }
}

fn cut(mut message: String) -> String {
    if message.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("… (cut to 16 KiB)");
    }
    message
}

fn text(frame: &ToPlanner) -> Message {
    // Serializing plain data with string keys does not fail.
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

async fn write_all(
    sink: &mut futures_util::stream::SplitSink<Socket, Message>,
    frames: &[ToPlanner],
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for frame in frames {
        sink.feed(text(frame)).await?;
    }
    sink.flush().await
}
