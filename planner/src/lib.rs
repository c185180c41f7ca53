//! The planner: accepts tasks, keeps them durably, dispatches each to an idle
//! worker that offers its op.
//!
//! [`run`] is the binary's entry (bind, then [`serve`] until SIGTERM);
//! [`serve`] takes its listener and its stop signal as arguments, so tests
//! drive a whole planner in process.

pub mod access;
pub mod api;
pub mod board;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod latency;
pub mod modules;
pub mod planner;
pub mod retention;
mod starting;
pub mod store;
pub mod task;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serve::auth::Token;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::board::Board;
use crate::config::{ServeConfig, StoreKind};
use crate::dispatch::Dispatcher;
use crate::modules::{Module, Modules};
use crate::planner::{Limits, Parts, Planner, Pusher, Replica};
use crate::store::{Durability, Store};

/// Binds the configured address and serves until SIGTERM or Ctrl-C. The
/// token (generated into `DATA_DIR/token` when none is given) is settled
/// before the address is announced, so whoever waits for that line finds it.
pub async fn run(config: ServeConfig) -> Result<()> {
    let access = access::resolve(&config)?;
    let (listener, _) = serve::listen::bind(&config.bind, config.port).await?;
    serve_with(config, access, listener, serve::shutdown::signal()).await
}

/// Serves the planner's API on `listener` until `shutdown` resolves, then
/// stops in bounded time: event streams end, `?wait=true` requests answer
/// with what they have, open connections get `drain_timeout_ms` to finish,
/// and the store is flushed before returning.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let access = access::resolve(&config)?;
    serve_with(config, access, listener, shutdown).await
}

/// [`serve`] with the access rules already settled ([`access::resolve`]).
pub async fn serve_with(
    config: ServeConfig,
    access: access::Access,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = serve::metrics::install();
    let mut shutdown = Box::pin(shutdown);
    let (planner, listener) = if config.store == StoreKind::Postgres {
        // Connecting may take a while (the database may not be up yet):
        // answer meanwhile, not ready, rather than leave clients hanging.
        let target =
            store::postgres::Target::parse(&config.database_url()?).map_err(anyhow::Error::msg)?;
        let listener = listener.into_std()?;
        let starting = starting::serve(
            TcpListener::from_std(listener.try_clone()?)?,
            target.shown.clone(),
        );
        let config = with_advertised_address(config.clone(), listener.local_addr()?);
        let built = tokio::select! {
            built = build(&config, &access.admin) => built,
            () = &mut shutdown => {
                starting.stop().await;
                tracing::info!("stopped before the store was ready");
                return Ok(());
            }
        };
        starting.stop().await;
        let built = built?;
        built.start_replica();
        (built, TcpListener::from_std(listener)?)
    } else {
        (build(&config, &access.admin).await?, listener)
    };
    tracing::info!(durable = planner.store().is_durable(), data_dir = %config.data_dir.display(), "planner ready");
    let stopping = CancellationToken::new();
    let listening = listener
        .local_addr()
        .context("reading the listening address")?;
    let reaper = tokio::spawn(planner.clone().reap_forever());
    let controls = tokio::spawn(planner.clone().controls_forever());
    let retention = tokio::spawn(retention::run(
        planner.clone(),
        retention::Policy {
            ttl: config.result_ttl,
            keep_at_most: (config.result_limit > 0).then_some(config.result_limit),
            idempotency_ttl: config.idempotency_ttl,
        },
    ));
    let state = api::AppState {
        planner: planner.clone(),
        metrics,
        stopping: stopping.clone(),
        listening,
    };
    let signal = {
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!("stopping: no new connections; draining open ones");
            stopping.cancel();
        }
    };
    let server = serve::http::run(
        listener,
        api::app(state, &access),
        config.connections,
        signal,
    );
    let drain = Duration::from_millis(config.drain_timeout_ms);
    let deadline = async {
        stopping.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served.context("serving HTTP")?,
        () = deadline => tracing::warn!(
            drain_ms = config.drain_timeout_ms,
            "connections still open after the drain deadline; closing them"
        ),
    }
    reaper.abort();
    controls.abort();
    retention.abort();
    planner.store().flush().await;
    planner.leave_replicas().await;
    tracing::info!("stopped");
    Ok(())
}

