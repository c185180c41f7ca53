//! Registering many idle workers at once: what a planner beside thousands
//! of workers of other flavors sees (for the end-to-end tests and the
//! benchmark). They offer an op no one submits, so they are never
//! dispatched to and need no process behind their URL.

use anyhow::{Result, ensure};
use tokio::task::JoinSet;
use wire::OpInfo;
use wire::planner::Registration;

/// The digest the idle workers advertise for their op.
pub const IDLE_DIGEST: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Registers `{op}-00000`..`{op}-{n-1}` with `planner` (4 slots each,
/// offering only `op`) over 16 concurrent connections, presenting `token`
/// (the admin token) unless `client` already does. They never heartbeat:
/// give the planner a long `HEARTBEAT_TIMEOUT_MS` to keep them.
pub async fn register(
    client: &reqwest::Client,
    planner: &str,
    token: Option<&str>,
    op: &str,
    n: u64,
) -> Result<()> {
    let mut lanes = JoinSet::new();
    for lane in 0..16 {
        let (client, url, op) = (client.clone(), format!("{planner}/workers"), op.to_string());
        let token = token.map(str::to_string);
        lanes.spawn(async move {
            for i in (lane..n).step_by(16) {
                let registration = Registration {
                    id: format!("{op}-{i:05}"),
                    url: format!("http://127.0.0.1:{}", 20_000 + i % 40_000),
                    ops: vec![OpInfo {
                        name: op.clone(),
                        digest: IDLE_DIGEST.into(),
                        arity: 1,
                        doc: String::new(),
                    }],
                    slots: 4,
                };
                let mut request = client.post(&url).json(&registration);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let response = request.send().await?;
                ensure!(
                    response.status().is_success(),
                    "registering idle worker {i}: HTTP {}",
                    response.status()
                );
            }
            anyhow::Ok(())
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane??;
    }
    Ok(())
}
