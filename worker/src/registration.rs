//! Announcing this worker to the planner and staying known.
//!
//! Registers (retrying with backoff until the planner answers), heartbeats,
//! re-registers when the planner has forgotten it (a restarted planner
//! answers 404) or when the op set changed. On shutdown it deregisters and
//! then keeps heartbeating while the tasks in flight finish, so the planner
//! does not give them up for lost and run them again elsewhere; it never
//! registers again once draining. Against the exercise's planner, which has
//! no `POST /workers`, it falls back to `POST /register {"url","id"}` once.
//!
//! With several planner replicas behind one Service, the registration's
//! answer names the replica that took it (`heartbeat_to`): heartbeats and the
//! deregistration go there, and when that replica stops answering the
//! worker registers again through `PLANNER`, landing on a live one.
//!
//! It also keeps the worker's readiness: registered with a planner that
//! answers its heartbeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use serve::auth::Token;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use wire::planner::Registration;

use crate::catalog::Catalog;
use crate::executor::Executor;

pub struct Registrar {
    pub client: reqwest::Client,
    pub planner: String,
    pub token: Token,
    pub id: String,
    pub url: String,
    pub slots: u32,
    pub catalog: Arc<Catalog>,
    /// Where readiness is kept (`set_registered`).
    pub executor: Arc<Executor>,
    pub heartbeat: Duration,
    /// The replica that registered this worker, when the planner named one.
    pub heartbeat_to: std::sync::Mutex<Option<String>>,
    /// The catalog version the planner last accepted. A change that lands
    /// while a registration is in flight, or whose announcement fails, is
    /// seen as a difference here and announced at the next tick.
    pub announced: AtomicU64,
    /// Where the dispatch channel goes: the replica that registered this
    /// worker, published on each successful registration.
    pub channel_home: tokio::sync::watch::Sender<Option<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ours,
    Legacy,
}

#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("planner unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("the planner has no registration route of ours (HTTP {0})")]
    NoRoute(StatusCode),
    #[error("the planner refused the registration: HTTP {0}: {1}")]
    Refused(StatusCode, String),
}

impl Registrar {
    /// Registers and heartbeats until `drain` is cancelled; then deregisters,
    /// says so on `deregistered`, and keeps heartbeating until `stop` (the
    /// last task in flight has been answered) or until the planner has
    /// forgotten this worker (404).
    pub async fn run(
        self,
        drain: CancellationToken,
        deregistered: oneshot::Sender<()>,
        stop: CancellationToken,
    ) {
        let Some(mode) = self.register_until_accepted(&drain).await else {
            return;
        };
        if mode == Mode::Legacy {
            return;
        }
        self.stay_registered(&drain).await;
        self.executor.set_registered(false);
        self.deregister().await;
        let _ = deregistered.send(());
        self.heartbeat_while_draining(&stop).await;
    }