/// The planner with its store opened and recovered, and `TASKS` seeded;
/// public so that tests can put it behind [`api::app`] without a socket.
/// `token` is what it presents to workers (dispatch, module pushes).
pub async fn build(config: &ServeConfig, token: &Token) -> Result<Arc<Planner>> {
    let durability = match config.store {
        StoreKind::Memory => Durability::Memory,
        StoreKind::Durable | StoreKind::Postgres => Durability::Durable(config.data_dir.clone()),
    };
    let (store, recovered) = match config.store {
        StoreKind::Postgres => {
            let target = store::postgres::Target::parse(&config.database_url()?)
                .map_err(anyhow::Error::msg)?;
            let (pg, recovered) = store::postgres::open(
                &target,
                Duration::from_millis(config.database_connect_timeout_ms),
                replica_name(),
                config.retain_finished,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            tracing::info!(database = %target.shown, "connected to PostgreSQL");
            (Store::postgres(pg), recovered)
        }
        StoreKind::Memory | StoreKind::Durable => Store::open(&durability, config.retain_finished)
            .with_context(|| format!("opening the task store in {}", config.data_dir.display()))?,
    };
    let mut board = Board::new(config.max_attempts, config.retain_finished);
    board.set_retry_backoff(config.retry_backoff_ms, crate::board::RETRY_BACKOFF_CAP_MS);
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
    let token = token.clone();
    let dispatcher = Dispatcher::new(
        token.clone(),
        Duration::from_millis(config.dispatch_timeout_ms),
        Duration::from_millis(config.heartbeat_timeout_ms),
    )?;
    let limits = Limits {
        queue: config.queue_limit,
        heartbeat_timeout: Duration::from_millis(config.heartbeat_timeout_ms),
        unoffered_op: (config.unoffered_op_timeout_ms > 0)
            .then(|| Duration::from_millis(config.unoffered_op_timeout_ms)),
        task_timeout_ms: (config.task_timeout_ms > 0).then_some(config.task_timeout_ms),
    };
    let modules = match store.shared() {
        // The database keeps the modules every replica rolls out.
        Some(pg) => {
            let modules = Modules::open(None)?;
            for stored in pg
                .modules(None)
                .await
                .context("loading the stored modules")?
            {
                let module =
                    Module::restored(&stored.name, stored.bytes.into(), stored.stored_at_ms);
                modules.put(module)?;
            }
            modules
        }
        None => Modules::open(match &durability {
            Durability::Durable(dir) => Some(dir.join("modules")),
            Durability::Memory => None,
        })
        .context("loading stored modules")?,
    };
    let replica = (config.store == StoreKind::Postgres).then(|| {
        Replica::new(
            Duration::from_millis(config.replica_lease_ms),
            config.advertise_url.clone(),
        )
    });
    let planner = Planner::new(Parts {
        board,
        store,
        dispatcher,
        limits,
        modules,
        pusher: Pusher::new(token)?,
        replica,
    });
    // TASKS seeds a fresh planner once: a restarted one (a pod rescheduled
    // onto its volume) must not enqueue the batch again, nor must a second
    // replica on the same database.
    let fresh = match planner.store().shared() {
        Some(pg) if config.tasks > 0 => pg
            .first_time("seeded TASKS")
            .await
            .context("marking the TASKS seeding")?,
        _ => recovered.fresh,
    };
    if config.tasks > 0 && !fresh {
        tracing::info!(
            tasks = config.tasks,
            "TASKS ignored: the data dir already holds tasks from an earlier run"
        );
    }
    if config.tasks > 0 && fresh {
        let (ids, _) = planner
            .submit(wire::random::generate(config.tasks), false)
            .await
            .context("enqueueing the TASKS random tasks")?;
        tracing::info!(count = ids.len(), "enqueued random tasks");
    }
    Ok(planner)
}

/// With several replicas, workers heartbeat the replica they registered
/// with: by default the address it listens on, when that names one host.
fn with_advertised_address(
    mut config: ServeConfig,
    listening: std::net::SocketAddr,
) -> ServeConfig {
    if config.advertise_url.is_none() {
        if listening.ip().is_unspecified() {
            tracing::warn!(
                "ADVERTISE_URL is not set and the planner listens on every interface: with several replicas, set it to this replica's own address so its workers' heartbeats reach it"
            );
        } else {
            config.advertise_url = Some(format!("http://{listening}"));
        }
    }
    config
}

/// This replica's name in the rows it owns: the host (the pod's name on
/// Kubernetes), the process and the start time, so a restarted planner is a
/// new owner.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "planner".into());
    format!("{host}/{}/{}", std::process::id(), serve::now_ms())
}
