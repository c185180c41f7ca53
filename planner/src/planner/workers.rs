//! Worker membership: registration, heartbeats, leaving, and reaping the silent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::planner::{Registration, WorkerChange};

use super::Planner;
use crate::board::IdTaken;
use crate::modules::Module;

impl Planner {
    pub fn register(self: &Arc<Self>, registration: Registration) -> Result<(), IdTaken> {
        let (id, url) = (registration.id.clone(), registration.url.clone());
        let stale: Vec<Arc<Module>> = registration
            .ops
            .iter()
            .filter_map(|info| {
                self.modules
                    .get(&info.name)
                    .filter(|m| m.digest != info.digest)
            })
            .collect();
        let described = format!(
            "url={} slots={} ops={:?}",
            registration.url,
            registration.slots,
            registration
                .ops
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
        );
        self.board()
            .register(registration, Instant::now(), self.limits.heartbeat_timeout)?;
        tracing::info!(worker = %id, "worker registered: {described}");
        self.publish_worker(&id, WorkerChange::Registered);
        self.pump();
        // A worker that joins (or comes back) with an older version of an op
        // the fleet was moved on from gets the current one.
        for module in stale {
            let planner = self.clone();
            let (id, url) = (id.clone(), url.clone());
            tokio::spawn(async move {
                match planner.pusher.push(&url, &module).await {
                    Ok(_) => {
                        tracing::info!(worker = %id, op = %module.name, digest = %module.digest, "brought worker up to date")
                    }
                    Err(err) => {
                        tracing::warn!(worker = %id, op = %module.name, error = %err, "could not bring worker up to date")
                    }
                }
            });
        }
        Ok(())
    }

    pub fn register_legacy(self: &Arc<Self>, id: String, url: String) {
        tracing::info!(worker = %id, %url, "legacy worker registered");
        self.board().register_legacy(id.clone(), url);
        self.publish_worker(&id, WorkerChange::Registered);
        self.pump();
    }

    pub fn heartbeat(&self, id: &str) -> bool {
        self.board().heartbeat(id)
    }

    pub fn deregister(self: &Arc<Self>, id: &str) -> bool {
        let known = self.board().deregister(id);
        if known {
            tracing::info!(worker = id, "worker deregistered");
            self.publish_worker(id, WorkerChange::Left);
        }
        known
    }

    /// Drops workers whose heartbeats stopped, until the process ends.
    pub async fn reap_forever(self: Arc<Self>) {
        let timeout = self.limits.heartbeat_timeout;
        let mut ticker = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
        loop {
            ticker.tick().await;
            let (dead, effects) = self.board().reap(Instant::now(), timeout);
            if !dead.is_empty() {
                tracing::warn!(workers = ?dead, "dropped workers that stopped answering");
                self.apply(effects);
                self.pump();
            }
            if let Some(limit) = self.limits.unoffered_op {
                let expired = self.board().expire_unoffered(serve::now_ms(), limit);
                if !expired.is_empty() {
                    tracing::warn!(
                        tasks = expired.len(),
                        "failed tasks whose op no worker offered in time"
                    );
                    self.apply(crate::board::Effects {
                        finished: expired,
                        ..Default::default()
                    });
                }
            }
        }
    }
}
