//! Operation modules the planner holds for the fleet: the version every
//! worker offering the op should run. Kept under `DATA_DIR/modules/` so a
//! restarted planner still brings late workers up to date.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};

/// The start of every WebAssembly component: magic, then the component
/// layer's version. Anything else can't be a module, so it is refused here
/// before any worker is bothered.
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

pub struct Module {
    pub name: String,
    pub digest: String,
    pub bytes: axum::body::Bytes,
    pub stored_at_ms: u64,
}

impl Module {
    /// A module kept elsewhere (the shared store), with its original time.
    pub fn restored(name: &str, bytes: axum::body::Bytes, stored_at_ms: u64) -> Self {
        module(name.to_string(), bytes, stored_at_ms)
    }
}

pub struct Modules {
    dir: Option<PathBuf>,
    current: RwLock<BTreeMap<String, Arc<Module>>>,
}

impl Modules {
    /// Loads what a previous run stored; `None` keeps modules in memory only.
    pub fn open(dir: Option<PathBuf>) -> Result<Self> {
        let mut current = BTreeMap::new();
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let Some(name) = op_name(&path) else { continue };
                let bytes =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let stored_at_ms = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                current.insert(
                    name.clone(),
                    Arc::new(module(name, bytes.into(), stored_at_ms)),
                );
            }
        }
        Ok(Self {
            dir,
            current: RwLock::new(current),
        })
    }

    pub fn check(bytes: &[u8]) -> Result<(), String> {
        if bytes.starts_with(&COMPONENT_PREAMBLE) {
            Ok(())
        } else {
            Err(
                "not a WebAssembly component (expected the component preamble \\0asm 0d 00 01 00)"
                    .into(),
            )
        }
    }

    pub fn prepare(name: &str, bytes: axum::body::Bytes) -> Module {
        module(name.to_string(), bytes, serve::now_ms())
    }

    /// Makes `module` current, on disk first when durable.
    pub fn put(&self, module: Module) -> Result<Arc<Module>> {
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{}.wasm", module.name));
            let tmp = dir.join(format!(".{}.wasm.tmp", module.name));
            std::fs::write(&tmp, &module.bytes)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming to {}", path.display()))?;
        }
        let module = Arc::new(module);
        self.write().insert(module.name.clone(), module.clone());
        Ok(module)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Module>> {
        self.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Module>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Module>>> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Module>>> {
        self.current.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn module(name: String, bytes: axum::body::Bytes, stored_at_ms: u64) -> Module {
    let digest = wire::digest_hex(&bytes);
    Module {
        name,
        digest,
        bytes,
        stored_at_ms,
    }
}

fn op_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.strip_suffix(".wasm")?;
    wire::is_valid_op_name(name).then(|| name.to_string())
}
