//! The cost of one op call as the worker makes it: a fresh sandboxed store
//! (memory cap and deadline set) per call, against the same arithmetic done
//! natively. `cargo bench -p worker --bench sandbox`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use worker::sandbox::{Sandbox, SandboxConfig};

fn calls(c: &mut Criterion) {
    // The worker's defaults: OP_TIMEOUT_MS=1000, OP_MEMORY_MB=16, 4 slots.
    let sandbox = Sandbox::new(SandboxConfig {
        timeout: Duration::from_millis(1000),
        memory_bytes: 16 << 20,
        concurrency: 4,
    })
    .expect("creating the sandbox");
    let mut group = c.benchmark_group("add");
    for op in ["add", "mul"] {
        let bytes = worker::embedded::module(op).expect("embedded op");
        let module = sandbox.load(bytes).expect("loading the embedded op");
        group.bench_function(format!("sandboxed {op} (fresh store)"), |b| {
            b.iter(|| {
                sandbox
                    .call(&module, black_box(&[40, 2]))
                    .expect("the call succeeds")
            })
        });
    }
    group.bench_function("native checked_add", |b| {
        b.iter(|| {
            black_box(40i64)
                .checked_add(black_box(2))
                .expect("no overflow")
        })
    });
    group.bench_function("native checked_mul", |b| {
        b.iter(|| {
            black_box(40i64)
                .checked_mul(black_box(2))
                .expect("no overflow")
        })
    });
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
