//! The set of ops a worker offers, swappable while tasks run.
//!
//! Readers take a snapshot (`ArcSwap::load`, lock-free) and keep the module's
//! `Arc` for the whole call, so a call that started on the old version ends on
//! it while every call after the swap sees the new one. Writers compile and
//! validate outside any lock, then swap the map in one store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use wire::worker::{LoadedOp, ModuleSource};

use crate::sandbox::{LoadError, OpModule, Sandbox};

pub struct Entry {
    pub module: OpModule,
    pub source: ModuleSource,
    /// When calls started getting this version: stamped again once it is in
    /// the catalog, so a task that ran the previous version never started
    /// after it (the fleet rollout's acknowledgement is this time).
    loaded_at_ms: AtomicU64,
    /// The op's per-task metric series, held rather than looked up per task.
    pub metrics: crate::telemetry::OpMetrics,
    /// How long this version's calls take.
    pub pace: crate::executor::Pace,
}

impl Entry {
    pub fn loaded_at_ms(&self) -> u64 {
        self.loaded_at_ms.load(Ordering::Relaxed)
    }
}

pub struct Catalog {
    sandbox: Sandbox,
    current: ArcSwap<BTreeMap<String, Arc<Entry>>>,
    /// Last failed load per op, shown by `GET /ops` until a load succeeds.
    errors: Mutex<BTreeMap<String, String>>,
    /// Serializes writers so two swaps of one op can't interleave.
    write: Mutex<()>,
    /// Bumped on every change; the registration loop re-announces on it.
    changed: watch::Sender<u64>,
}

impl Catalog {
    pub fn new(sandbox: Sandbox) -> Self {
        Self {
            sandbox,
            current: ArcSwap::from_pointee(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            write: Mutex::new(()),
            changed: watch::channel(0).0,
        }
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    pub fn get(&self, op: &str) -> Option<Arc<Entry>> {
        self.current.load().get(op).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.current.load().keys().cloned().collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The change counter; bumped after a change is visible to `infos`.
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Compiles, validates and installs `bytes` as op `name`. Blocking (it
    /// compiles): call from a blocking context. On error nothing changes but
    /// the recorded last error.
    pub fn install(
        &self,
        name: &str,
        bytes: &[u8],
        source: ModuleSource,
    ) -> Result<Arc<Entry>, LoadError> {
        let loaded = self
            .check_room_for(name)
            .and_then(|()| self.sandbox.load(bytes))
            .and_then(|m| m.expect_name(name));
        let module = match loaded {
            Ok(module) => module,
            Err(err) => {
                self.lock_errors().insert(name.to_string(), err.to_string());
                crate::telemetry::module_load(name, source, false, false);
                return Err(err);
            }
        };
        let entry = Arc::new(Entry {
            module,
            source,
            loaded_at_ms: AtomicU64::new(serve::now_ms()),
            metrics: Default::default(),
            pace: Default::default(),
        });
        {
            let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = BTreeMap::clone(&self.current.load());
            let previous = next.get(name).map(|old| old.module.digest.clone());
            let unchanged = previous.as_deref() == Some(entry.module.digest.as_str());
            crate::telemetry::module_load(name, source, true, previous.is_some() && !unchanged);
            next.insert(name.to_string(), entry.clone());
            self.current.store(Arc::new(next));
            entry.loaded_at_ms.store(serve::now_ms(), Ordering::Relaxed);
            self.lock_errors().remove(name);
            if unchanged {
                return Ok(entry);
            }
        }
        tracing::info!(op = name, digest = %entry.module.digest, source = ?source, "module loaded");
        self.changed.send_modify(|n| *n += 1);
        Ok(entry)
    }

    /// Stops offering `name`. Calls already running finish.
    pub fn remove(&self, name: &str) -> bool {
        let removed = {
            let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let mut next = BTreeMap::clone(&self.current.load());
            let removed = next.remove(name).is_some();
            self.current.store(Arc::new(next));
            removed
        };
        self.lock_errors().remove(name);
        if removed {
            tracing::info!(op = name, "module removed");
            self.changed.send_modify(|n| *n += 1);
        }
        removed
    }

    pub fn record_error(&self, name: &str, error: String) {
        self.lock_errors().insert(name.to_string(), error);
    }

    /// Forgets the last failed load of `name`: the version serving (or its
    /// absence) is what the source now holds.
    pub fn clear_error(&self, name: &str) {
        self.lock_errors().remove(name);
    }

    /// A new op beyond [`wire::limits::MAX_OPS_PER_WORKER`] is refused, so
    /// the registration always fits the planner's limit.
    fn check_room_for(&self, name: &str) -> Result<(), LoadError> {
        let current = self.current.load();
        if current.len() >= wire::limits::MAX_OPS_PER_WORKER && !current.contains_key(name) {
            return Err(LoadError::TooManyOps(wire::limits::MAX_OPS_PER_WORKER));
        }
        Ok(())
    }

    pub fn infos(&self) -> Vec<wire::OpInfo> {
        self.current
            .load()
            .values()
            .map(|e| e.module.info())
            .collect()
    }

    pub fn list(&self) -> Vec<LoadedOp> {
        let current = self.current.load();
        let errors = self.lock_errors().clone();
        let mut list: Vec<LoadedOp> = current
            .iter()
            .map(|(name, e)| LoadedOp {
                info: e.module.info(),
                source: e.source,
                loaded_at_ms: e.loaded_at_ms(),
                last_error: errors.get(name).cloned(),
            })
            .collect();
        // A file that never loaded still shows, with its error.
        for (name, error) in errors
            .iter()
            .filter(|(name, _)| !current.contains_key(*name))
        {
            list.push(LoadedOp {
                info: wire::OpInfo {
                    name: name.clone(),
                    digest: String::new(),
                    arity: 0,
                    doc: String::new(),
                },
                source: ModuleSource::File,
                loaded_at_ms: 0,
                last_error: Some(error.clone()),
            });
        }
        list
    }

    fn lock_errors(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.errors.lock().unwrap_or_else(|p| p.into_inner())
    }
}
