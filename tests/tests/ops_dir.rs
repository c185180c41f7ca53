//! The OPS_DIR watcher (issue 12, attack 10): it reacts to writes, renames
//! and deletes only, so its own reads never retrigger it; a file that fails
//! to load is tried once, not again until it changes; and `last_error`
//! clears when a good version is back.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use e2e::{System, fixture, poll};
use serde_json::Value;

/// Sums every sample of a counter in the worker's `/metrics`, over labels
/// matching `filter`.
async fn counter(url: &str, name: &str, filter: &str) -> Result<f64> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn pow_entry(url: &str) -> Option<Value> {
    let ops: Vec<Value> = reqwest::get(format!("{url}/ops"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    ops.into_iter().find(|o| o["name"] == "pow")
}

/// Writes the way editors and kubelets do: a temporary file renamed over.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test]
async fn the_watcher_ignores_its_own_reads_tries_a_bad_file_once_and_clears_the_error() -> Result<()>
{
    let mut system = System::start(&[]).await?;
    let modules = tempfile::tempdir()?;
    let path = modules.path().join("pow.wasm");
    let good = std::fs::read(fixture("pow"))?;
    std::fs::write(&path, &good)?;
    let url = system
        .add_worker(
            "watcher",
            &[
                ("OPS", "add,pow"),
                ("OPS_DIR", modules.path().to_str().unwrap_or_default()),
            ],
        )
        .await?
        .url();
    let reads = "worker_module_file_reads_total";
    let failed_loads = "worker_module_loads_total";

    // Quiet: no file changes for longer than a rescan (5 s). Reading /ops
    // and running pow must not make the worker read pow.wasm again (it
    // re-read it 26 times in 4 s when its own opens counted as changes).
    let before = counter(&url, reads, "").await?;
    assert_eq!(before, 1.0, "read once at start");
    system.wait_for_workers(1).await?;
    for _ in 0..5 {
        let (_, body) = system
            .post_json(
                "/tasks?wait=true",
                &serde_json::json!({"op": "pow", "args": [2, 10]}),
            )
            .await?;
        assert_eq!(body["result"], 1024, "{body}");
    }
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(
        counter(&url, reads, "").await?,
        before,
        "no read while nothing changed"
    );

    // A bad file: tried once, refused, the good version keeps serving; not
    // tried again while it stays the same.
    replace(&path, b"\0asm garbage that does not compile")?;
    let refused = poll(
        Duration::from_secs(15),
        "the bad file to be refused",
        || async {
            pow_entry(&url)
                .await
                .filter(|e| e["last_error"].is_string())
        },
    )
    .await?;
    assert_eq!(
        refused["digest"].as_str(),
        Some(wire::digest_hex(&good).as_str())
    );
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(
        counter(&url, failed_loads, r#"result="error""#).await?,
        1.0,
        "the bad file was compiled once"
    );
    assert_eq!(counter(&url, reads, "").await?, before + 1.0);

    // The good file back: the error clears.
    replace(&path, &good)?;
    let back = poll(Duration::from_secs(15), "last_error to clear", || async {
        pow_entry(&url)
            .await
            .filter(|e| e.get("last_error").is_none())
    })
    .await?;
    assert_eq!(
        back["digest"].as_str(),
        Some(wire::digest_hex(&good).as_str())
    );
    Ok(())
}
