//! The planner: accepts tasks, keeps them durably, dispatches each to an idle
//! worker that offers its op.

pub mod api;
pub mod board;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod latency;
pub mod local;
pub mod modules;
pub mod planner;
pub mod random_tasks;
pub mod rollout;
pub mod store;
pub mod task;
pub mod telemetry;

use std::time::Duration;

use anyhow::{Context, Result};
use serve::auth::Token;

use crate::board::Board;
use crate::config::ServeConfig;
use crate::dispatch::Dispatcher;
use crate::modules::Modules;
use crate::planner::{Limits, Parts, Planner};
use crate::rollout::Pusher;
use crate::store::{Durability, Store};

pub async fn serve(config: ServeConfig) -> Result<()> {
    let metrics = serve::metrics::install();
    let durability = match config.store.as_str() {
        "memory" => Durability::Memory,
        _ => Durability::Durable(config.data_dir.clone()),
    };
    let (store, recovered) = Store::open(&durability, config.retain_finished)
        .with_context(|| format!("opening the task store in {}", config.data_dir.display()))?;
    let mut board = Board::new(config.max_attempts, config.retain_finished);
    let unfinished = recovered
        .tasks
        .iter()
        .filter(|t| !t.status.is_final())
        .count();
    board.insert(recovered.tasks);
    if unfinished > 0 {
        tracing::info!(
            unfinished,
            "recovered unfinished tasks; they run as workers register"
        );
    }
    let token = Token::new(config.token.clone());
    let dispatcher = Dispatcher::new(
        token.clone(),
        Duration::from_millis(config.dispatch_timeout_ms),
    )?;
    let limits = Limits {
        queue: config.queue_limit,
        heartbeat_timeout: Duration::from_millis(config.heartbeat_timeout_ms),
    };
    let modules = Modules::open(match &durability {
        Durability::Durable(dir) => Some(dir.join("modules")),
        Durability::Memory => None,
    })
    .context("loading stored modules")?;
    let planner = Planner::new(Parts {
        board,
        store,
        dispatcher,
        next_id: recovered.next_id,
        limits,
        modules,
        pusher: Pusher::new(token.clone())?,
    });
    tokio::spawn(planner.clone().reap_forever());
    // TASKS seeds a fresh planner once: a restarted one (a pod rescheduled
    // onto its volume) must not enqueue the batch again.
    let fresh = recovered.next_id == 1;
    if config.tasks > 0 && !fresh {
        tracing::info!(
            tasks = config.tasks,
            "TASKS ignored: the data dir already holds tasks from an earlier run"
        );
    }
    if config.tasks > 0 && fresh {
        let (ids, _) = planner
            .submit(random_tasks::generate(config.tasks), false)
            .await
            .context("enqueueing the TASKS random tasks")?;
        tracing::info!(count = ids.len(), "enqueued random tasks");
    }

    let (listener, _) = serve::listen::bind(&config.bind, config.port).await?;
    tracing::info!(durable = planner.store().is_durable(), data_dir = %config.data_dir.display(), "planner ready");
    let state = api::AppState {
        planner: planner.clone(),
        metrics,
    };
    let auth = api::AuthPolicy {
        token,
        submit_requires_token: config.submit_requires_token,
    };
    axum::serve(listener, api::app(state, auth))
        .with_graceful_shutdown(serve::shutdown::signal())
        .await
        .context("serving HTTP")?;
    planner.store().flush().await;
    tracing::info!("stopped");
    Ok(())
}
