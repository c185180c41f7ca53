//! Writing a new op needs no edit of this workspace: a guest crate anywhere
//! (its own `Cargo.toml`, the published WIT by path) builds with `op-build`
//! and loads into a worker, as ops/README.md shows.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use e2e::System;
use launcher::process::sibling_binary;
use serde_json::json;

const GUEST: &str = r#"
wit_bindgen::generate!({ path: WIT, world: "operation" });

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: guest_arena::Arena<{ 64 * 1024 }> = guest_arena::Arena::new();

struct Sub;

impl Guest for Sub {
    fn describe() -> OpInfo {
        OpInfo { name: "sub".into(), arity: 2, doc: "a - b, failing on overflow".into() }
    }

    fn apply(args: Vec<i64>) -> Result<i64, String> {
        let [a, b] = args[..] else { return Err(format!("sub takes 2 arguments, got {}", args.len())) };
        a.checked_sub(b).ok_or_else(|| format!("overflow: {a} - {b}"))
    }
}

export!(Sub);
"#;

/// Lays out the `sub` op crate as a user would, outside the repository,
/// with the contract and the guests' allocator from the checkout `repo`.
fn write_outside_crate(dir: &Path, repo: &Path) -> Result<()> {
    let quoted = |path: &Path| serde_json::to_string(&path.to_string_lossy());
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        r#"[package]
name = "op-sub"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
guest-arena = { path = ARENA }

# A workspace of its own, whatever directory it sits in.
[workspace]
"#
        .replace("ARENA", &quoted(&repo.join("ops/guest-arena"))?),
    )?;
    let wit = quoted(&repo.join("ops/wit"))?;
    std::fs::write(dir.join("src/lib.rs"), GUEST.replace("WIT", &wit))?;
    Ok(())
}

#[tokio::test]
async fn an_op_crate_outside_the_workspace_builds_with_op_build_and_runs() -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()?;
    let outside = tempfile::Builder::new().prefix("outside-op-").tempdir()?;
    let krate = outside.path().join("sub");
    write_outside_crate(&krate, &repo)?;
    // Our lockfile's versions, only so the guest reuses the dependencies
    // already built for ours (a user's crate resolves its own).
    std::fs::copy(repo.join("Cargo.lock"), krate.join("Cargo.lock"))?;

    let op_build = sibling_binary("op-build")?;
    let target_dir = op_build
        .parent()
        .and_then(Path::parent)
        .context("op-build sits in <target>/<profile>/")?
        .join("wasm-ops");
    let out = outside.path().join("components");
    let built = tokio::process::Command::new(&op_build)
        .arg(&krate)
        .arg("--out")
        .arg(&out)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .await?;
    ensure!(
        built.status.success(),
        "op-build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let component = out.join("sub.wasm");
    assert_eq!(
        String::from_utf8_lossy(&built.stdout).trim(),
        component.display().to_string()
    );

    let mut system = System::start(&[]).await?;
    system
        .add_worker(
            "outside",
            &[
                ("OPS", "add,sub"),
                ("OPS_DIR", out.to_str().unwrap_or_default()),
            ],
        )
        .await?;
    system.wait_for_workers(1).await?;
    let (status, body) = system
        .post_json("/tasks?wait=true", &json!({"op": "sub", "args": [5, 7]}))
        .await?;
    assert_eq!((status, &body["result"]), (200, &json!(-2)), "{body}");
    assert_eq!(
        body["digest"],
        wire::digest_hex(&std::fs::read(&component)?)
    );
    Ok(())
}
