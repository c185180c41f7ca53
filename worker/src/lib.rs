//! The worker: runs operation modules (WebAssembly components) for the planner.

pub mod catalog;
pub mod channel;
pub mod config;
pub mod embedded;
pub mod executor;
pub mod http;
pub mod ops_dir;
pub mod registration;
pub mod sandbox;
pub mod telemetry;
pub mod work_time;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serve::auth::Token;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::executor::Executor;
use crate::registration::Registrar;
use crate::sandbox::{Sandbox, SandboxConfig};

pub async fn run(config: Config) -> Result<()> {
    let token = token(&config)?;
    let metrics = serve::metrics::install();
    let ops = config.selected_ops()?;
    let sandbox = Sandbox::new(SandboxConfig {
        timeout: Duration::from_millis(config.op_timeout_ms),
        memory_bytes: config.op_memory_mb as usize * 1024 * 1024,
        concurrency: config.slots,
    })?;
    let catalog = Arc::new(Catalog::new(sandbox));
    let seen = ops_dir::load_initial(&catalog, &ops, config.ops_dir.as_deref())?;

    let (listener, addr) = serve::listen::bind(&config.bind, config.port).await?;
    let id = config.worker_id(addr.port());
    let url = config.advertised_url(addr.port());
    let executor = Arc::new(Executor::new(catalog.clone(), config.slots, config.work_ms));
    let state = http::AppState {
        id: id.as_str().into(),
        executor: executor.clone(),
        metrics,
    };

    // `drain`: SIGTERM came; stop taking tasks and leave the planner.
    // `stop`: the last task in flight has been answered; nothing left to do.
    let drain = CancellationToken::new();
    let stop = CancellationToken::new();
    if let Some(dir) = &config.ops_dir {
        ops_dir::watch(
            catalog.clone(),
            dir.clone(),
            ops.clone(),
            seen,
            stop.clone(),
        )?;
    }
    // Cancelled once the HTTP side has answered everything after SIGTERM:
    // the channel then closes as soon as its own tasks are answered.
    let finish_channel = CancellationToken::new();
    let (home, home_seen) = tokio::sync::watch::channel(None);
    let channel = match config.channel {
        config::ChannelMode::On => Some(tokio::spawn(
            channel::Channel {
                id: id.clone(),
                token: token.clone(),
                executor: executor.clone(),
                home: home_seen,
            }
            .run(finish_channel.clone()),
        )),
        config::ChannelMode::Off => None,
    };
    let registrar = Registrar {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_idle_timeout(serve::http::CLIENT_POOL_IDLE)
            .build()?,
        planner: config.planner.trim_end_matches('/').to_string(),
        token: token.clone(),
        id: id.clone(),
        url: url.clone(),
        slots: config.slots,
        catalog: catalog.clone(),
        executor: executor.clone(),
        heartbeat: Duration::from_millis(config.heartbeat_ms),
        heartbeat_to: std::sync::Mutex::new(None),
        announced: Default::default(),
        channel_home: home,
    };
    let (deregistered, deregistration) = oneshot::channel();
    let registration = tokio::spawn(registrar.run(drain.clone(), deregistered, stop.clone()));
    tracing::info!(%id, %url, ops = ?catalog.names(), slots = config.slots, "worker started; ready once registered");

    let draining = {
        let executor = executor.clone();
        async move {
            serve::shutdown::signal().await;
            tracing::info!("stopping: refusing new tasks, finishing the ones in flight");
            executor.start_draining();
            drain.cancel();
            // Deregistering before the listener closes lets the planner stop
            // routing here while in-flight answers still get through. (An
            // error means there was nothing to deregister.)
            let _ = deregistration.await;
        }
    };
    // Returns once every connection is closed, so every task in flight has
    // been answered: only then may the heartbeats stop.
    let served = serve::http::run(
        listener,
        http::app(state, token),
        config.connections,
        draining,
    )
    .await
    .context("serving HTTP");
    // Tasks that came on the channel are answered on it before the
    // heartbeats stop, so the planner never gives them up for lost.
    finish_channel.cancel();
    if let Some(channel) = channel {
        let _ = channel.await;
    }
    stop.cancel();
    let _ = registration.await;
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// The token this worker requires and presents: `TOKEN` or `TOKEN_FILE`.
/// Without one it does not start (a worker the planner would refuse, or
/// that anyone could use, helps nobody) unless `AUTH=off` says so.
fn token(config: &Config) -> Result<Token> {
    if let Some(token) = config.auth.configured()? {
        return Ok(token);
    }
    if config.auth.auth == serve::auth::AuthMode::Off {
        tracing::warn!(
            "AUTH=off: no authentication; anyone who can reach this port may run tasks and replace modules"
        );
        return Ok(Token::default());
    }
    anyhow::bail!(
        "no token: set TOKEN_FILE to the planner's token file (the planner writes it to DATA_DIR/token, e.g. planner-data/token), or TOKEN; AUTH=off runs without authentication"
    )
}