    /// `None` when `drain` came first: a draining worker never registers.
    async fn register_until_accepted(&self, drain: &CancellationToken) -> Option<Mode> {
        let attempt = || async {
            match self.register().await {
                Err(RegisterError::NoRoute(status)) => {
                    tracing::info!(%status, "planner has no /workers route; registering the exercise's way");
                    self.register_legacy().await.map(|()| Mode::Legacy)
                }
                other => other.map(|()| Mode::Ours),
            }
        };
        let retried = attempt
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(50)).with_max_delay(Duration::from_secs(2)).with_jitter().without_max_times())
            .notify(|err, wait| tracing::warn!(error = %err, retry_in = ?wait, planner = %self.planner, "registration failed"));
        tokio::select! {
            biased;
            () = drain.cancelled() => None,
            result = retried => match result {
                Ok(mode) => {
                    tracing::info!(planner = %self.planner, id = %self.id, ?mode, "registered");
                    self.executor.set_registered(true);
                    Some(mode)
                }
                Err(err) => {
                    tracing::error!(error = %err, "registration gave up");
                    None
                }
            },
        }
    }

    async fn stay_registered(&self, drain: &CancellationToken) {
        let mut changes = self.catalog.subscribe();
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Also covers a change made between the registration and the
            // subscription above, which `changed()` would never report.
            if self.catalog.version() != self.announced.load(Ordering::Acquire)
                && let Err(err) = self.register().await
            {
                tracing::warn!(error = %err, "could not announce the new op set; retrying at the next heartbeat");
            }
            tokio::select! {
                biased;
                () = drain.cancelled() => break,
                _ = ticker.tick() => self.heartbeat_once(drain).await,
                Ok(()) = changes.changed() => {}
            }
        }
    }

    async fn heartbeat_once(&self, drain: &CancellationToken) {
        match self.send_heartbeat().await {
            Ok(StatusCode::NOT_FOUND) => {
                self.executor.set_registered(false);
                tracing::info!(
                    "the planner does not know this worker (restarted?); registering again"
                );
                self.register_until_accepted(drain).await;
            }
            Ok(status) if !status.is_success() => {
                tracing::warn!(%status, "heartbeat refused");
            }
            Ok(_) => self.executor.set_registered(true),
            Err(err) => {
                // Unreachable: not able to take tasks, so not ready (the
                // probe's failure threshold rides out a short blip).
                self.executor.set_registered(false);
                if let Some(replica) = self.take_replica() {
                    tracing::warn!(%replica, error = %err, "the planner replica that registered this worker is not answering; registering again through the planner's address");
                    self.register_until_accepted(drain).await;
                } else {
                    tracing::debug!(error = %err, "heartbeat failed; the planner may be restarting")
                }
            }
        }
    }

    /// After deregistering: the planner keeps a leaving worker that still has
    /// tasks in flight for as long as it heartbeats, and forgets it (404)
    /// once they are answered. A failed heartbeat is retried at the next
    /// tick; registering again is never an option here.
    async fn heartbeat_while_draining(&self, stop: &CancellationToken) {
        let mut ticker = tokio::time::interval(self.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = ticker.tick() => match self.send_heartbeat().await {
                    Ok(StatusCode::NOT_FOUND) => {
                        tracing::info!("the planner has let this draining worker go; no more heartbeats");
                        return;
                    }
                    Ok(status) if !status.is_success() => {
                        tracing::warn!(%status, "heartbeat refused while draining");
                    }
                    Ok(_) => tracing::debug!("heartbeat while draining"),
                    Err(err) => tracing::debug!(error = %err, "heartbeat failed while draining"),
                },
            }
        }
    }

    /// Where heartbeats and the deregistration go: the replica that
    /// registered this worker, or the planner's address.
    fn home(&self) -> String {
        self.heartbeat_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| self.planner.clone())
    }

    fn take_replica(&self) -> Option<String> {
        self.heartbeat_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    async fn send_heartbeat(&self) -> Result<StatusCode, reqwest::Error> {
        let url = format!("{}/workers/{}/heartbeat", self.home(), self.id);
        let response = self.authorized(self.client.post(&url)).send().await?;
        Ok(response.status())
    }

    async fn register(&self) -> Result<(), RegisterError> {
        // Read before the op set: a change racing this registration leaves
        // the recorded version behind and is announced again.
        let version = self.catalog.version();
        let body = Registration {
            id: self.id.clone(),
            url: self.url.clone(),
            ops: self.catalog.infos(),
            slots: self.slots,
        };
        let response = self
            .authorized(self.client.post(format!("{}/workers", self.planner)))
            .json(&body)
            .send()
            .await?;
        match response.status() {
            status if status.is_success() => {
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                let replica = answer
                    .get("heartbeat_to")
                    .and_then(|v| v.as_str())
                    .filter(|url| is_http_origin(url))
                    .map(|url| url.trim_end_matches('/').to_string());
                *self.heartbeat_to.lock().unwrap_or_else(|p| p.into_inner()) = replica;
                self.announced.store(version, Ordering::Release);
                let home = self.home();
                self.channel_home.send_if_modified(|current| match current {
                    Some(known) if *known == home => false,
                    _ => {
                        *current = Some(home);
                        true
                    }
                });
                Ok(())
            }
            status @ (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) => {
                Err(RegisterError::NoRoute(status))
            }
            status => Err(RegisterError::Refused(
                status,
                response.text().await.unwrap_or_default(),
            )),
        }
    }

    async fn register_legacy(&self) -> Result<(), RegisterError> {
        let body = wire::legacy::Register {
            url: self.url.clone(),
            id: self.id.clone(),
        };
        let response = self
            .client
            .post(format!("{}/register", self.planner))
            .json(&body)
            .send()
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            Err(RegisterError::Refused(
                status,
                response.text().await.unwrap_or_default(),
            ))
        }
    }

    /// Best effort: the planner also notices a silent worker by its missed
    /// heartbeats.
    pub async fn deregister(&self) {
        let url = format!("{}/workers/{}", self.home(), self.id);
        let request = self
            .authorized(self.client.delete(&url))
            .timeout(Duration::from_secs(2));
        match request.send().await {
            Ok(response) => tracing::info!(status = %response.status(), "deregistered"),
            Err(err) => tracing::warn!(error = %err, "could not deregister"),
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.headers(self.token.headers())
    }
}

/// A replica's address as the planner names it: `http(s)://host[:port]`.
fn is_http_origin(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host().is_some()
            && u.path() == "/"
            && u.query().is_none()
            && u.username().is_empty()
    })
}
