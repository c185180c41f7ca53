//! Per-store resource limits.

use wasmtime::ResourceLimiter;

/// Refusing a growth with an error (rather than `Ok(false)`, which makes
/// `memory.grow` return -1) turns it into a trap that carries this value, so
/// the task's error can say which limit was hit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory growth to {desired} bytes refused (cap {limit})")]
pub struct MemoryCapHit {
    pub desired: usize,
    pub limit: usize,
}

pub struct Limits {
    pub memory_bytes: usize,
    pub table_elements: usize,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(wasmtime::Error::new(MemoryCapHit {
                desired,
                limit: self.memory_bytes,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}
