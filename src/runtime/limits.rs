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

/// Bounds a store's memories and tables together: `limits.memory` is one budget for every
/// linear memory and every table of the store (a table element counts as a pointer), and the
/// numbers of instances, memories and tables are bounded too.
#[derive(Debug)]
pub(crate) struct Limiter {
    budget: usize,
    used: usize,
    /// Set when a growth was refused.
    memory_refused: bool,
}

/// Table elements any one table may hold.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The bytes one table element is counted as.
const TABLE_ELEMENT: usize = std::mem::size_of::<usize>();

/// Core instances, memories and tables one store may hold.
pub(crate) const MAX_INSTANCES: usize = 1000;
pub(crate) const MAX_MEMORIES: usize = 100;
pub(crate) const MAX_TABLES: usize = 1000;

impl Limiter {
    /// A limiter allowing `budget` bytes of linear memory and tables together.
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            used: 0,
            memory_refused: false,
        }
    }

    /// Whether a memory or table growth was refused.
    pub(crate) fn memory_refused(&self) -> bool {
        self.memory_refused
    }

    /// Moves `used` from `current` to `desired` bytes of one memory or table, if the budget
    /// allows it.
    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let next = self.used.saturating_sub(current).saturating_add(desired);
        if next > self.budget {
            self.memory_refused = true;
            return false;
        }
        self.used = next;
        true
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.memory_refused = true;
            return Ok(false);
        }
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT),
            desired.saturating_mul(TABLE_ELEMENT),
        ))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}
