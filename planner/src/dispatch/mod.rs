//! Sending one assignment to its worker and reading the answer: on the
//! worker's dispatch channel when it has one open ([`channel`]), else as one
//! HTTP request (`POST /tasks`, or a legacy worker's `/add` / `/mult`).

pub mod channel;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serve::auth::Token;
use wire::worker::{TaskOutcome, TaskRequest};
use wire::{ErrorBody, Output};

use crate::board::{Answer, Assignment, Interrupt};

/// Longest wait for a worker to take an interrupt.
const INTERRUPT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Dispatcher {
    client: reqwest::Client,
    token: Token,
    timeout: Duration,
    channels: Arc<channel::Channels>,
}

impl Dispatcher {
    /// `silence`: how long a dispatch channel may stay quiet before it is
    /// closed (the heartbeat timeout).
    pub fn new(token: Token, timeout: Duration, silence: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(serve::http::CLIENT_POOL_IDLE)
            .connect_timeout(Duration::from_secs(3))
            // A worker answers; it never sends the planner elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let channels = Arc::new(channel::Channels::new(silence, timeout, &token));
        Ok(Self {
            client,
            token,
            timeout,
            channels,
        })
    }

    /// The workers' open dispatch channels (the channel route adds to them).
    pub fn channels(&self) -> &Arc<channel::Channels> {
        &self.channels
    }

    /// Tells a worker to stop running a task (`DELETE /tasks/{id}` on it),
    /// in the background. Best effort: if it does not hear, its call runs
    /// out and the answer is ignored.
    pub fn interrupt(&self, interrupt: Interrupt) {
        if let Some(link) = self.channels.get(&interrupt.worker)
            && link.cancel(interrupt.task)
        {
            tracing::debug!(task = interrupt.task, worker = %interrupt.worker, "interrupt sent on the channel");
            return;
        }
        let request = self
            .client
            .delete(format!("{}/tasks/{}", interrupt.url, interrupt.task))
            .headers(self.token.headers())
            .timeout(INTERRUPT_TIMEOUT);
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    tracing::debug!(task = interrupt.task, worker = %interrupt.worker, "interrupted")
                }
                // 404: the call had ended already.
                Ok(response) => tracing::debug!(
                    task = interrupt.task,
                    worker = %interrupt.worker,
                    status = %response.status(),
                    "interrupt not needed or refused"
                ),
                Err(err) => tracing::warn!(
                    task = interrupt.task,
                    worker = %interrupt.worker,
                    error = %describe(&err),
                    "could not interrupt a task on its worker; its answer will be ignored"
                ),
            }
        });
    }

    /// Sends a task on its worker's dispatch channel if it has one open (its
    /// answer is settled by the channel); `NoChannel` says to [`Self::send`]
    /// it as a request instead.
    pub fn send_on_channel(&self, assignment: Assignment) -> channel::Sent {
        if assignment.legacy {
            return channel::Sent::NoChannel(assignment);
        }
        let sent = self.channels.send(assignment);
        if matches!(sent, channel::Sent::Sent) {
            crate::telemetry::dispatched(true);
        }
        sent
    }

    /// Sends a task as one HTTP request and waits for its answer.
    pub async fn send(&self, assignment: &Assignment) -> Answer {
        crate::telemetry::dispatched(false);
        let request = if assignment.legacy {
            let Some(route) = wire::legacy::route_for_op(&assignment.op) else {
                return Answer::Lacks;
            };
            let [a, b] = assignment.args[..] else {
                return Answer::Lacks;
            };
            self.client
                .post(format!("{}{route}", assignment.url))
                .json(&wire::legacy::Operands { a, b })
        } else {
            self.client
                .post(format!("{}/tasks", assignment.url))
                .json(&TaskRequest {
                    id: assignment.task,
                    op: assignment.op.to_string(),
                    args: assignment.args.to_vec(),
                })
        };
        let request = request.headers(self.token.headers());
        let response = match request.timeout(self.timeout).send().await {
            Ok(response) => response,
            Err(err) if err.is_timeout() => {
                return Answer::Lost(format!("no answer within {} ms", self.timeout.as_millis()));
            }
            Err(err) => return Answer::Lost(describe(&err)),
        };
        read_answer(response, assignment.legacy).await
    }
}

async fn read_answer(response: reqwest::Response, legacy: bool) -> Answer {
    match response.status() {
        StatusCode::OK if legacy => match response.json::<wire::legacy::Answer>().await {
            Ok(answer) => Answer::Done {
                output: Output::Result(answer.res),
                digest: None,
            },
            Err(err) => Answer::Lost(format!("unreadable answer: {err}")),
        },
        StatusCode::OK | StatusCode::UNPROCESSABLE_ENTITY if !legacy => {
            match response.json::<TaskOutcome>().await {
                Ok(outcome) => Answer::Done {
                    output: outcome.output,
                    digest: Some(outcome.digest),
                },
                Err(err) => Answer::Lost(format!("unreadable answer: {err}")),
            }
        }
        StatusCode::UNPROCESSABLE_ENTITY => {
            let message = response
                .json::<ErrorBody>()
                .await
                .map(|b| b.error)
                .unwrap_or_else(|e| e.to_string());
            Answer::Done {
                output: Output::Error(message),
                digest: None,
            }
        }
        StatusCode::TOO_MANY_REQUESTS | StatusCode::FORBIDDEN => Answer::Busy,
        StatusCode::SERVICE_UNAVAILABLE => Answer::Draining,
        StatusCode::NOT_FOUND => Answer::Lacks,
        StatusCode::UNAUTHORIZED => {
            tracing::error!(
                "a worker refused the planner's token: check that both have the same TOKEN"
            );
            Answer::Unauthorized
        }
        status => Answer::Lost(format!("HTTP {status}")),
    }
}

/// reqwest's top-level message is "error sending request"; the cause says
/// what actually happened (refused, reset...).
fn describe(err: &reqwest::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}
