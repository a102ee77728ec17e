//! Limits: the store limiter (memory and table growth bounded by the component's `limits`,
//! with a record of a refused growth so the error can name the limit), and the default time
//! and fuel limits for components whose policy sets none.

use wasmtime::ResourceLimiter;

use crate::policy::{Limits, defaults};

/// What a host applies to a component whose policy sets no `timeout` or `fuel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fallback {
    /// `limits.timeout` when the policy sets none; `None` only through `capgate::danger`.
    timeout: Option<crate::policy::units::Span>,
    /// `limits.fuel` when the policy sets none; `None` only through `capgate::danger`.
    fuel: Option<u64>,
}

impl Fallback {
    /// The documented defaults ([`defaults::TIMEOUT`], [`defaults::FUEL`]).
    pub(crate) const SAFE: Self = Self {
        timeout: Some(defaults::TIMEOUT),
        fuel: Some(defaults::FUEL),
    };

    /// No time or fuel limit unless the policy sets one.
    pub(crate) const NONE: Self = Self {
        timeout: None,
        fuel: None,
    };

    /// `limits` with this fallback in place of the limits they leave unset.
    pub(crate) fn apply(&self, mut limits: Limits) -> Limits {
        limits.timeout = limits.timeout.or(self.timeout);
        limits.fuel = limits.fuel.or(self.fuel);
        limits
    }
}

/// Bounds a store's memories and tables.
#[derive(Debug)]
pub(crate) struct Limiter {
    max_memory: usize,
    /// Set when a memory growth was refused.
    memory_refused: bool,
}

/// Table elements any one table may hold.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl Limiter {
    /// A limiter allowing `max_memory` bytes of linear memory per memory.
    pub(crate) fn new(max_memory: u64) -> Self {
        Self {
            max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
            memory_refused: false,
        }
    }

    /// Whether a memory growth was refused.
    pub(crate) fn memory_refused(&self) -> bool {
        self.memory_refused
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
