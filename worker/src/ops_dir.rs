//! Modules from `OPS_DIR`: loaded at start, reloaded when the directory changes.
//!
//! The directory is watched, not the files: Kubernetes updates a ConfigMap
//! volume by writing a new timestamped directory and swapping the `..data`
//! symlink, so `<op>.wasm` is a symlink whose target changes under it. A
//! change is acted on once the directory has been quiet for a moment, so a
//! file written in several steps is read whole; and a module is installed
//! only after it compiles and passes the contract checks, so a torn file can
//! never replace a working version.
//!
//! Only writes, renames and deletes count as changes: inotify also reports
//! opens and reads, and reacting to those made the worker's own reads
//! retrigger it forever. A file is read only when its fingerprint (inode,
//! size, times) differs from the version last tried, so a quiet directory
//! costs a `stat` per op per rescan, and a file that failed to load is not
//! retried until it changes again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;
use wire::worker::ModuleSource;

use crate::catalog::Catalog;
use crate::embedded;

/// How long the directory must be quiet before a change is read.
const SETTLE: Duration = Duration::from_millis(150);
/// A rescan even without events, in case a watch event is ever missed. It
/// only stats files: one is read only if it changed.
const RESCAN: Duration = Duration::from_secs(5);

/// What identifies one version of a module file without reading it: a new
/// write, a rename over it or a kubelet symlink swap changes at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
    changed_ns: i64,
}

impl Fingerprint {
    /// Follows symlinks: the kubelet's `<op>.wasm` points into `..data`.
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
            changed_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        })
    }
}

/// The version of each op's file last tried, loaded or not.
#[derive(Debug, Default)]
pub struct Seen(HashMap<String, Fingerprint>);

/// Loads every selected op: its file in `dir` if there is one, else the
/// built-in module. An op with neither, or a file that fails to load, is a
/// startup error. Returns the file versions read, for [`watch`].
pub fn load_initial(catalog: &Catalog, ops: &[String], dir: Option<&Path>) -> Result<Seen> {
    if let Some(dir) = dir
        && !dir.is_dir()
    {
        bail!("OPS_DIR {} is not a directory", dir.display());
    }
    let mut seen = Seen::default();
    for op in ops {
        let file = dir.map(|d| module_path(d, op)).filter(|p| p.exists());
        let (bytes, source) = match &file {
            Some(path) => {
                if let Ok(fingerprint) = Fingerprint::of(path) {
                    seen.0.insert(op.clone(), fingerprint);
                }
                crate::telemetry::module_file_read(op);
                (
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                    ModuleSource::File,
                )
            }
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
    Ok(seen)
}

fn module_path(dir: &Path, op: &str) -> PathBuf {
    dir.join(format!("{op}.wasm"))
}

/// Whether an event can mean a module file changed: data written, a name
/// created, renamed or deleted. Opens, reads and metadata-only changes can't.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any | EventKind::Other => true,
        EventKind::Modify(modify) => !matches!(modify, ModifyKind::Metadata(_)),
        EventKind::Access(access) => matches!(access, AccessKind::Close(AccessMode::Write)),
    }
}

/// Starts watching `dir`; reconciles the catalog with it on every change.
pub fn watch(
    catalog: Arc<Catalog>,
    dir: PathBuf,
    ops: Vec<String>,
    seen: Seen,
    stop: CancellationToken,
) -> Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| is_change(&event.kind)) {
            let _ = tx.send(());
        }
    })
    .context("starting the OPS_DIR watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let state = Arc::new(std::sync::Mutex::new(seen));
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
            let (catalog, dir, ops, state) =
                (catalog.clone(), dir.clone(), ops.clone(), state.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let mut seen = state.lock().unwrap_or_else(|p| p.into_inner());
                reconcile(&catalog, &dir, &ops, &mut seen);
            })
            .await;
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
fn reconcile(catalog: &Catalog, dir: &Path, ops: &[String], seen: &mut Seen) {
    let mut names: Vec<String> = ops.to_vec();
    for entry in catalog.list() {
        if entry.source == ModuleSource::File && !names.contains(&entry.info.name) {
            names.push(entry.info.name);
        }
    }
    for op in names {
        let path = module_path(dir, &op);
        match Fingerprint::of(&path) {
            Ok(fingerprint) => {
                if seen.0.get(&op) == Some(&fingerprint) {
                    continue; // this version was tried already, loaded or not
                }
                seen.0.insert(op.clone(), fingerprint);
                crate::telemetry::module_file_read(&op);
                match std::fs::read(&path) {
                    Ok(bytes) => load_file(catalog, &op, &bytes),
                    Err(err) => {
                        catalog.record_error(&op, format!("cannot read {}: {err}", path.display()))
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                seen.0.remove(&op);
                fall_back(catalog, &op);
            }
            Err(err) => {
                seen.0.remove(&op);
                catalog.record_error(&op, format!("cannot read {}: {err}", path.display()));
            }
        }
    }
}

fn load_file(catalog: &Catalog, op: &str, bytes: &[u8]) {
    let digest = wire::digest_hex(bytes);
    if catalog
        .get(op)
        .is_some_and(|e| e.module.digest == digest && e.source == ModuleSource::File)
    {
        // The file is back to the version serving: an earlier bad write no
        // longer describes it.
        catalog.clear_error(op);
        return;
    }
    if let Err(err) = catalog.install(op, bytes, ModuleSource::File) {
        tracing::error!(op, error = %err, "module file refused; the previous version keeps serving until the file changes");
    }
}

/// The file is gone: a built-in op returns to its built-in module; any other
/// op that came from a file stops being offered. An error about the file no
/// longer applies.
fn fall_back(catalog: &Catalog, op: &str) {
    catalog.clear_error(op);
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

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn only_writes_renames_and_deletes_are_changes() {
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(is_change(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
        ] {
            assert!(!is_change(&kind), "{kind:?}");
        }
    }

    #[test]
    fn a_fingerprint_changes_with_a_rewrite_and_not_with_a_read() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("ops-dir-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("x.wasm");
        std::fs::write(&path, b"one")?;
        let first = Fingerprint::of(&path)?;
        std::fs::read(&path)?;
        assert_eq!(Fingerprint::of(&path)?, first);
        // A rename over it (how editors and kubelets write) is another inode.
        std::fs::write(dir.join("x.tmp"), b"two")?;
        std::fs::rename(dir.join("x.tmp"), &path)?;
        assert_ne!(Fingerprint::of(&path)?, first);
        std::fs::remove_dir_all(&dir)
    }
}
