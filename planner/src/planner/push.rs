//! Pushing a module to workers (`PUT {worker}/ops/{name}`).

use std::time::Duration;

use reqwest::StatusCode;
use serve::auth::Token;
use wire::planner::WorkerPush;
use wire::worker::LoadedOp;

use crate::modules::Module;

/// Why a worker did not take a module.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The worker compiled and checked it, and said no (400): the module is bad.
    #[error("{0}")]
    Refused(String),
    /// Anything else (unreachable, 401, 5xx): says nothing about the module.
    #[error("{0}")]
    Failed(String),
}

pub struct Pusher {
    client: reqwest::Client,
    token: Token,
}

impl Pusher {
    pub fn new(token: Token) -> anyhow::Result<Self> {
        // Compiling a module takes a while on a busy worker; be patient.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            // A module push never follows a redirect (back into the planner,
            // or anywhere else the worker's answer points).
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(serve::http::CLIENT_POOL_IDLE)
            .build()?;
        Ok(Self { client, token })
    }

    pub async fn push(&self, url: &str, module: &Module) -> Result<LoadedOp, PushError> {
        let response = self
            .client
            .put(format!("{url}/ops/{}", module.name))
            .headers(self.token.headers())
            .body(module.bytes.clone())
            .send()
            .await
            .map_err(|e| PushError::Failed(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| PushError::Failed(format!("unreadable answer: {e}")));
        }
        let message = response
            .json::<wire::ErrorBody>()
            .await
            .map_or_else(|_| format!("HTTP {status}"), |b| b.error);
        Err(if status == StatusCode::BAD_REQUEST {
            PushError::Refused(message)
        } else {
            PushError::Failed(format!("HTTP {status}: {message}"))
        })
    }
}

pub fn report(id: &str, outcome: &Result<LoadedOp, PushError>) -> WorkerPush {
    match outcome {
        Ok(loaded) => WorkerPush {
            id: id.into(),
            acknowledged_at_ms: Some(loaded.loaded_at_ms),
            error: None,
        },
        Err(err) => WorkerPush {
            id: id.into(),
            acknowledged_at_ms: None,
            error: Some(err.to_string()),
        },
    }
}
