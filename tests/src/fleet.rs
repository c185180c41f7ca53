//! Registering many idle workers at once: what a planner beside thousands
//! of workers of other flavors sees. They offer an op no test submits, so
//! they are never dispatched to and need no process behind their URL.

use anyhow::{Result, ensure};
use serde_json::json;
use tokio::task::JoinSet;

use crate::System;

/// The digest the idle workers advertise for their op.
pub const IDLE_DIGEST: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Registers `{op}-00000`..`{op}-{n-1}` (4 slots each, offering only `op`)
/// over 16 concurrent connections. They never heartbeat: give the planner a
/// long `HEARTBEAT_TIMEOUT_MS` to keep them.
pub async fn register_idle(system: &System, op: &str, n: usize) -> Result<()> {
    let mut registrations = JoinSet::new();
    for lane in 0..16 {
        let (client, url, op) = (
            system.client.clone(),
            system.url("/workers"),
            op.to_string(),
        );
        registrations.spawn(async move {
            for i in (lane..n).step_by(16) {
                let body = json!({
                    "id": format!("{op}-{i:05}"),
                    "url": format!("http://127.0.0.1:{}", 20_000 + i % 40_000),
                    "ops": [{"name": op, "digest": IDLE_DIGEST, "arity": 1, "doc": ""}],
                    "slots": 4,
                });
                let response = client.post(&url).json(&body).send().await?;
                ensure!(
                    response.status() == 200,
                    "registering {i}: {}",
                    response.status()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = registrations.join_next().await {
        done??;
    }
    Ok(())
}
