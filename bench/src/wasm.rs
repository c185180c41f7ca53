//! Part 5: one sandboxed call as the worker makes it (a fresh store with the
//! memory limit and the deadline set, instantiated from the pre-linked
//! component) against the same arithmetic done natively.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use worker::sandbox::{OpModule, Sandbox, SandboxConfig};

use crate::Plan;

/// Upper bound on calls per loop, whatever the clock says.
const MAX_CALLS: u64 = 20_000_000;
const MAX_NATIVE: u64 = 2_000_000_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct WasmCost {
    pub calls: u64,
    /// `sandbox.call` on the calling thread.
    pub sandboxed_us: f64,
    /// The same call wrapped as the worker's executor runs it:
    /// `tokio::task::spawn_blocking` and awaiting the result.
    pub spawn_blocking_us: f64,
    /// `i64::checked_add`, in nanoseconds.
    pub native_ns: f64,
}

/// The worker's defaults: OP_TIMEOUT_MS=1000, OP_MEMORY_MB=16.
fn sandbox(plan: &Plan) -> Result<(Sandbox, OpModule)> {
    let sandbox = Sandbox::new(SandboxConfig {
        timeout: Duration::from_millis(1000),
        memory_bytes: 16 << 20,
        concurrency: plan.slots,
    })?;
    let bytes = worker::embedded::module("add").context("the worker embeds no `add` module")?;
    let module = sandbox.load(bytes).context("loading the embedded `add`")?;
    Ok((sandbox, module))
}

pub async fn measure(plan: &Plan) -> Result<WasmCost> {
    let (sandbox, module) = sandbox(plan)?;
    let duration = plan.wasm;
    // Inline, on a blocking thread so the runtime is not starved meanwhile.
    let (sandbox, module, calls, sandboxed_us) = tokio::task::spawn_blocking(move || {
        for i in 0..1_000 {
            call(&sandbox, &module, i)?;
        }
        let started = Instant::now();
        let mut calls = 0u64;
        while calls < MAX_CALLS && (!calls.is_multiple_of(256) || started.elapsed() < duration) {
            call(&sandbox, &module, calls as i64)?;
            calls += 1;
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        Ok::<_, anyhow::Error>((sandbox, module, calls, us))
    })
    .await
    .context("the sandboxed loop panicked")??;

    let module = std::sync::Arc::new(module);
    let started = Instant::now();
    let mut wrapped = 0u64;
    while wrapped < MAX_CALLS && started.elapsed() < duration {
        let (sandbox, module) = (sandbox.clone(), module.clone());
        let i = wrapped as i64;
        tokio::task::spawn_blocking(move || call(&sandbox, &module, i))
            .await
            .context("a call panicked")??;
        wrapped += 1;
    }
    let spawn_blocking_us = started.elapsed().as_secs_f64() * 1e6 / wrapped.max(1) as f64;

    let native_ns = native(duration);
    Ok(WasmCost {
        calls,
        sandboxed_us,
        spawn_blocking_us,
        native_ns,
    })
}

fn call(sandbox: &Sandbox, module: &OpModule, i: i64) -> Result<()> {
    let value = sandbox
        .call(module, &[i, 2])
        .map_err(|e| anyhow::anyhow!("add({i}, 2): {e}"))?;
    if value != i + 2 {
        bail!("add({i}, 2) = {value}");
    }
    Ok(())
}

/// `checked_add` through `black_box`, so it is neither hoisted nor folded.
fn native(duration: Duration) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    let mut sum = 0i64;
    while calls < MAX_NATIVE && (!calls.is_multiple_of(65_536) || started.elapsed() < duration) {
        let value = black_box(calls as i64)
            .checked_add(black_box(2))
            .unwrap_or(0);
        sum = sum.wrapping_add(black_box(value));
        calls += 1;
    }
    black_box(sum);
    started.elapsed().as_secs_f64() * 1e9 / calls.max(1) as f64
}
