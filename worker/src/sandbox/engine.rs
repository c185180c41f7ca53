//! The process-wide wasmtime engine and how a call is made.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmtime::component::Component;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

use super::CallError;
use super::limits::{Limits, MemoryCapHit};
use super::module::{LoadError, OpModule};

/// How often the epoch advances; the deadline's granularity.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// What [`Sandbox::try_call_briefly`] allows: up to the next tick, so at
/// most [`EPOCH_TICK`] (a call that starts just before a tick is cut short
/// and made again, about once in `EPOCH_TICK / call time` calls).
const BRIEF_TICKS: u64 = 1;

#[derive(Debug, Clone, Copy)]
pub struct SandboxConfig {
    /// Wall-clock deadline per call.
    pub timeout: Duration,
    /// Linear memory cap per call.
    pub memory_bytes: usize,
    /// Calls that may run at once (the worker's slots); sizes the instance pool.
    pub concurrency: u32,
}

/// The engine plus the limits every call runs under. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    config: SandboxConfig,
    _ticker: Arc<EpochTicker>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&config))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Self {
            engine,
            config,
            _ticker: Arc::new(ticker),
        })
    }

    pub fn config(&self) -> SandboxConfig {
        self.config
    }

    /// Compiles and validates a component; see [`OpModule::load`].
    pub fn load(&self, bytes: &[u8]) -> Result<OpModule, LoadError> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        OpModule::load(self, component, bytes)
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// A fresh store with the limits and the deadline set. The deadline must be
    /// set before instantiating: with epoch interruption on it defaults to 0,
    /// which would trap at once.
    pub(super) fn store(&self) -> Store<Limits> {
        let mut store = Store::new(
            &self.engine,
            Limits {
                memory_bytes: self.config.memory_bytes,
                table_elements: 100_000,
            },
        );
        store.limiter(|limits| limits);
        store.set_epoch_deadline(deadline_ticks(self.config.timeout));
        store.epoch_deadline_trap();
        store
    }

    /// Runs `apply(args)` in a fresh store. Blocking: call it off the async
    /// runtime's threads.
    pub fn call(&self, module: &OpModule, args: &[i64]) -> Result<i64, CallError> {
        self.call_cancellable(module, args, &CancellationToken::new())
    }

    /// [`Sandbox::call`] that stops within one epoch tick (5 ms) of `cancel`
    /// being cancelled, with [`CallError::Cancelled`].
    pub fn call_cancellable(
        &self,
        module: &OpModule,
        args: &[i64],
        cancel: &CancellationToken,
    ) -> Result<i64, CallError> {
        self.call_within(module, args, cancel, deadline_ticks(self.config.timeout))
    }

    /// The call, only if it finishes before the next epoch tick (at most
    /// 5 ms): cheap enough to make on an async thread, which it holds no
    /// longer than that. `None` when it ran out of that time (and was not
    /// cancelled): make it again with [`Sandbox::call_after_brief`] off the
    /// async threads. Making it again from the start is safe because ops are
    /// pure (they import nothing) and every call gets a fresh store.
    pub fn try_call_briefly(
        &self,
        module: &OpModule,
        args: &[i64],
        cancel: &CancellationToken,
    ) -> Option<Result<i64, CallError>> {
        let full = deadline_ticks(self.config.timeout);
        let brief = BRIEF_TICKS.min(full);
        match self.call_within(module, args, cancel, brief) {
            Err(CallError::Deadline(_)) if brief < full => None,
            done => Some(done),
        }
    }

    /// The call again, after [`Sandbox::try_call_briefly`] ran out of its
    /// tick, under the rest of the deadline: both attempts together take no
    /// longer than one call under the whole deadline. Blocking: call it off
    /// the async runtime's threads.
    pub fn call_after_brief(
        &self,
        module: &OpModule,
        args: &[i64],
        cancel: &CancellationToken,
    ) -> Result<i64, CallError> {
        let full = deadline_ticks(self.config.timeout);
        let rest = full.saturating_sub(BRIEF_TICKS).max(1);
        self.call_within(module, args, cancel, rest)
    }

    /// A call interrupted once `ticks` epoch ticks have passed, or at the
    /// first tick after `cancel` is.
    fn call_within(
        &self,
        module: &OpModule,
        args: &[i64],
        cancel: &CancellationToken,
        ticks: u64,
    ) -> Result<i64, CallError> {
        if cancel.is_cancelled() {
            return Err(CallError::Cancelled);
        }
        let mut store = self.store();
        watch(&mut store, cancel.clone(), ticks);
        let classify = |err| match self.classify(err) {
            CallError::Deadline(_) if cancel.is_cancelled() => CallError::Cancelled,
            other => other,
        };
        let instance = module.pre().instantiate(&mut store).map_err(classify)?;
        match instance.call_apply(&mut store, args) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(CallError::Op(message)),
            Err(err) => Err(classify(err)),
        }
    }

    pub(super) fn classify(&self, err: wasmtime::Error) -> CallError {
        if let Some(cap) = err.downcast_ref::<MemoryCapHit>() {
            return CallError::Memory {
                desired: cap.desired,
                limit: cap.limit,
            };
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Deadline(self.config.timeout.as_millis() as u64),
            Some(Trap::UnreachableCodeReached) => CallError::Trap(
                "wasm `unreachable` executed (the module panicked or aborted)".into(),
            ),
            Some(trap) => CallError::Trap(trap.to_string()),
            None => CallError::Host(format!("{err:#}")),
        }
    }
}

/// Replaces the store's plain deadline with a check at every epoch tick:
/// interrupted once `cancel` is, or once `ticks` ticks are spent.
fn watch(store: &mut Store<Limits>, cancel: CancellationToken, ticks: u64) {
    let mut left = ticks;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        left = left.saturating_sub(1);
        Ok(if cancel.is_cancelled() || left == 0 {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(1)
        })
    });
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() / EPOCH_TICK.as_micros()) as u64 + 1
}

fn engine_config(config: &SandboxConfig) -> Config {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true);
    // Our contract is synchronous; without the async machinery a call is
    // about 2.5x cheaper.
    wasm.concurrency_support(false);
    // Pooling makes a fresh instance per call cheap (~µs): memories and tables
    // are reused slots instead of fresh mmaps. Room for every slot to run
    // plus headroom for loads, each instance with a handful of memories.
    let instances = config.concurrency.saturating_mul(2).max(4) + 4;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(instances)
        .total_core_instances(instances * 4)
        .total_memories(instances * 2)
        .total_tables(instances * 4)
        .max_memory_size(config.memory_bytes.max(1 << 16));
    // Resetting a slot for the next call: with PAGEMAP_SCAN (Linux 6.7+)
    // wasmtime restores only the pages the call dirtied, to the module's
    // initial image, and keeps them mapped: no madvise, no refault, no IPI
    // (a fresh call measured 28 -> 8-24 µs, BENCHMARKS.md P1). Without it,
    // keeping memory resident would memset the whole kept size on every call
    // (measured 96 µs), so it stays off there.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
    }
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasm
}

/// Advances the engine's epoch on a timer thread; stops when dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch ticker thread");
        Self { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
