//! Modules from `OPS_DIR`: loaded at start, reloaded when the directory changes.
//!
//! The directory is watched, not the files: Kubernetes updates a ConfigMap
//! volume by writing a new timestamped directory and swapping the `..data`
//! symlink, so `<op>.wasm` is a symlink whose target changes under it. A
//! change is acted on once the directory has been quiet for a moment, so a
//! file written in several steps is read whole; and a module is installed
//! only after it compiles and passes the contract checks, so a torn file can
//! never replace a working version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wire::worker::ModuleSource;

use crate::catalog::Catalog;
use crate::embedded;

/// How long the directory must be quiet before a change is read.
const SETTLE: Duration = Duration::from_millis(150);
/// A rescan even without events, in case a watch event is ever missed.
const RESCAN: Duration = Duration::from_secs(5);

/// Loads every selected op: its file in `dir` if there is one, else the
/// built-in module. An op with neither, or a file that fails to load, is a
/// startup error.
pub fn load_initial(catalog: &Catalog, ops: &[String], dir: Option<&Path>) -> Result<()> {
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        bail!("OPS_DIR {} is not a directory", dir.display());
    }
    for op in ops {
        let file = dir.map(|d| module_path(d, op)).filter(|p| p.exists());
        let (bytes, source) = match &file {
            Some(path) => (
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                ModuleSource::File,
            ),
            None => match embedded::module(op) {
                Some(bytes) => (bytes.to_vec(), ModuleSource::Embedded),
                None => bail!(
                    "op `{op}` has no module: {}and it is not built in (built in: add, mul)",
                    dir.map(|d| format!("no {} ", module_path(d, op).display()))
                        .unwrap_or_default()
                ),
            },
        };
        catalog.install(op, &bytes, source).with_context(|| {
            format!(
                "cannot load op `{op}`{}",
                file.map(|f| format!(" from {}", f.display()))
                    .unwrap_or_default()
            )
        })?;
    }
    Ok(())
}

fn module_path(dir: &Path, op: &str) -> PathBuf {
    dir.join(format!("{op}.wasm"))
}

/// Starts watching `dir`; reconciles the catalog with it on every change.
pub fn watch(
    catalog: Arc<Catalog>,
    dir: PathBuf,
    ops: Vec<String>,
    stop: CancellationToken,
) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .context("starting the OPS_DIR watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    tokio::spawn(async move {
        let _watcher = watcher; // dropped, and so stopped, with this task
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                event = rx.recv() => {
                    if event.is_none() { break }
                    settle(&mut rx).await;
                }
                () = tokio::time::sleep(RESCAN) => {}
            }
            let (catalog, dir, ops) = (catalog.clone(), dir.clone(), ops.clone());
            let _ = tokio::task::spawn_blocking(move || reconcile(&catalog, &dir, &ops)).await;
        }
    });
    Ok(())
}

/// Waits until no event has arrived for `SETTLE`.
async fn settle(rx: &mut tokio::sync::mpsc::UnboundedReceiver<()>) {
    while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
}

/// Makes the catalog match the directory for the ops this worker was started
/// with and any op that came from a file.
fn reconcile(catalog: &Catalog, dir: &Path, ops: &[String]) {
    let mut names: Vec<String> = ops.to_vec();
    for entry in catalog.list() {
        if entry.source == ModuleSource::File && !names.contains(&entry.info.name) {
            names.push(entry.info.name);
        }
    }
    for op in names {
        let path = module_path(dir, &op);
        match std::fs::read(&path) {
            Ok(bytes) => reload_if_changed(catalog, &op, &bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => fall_back(catalog, &op),
            Err(err) => catalog.record_error(&op, format!("cannot read {}: {err}", path.display())),
        }
    }
}

fn reload_if_changed(catalog: &Catalog, op: &str, bytes: &[u8]) {
    let digest = hex::encode(Sha256::digest(bytes));
    if catalog
        .get(op)
        .is_some_and(|e| e.module.digest == digest && e.source == ModuleSource::File)
    {
        return;
    }
    if let Err(err) = catalog.install(op, bytes, ModuleSource::File) {
        tracing::error!(op, error = %err, "module file refused; the previous version keeps serving");
    }
}

/// The file is gone: a built-in op returns to its built-in module; any other
/// op that came from a file stops being offered.
fn fall_back(catalog: &Catalog, op: &str) {
    let Some(current) = catalog.get(op) else {
        return;
    };
    if current.source != ModuleSource::File {
        return;
    }
    match embedded::module(op) {
        Some(bytes) => {
            if let Err(err) = catalog.install(op, bytes, ModuleSource::Embedded) {
                tracing::error!(op, error = %err, "cannot restore the built-in module");
            }
        }
        None => {
            catalog.remove(op);
        }
    }
}
