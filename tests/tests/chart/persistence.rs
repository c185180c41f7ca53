//! The planner's data volume: the default claim is big enough.

use super::env_of;
use anyhow::{Context, Result};
use e2e::chart::{pod_spec, quantity_bytes, render};

/// The default claim holds what retention keeps (issue 15): `RESULT_LIMIT`
/// finished tasks and a full queue at about 170 B each on disk (measured:
/// BENCHMARKS.md, "Steady state"), plus the WAL at its size limit. The
/// store is persistent by default and deletes finished tasks after 24 h.
#[test]
fn the_default_claim_holds_what_retention_keeps_and_a_full_queue() -> Result<()> {
    const BYTES_PER_TASK_ON_DISK: u64 = 170;
    const WAL_LIMIT: u64 = 64 << 20;
    let manifest = render("workers", &[])?;
    let claim = manifest.get("PersistentVolumeClaim", "workers-planner-data")?;
    let size = quantity_bytes(
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .context("no storage request")?,
    )?;
    let number = |name: &str| -> Result<u64> {
        env_of(&manifest, "workers-planner", name)
            .with_context(|| format!("no {name}"))?
            .parse()
            .with_context(|| format!("{name} is not a number"))
    };
    let (kept, queued) = (number("RESULT_LIMIT")?, number("QUEUE_LIMIT")?);
    assert!(kept > 0, "the store has a count cap by default");
    let needed = (kept + queued) * BYTES_PER_TASK_ON_DISK + WAL_LIMIT;
    assert!(
        size >= needed,
        "a {size} B claim for {kept} finished + {queued} queued tasks needing {needed} B"
    );
    assert_eq!(
        env_of(&manifest, "workers-planner", "RESULT_TTL").as_deref(),
        Some("24h")
    );
    let volumes = &pod_spec(manifest.get("Deployment", "workers-planner")?)["volumes"];
    assert!(
        volumes
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "workers-planner-data"),
        "the data dir is on the claim by default: {volumes}"
    );
    Ok(())
}
