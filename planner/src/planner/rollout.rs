//! Rolling a module out to the fleet (`PUT /ops/{name}`), and its progress.

use wire::planner::{OpRollout, RolloutReport};

use super::Planner;
use super::push::{self, PushError};
use crate::modules::Modules;
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("{0}")]
    Invalid(String),
    #[error("worker {worker} refused the module: {error}")]
    Refused { worker: String, error: String },
    #[error("could not store the module: {0:#}")]
    Store(anyhow::Error),
}

impl Planner {
    /// Makes `bytes` the fleet's module for `name`: checked on one worker
    /// first (a module every worker would refuse is refused here, and nothing
    /// changes), stored, then pushed to every worker offering the op.
    pub async fn put_module(
        &self,
        name: &str,
        bytes: axum::body::Bytes,
    ) -> Result<RolloutReport, ModuleError> {
        wire::check_op_name(name).map_err(ModuleError::Invalid)?;
        Modules::check(&bytes).map_err(ModuleError::Invalid)?;
        let module = Modules::prepare(name, bytes);
        let targets = self.board().module_targets(name);
        let mut reports = Vec::new();
        let mut rest = targets.into_iter();
        // The first worker that answers decides whether the module is good.
        for (id, url) in rest.by_ref() {
            let outcome = self.pusher.push(&url, &module).await;
            match &outcome {
                Err(PushError::Refused(error)) => {
                    return Err(ModuleError::Refused {
                        worker: id,
                        error: error.clone(),
                    });
                }
                Err(PushError::Failed(_)) => reports.push(push::report(&id, &outcome)),
                Ok(_) => {
                    reports.push(push::report(&id, &outcome));
                    break;
                }
            }
        }
        if let Some(pg) = self.store.shared() {
            // The database first: the other replicas roll out what it holds.
            pg.store_module(&crate::store::postgres::StoredModule {
                name: module.name.clone(),
                digest: module.digest.clone(),
                bytes: module.bytes.to_vec(),
                stored_at_ms: module.stored_at_ms,
            })
            .await
            .map_err(|e| ModuleError::Store(e.into()))?;
        }
        let module = self.modules.put(module).map_err(ModuleError::Store)?;
        let pushes: Vec<_> = rest
            .map(|(id, url)| {
                let (pusher, module) = (&self.pusher, module.clone());
                async move {
                    let outcome = pusher.push(&url, &module).await;
                    push::report(&id, &outcome)
                }
            })
            .collect();
        reports.extend(futures_util::future::join_all(pushes).await);
        tracing::info!(op = name, digest = %module.digest, workers = reports.len(), "module rolled out");
        telemetry::rollout(name);
        Ok(RolloutReport {
            op: name.to_string(),
            digest: module.digest.clone(),
            workers: reports,
        })
    }

    /// Per op: the fleet's current module and which worker runs which digest.
    pub fn rollouts(&self) -> Vec<OpRollout> {
        let digests = self.fleet_digests();
        let mut names: std::collections::BTreeSet<String> = digests.keys().cloned().collect();
        names.extend(self.modules.all().iter().map(|m| m.name.clone()));
        names
            .into_iter()
            .map(|name| {
                let workers = digests.get(&name).cloned().unwrap_or_default();
                let current = self.modules.get(&name);
                let up_to_date = workers
                    .values()
                    .filter(|d| current.as_ref().is_none_or(|m| &m.digest == *d))
                    .count() as u32;
                OpRollout {
                    behind: workers.len() as u32 - up_to_date,
                    up_to_date,
                    digest: current.as_ref().map(|m| m.digest.clone()),
                    stored_at_ms: current.as_ref().map(|m| m.stored_at_ms),
                    name,
                    workers,
                }
            })
            .collect()
    }
}
