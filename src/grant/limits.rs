//! The store limiter: memory and table growth bounded by the component's `limits`, and a
//! record of which limit stopped a guest so the error can name it.

use wasmtime::ResourceLimiter;

/// Which limit a guest hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitHit {
    /// `limits.memory`.
    Memory,
    /// `limits.timeout`.
    Timeout,
    /// `limits.fuel`.
    Fuel,
    /// The wasm stack (unbounded recursion).
    Stack,
    /// `limits.output`.
    Output,
    /// The per-instance bound on handles (descriptors, streams, sockets, pollables).
    Resources,
}

/// Bounds a store's memories and tables.
#[derive(Debug)]
pub struct Limiter {
    max_memory: usize,
    /// Set when a memory growth was refused.
    pub memory_refused: bool,
}

/// Table elements any one table may hold.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl Limiter {
    /// A limiter allowing `max_memory` bytes of linear memory per memory.
    pub fn new(max_memory: u64) -> Self {
        Self {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            memory_refused: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
