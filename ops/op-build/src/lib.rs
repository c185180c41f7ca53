//! Turns operation guest crates into WebAssembly components.
//!
//! A guest is compiled for `wasm32-unknown-unknown` (so it imports nothing,
//! unlike `wasm32-wasip2` whose std pulls in WASI), then wrapped into a
//! component with `wit-component`. The worker's build script uses this to
//! embed `add` and `mul`; users run the `op-build` binary for their own ops,
//! which may live in any directory, inside this workspace or not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

pub const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The cargo profile guests are built with. It is defined here and passed on
/// cargo's command line, so a guest crate outside this workspace (which has
/// no such profile in its manifest) builds exactly like ours.
pub const PROFILE: &str = "ops";
/// Guests are tiny; optimise them for size so embedding and uploading stays
/// cheap, and build them reproducibly.
const PROFILE_SETTINGS: [&str; 7] = [
    r#"inherits="release""#,
    r#"opt-level="s""#,
    "debug=false",
    "strip=true",
    "lto=true",
    "codegen-units=1",
    r#"panic="abort""#,
];

/// The cargo target dir for guests built from a build script: a `wasm-ops`
/// folder in the outer build's target dir (`CARGO_TARGET_DIR`, else
/// `<workspace>/target`), apart from it so the nested cargo never waits on
/// the outer one's lock.
pub fn build_script_target_dir(workspace_root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root.join("target"),
    }
    .join("wasm-ops")
}

/// One guest crate to build.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The crate's `Cargo.toml`.
    pub manifest: PathBuf,
    /// The cargo package name, e.g. `op-add`.
    pub package: String,
    /// The op name the component file is named after, e.g. `add`.
    pub op: String,
}

impl Guest {
    /// A guest whose package is named `op-<op>` (the convention in `ops/`).
    pub fn conventional(crate_dir: &Path) -> Result<Self> {
        let manifest = crate_dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let package = package_name(&text)
            .with_context(|| format!("no `name = ...` in [package] of {}", manifest.display()))?;
        let op = package
            .strip_prefix("op-")
            .unwrap_or(&package)
            .replace('-', "_");
        Ok(Self {
            manifest,
            package,
            op,
        })
    }
}

/// Reads `name` from the `[package]` table without a TOML dependency: guest
/// manifests are ours or copied from ours, so the simple form is enough.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_string());
        }
    }
    None
}

/// Builds each guest and writes `<out_dir>/<op>.wasm` components.
///
/// `target_dir` is the cargo target dir for the guest build; it must differ
/// from any cargo build already running (a build script calls this), or the
/// nested cargo would wait forever on the outer one's lock.
pub fn build(guests: &[Guest], target_dir: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    ensure_target_installed()?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut outputs = Vec::new();
    for guest in guests {
        compile(guest, target_dir)?;
        let core = target_dir
            .join(WASM_TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", guest.package.replace('-', "_")));
        let module = std::fs::read(&core).with_context(|| format!("reading {}", core.display()))?;
        let component = componentize(&module)
            .with_context(|| format!("turning {} into a component", guest.package))?;
        let out = out_dir.join(format!("{}.wasm", guest.op));
        write_atomically(&out, &component)?;
        outputs.push(out);
    }
    Ok(outputs)
}

/// Wraps a core module (with its embedded `component-type` section) into a
/// component.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(module)?
        .validate(true)
        .encode()
}

fn compile(guest: &Guest, target_dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&guest.manifest)
        .arg("-p")
        .arg(&guest.package)
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--profile")
        .arg(PROFILE)
        .arg("--target-dir")
        .arg(target_dir);
    for setting in PROFILE_SETTINGS {
        cmd.arg("--config")
            .arg(format!("profile.{PROFILE}.{setting}"));
    }
    // A build script inherits the outer build's flags, meant for the host.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo to build {}", guest.package))?;
    if !status.success() {
        bail!(
            "cargo build of {} for {WASM_TARGET} failed ({status})",
            guest.package
        );
    }
    Ok(())
}

/// Installs the wasm target through rustup when it is missing, so a fresh
/// machine with only the Rust toolchain can build the worker.
fn ensure_target_installed() -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(WASM_TARGET)
        .exists()
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .context("the wasm target is missing and rustup could not be run to add it")?;
    if !status.success() {
        bail!("`rustup target add {WASM_TARGET}` failed ({status})");
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_name_is_read_from_the_package_table_only() {
        let manifest =
            "[workspace]\nname = \"no\"\n[package]\nname = \"op-pow\"\nversion = \"1\"\n";
        assert_eq!(package_name(manifest).as_deref(), Some("op-pow"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
    }
}
