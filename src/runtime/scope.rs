//! Which request a store works for, so that a linked callee's instance serves one request
//! only, unless its component is declared `reusable`.
//!
//! Each run and each served request owns a [`Scope`]. A callee instance started for a call
//! made in that scope is kept for the scope's later calls (so calls within one run or request
//! see the state earlier ones left), and is dropped when the scope ends: nothing one request
//! left in a callee reaches the next. Instances of a `reusable` callee, and calls made from
//! the host ([`Host::call`](super::Host::call)), are shared by every scope instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::broker::Callee;

/// One run or one served request. Dropping it drops the idle callee instances it started.
pub(crate) struct Scope {
    id: u64,
    /// The callees that keep instances for this scope.
    touched: Mutex<Vec<Weak<Callee>>>,
}

impl Scope {
    /// A new scope, distinct from every other in this process.
    pub(crate) fn new() -> Arc<Scope> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Scope {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            touched: Mutex::new(Vec::new()),
        })
    }

    /// This scope's number, which tags the callee instances it keeps.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Notes that `callee` keeps instances for this scope, to be dropped with it.
    pub(crate) fn touch(&self, callee: &Arc<Callee>) {
        let mut touched = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
        if !touched
            .iter()
            .any(|t| std::ptr::eq(t.as_ptr(), Arc::as_ptr(callee)))
        {
            touched.push(Arc::downgrade(callee));
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let touched = std::mem::take(
            self.touched
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for callee in touched.iter().filter_map(Weak::upgrade) {
            callee.forget(self.id);
        }
    }
}

/// The scope a store's calls into other components run in.
#[derive(Clone, Default)]
pub(crate) enum ScopeRef {
    /// Shared by every scope: a `reusable` callee's instances, and calls from the host.
    #[default]
    Shared,
    /// The store of the run or request itself, which keeps its scope alive.
    Owner(Arc<Scope>),
    /// A callee instance started for the scope, which it must not keep alive (the scope holds
    /// its instances).
    Member(Weak<Scope>),
}

impl ScopeRef {
    /// A new scope, owned by the store that gets this.
    pub(crate) fn owner() -> ScopeRef {
        ScopeRef::Owner(Scope::new())
    }

    /// The scope a call made now runs in: `None` when shared. A member whose scope has ended
    /// (its request was dropped while a call was still on its way) gets a scope of its own,
    /// which ends with the call.
    pub(crate) fn current(&self) -> Option<Arc<Scope>> {
        match self {
            ScopeRef::Shared => None,
            ScopeRef::Owner(s) => Some(s.clone()),
            ScopeRef::Member(w) => Some(w.upgrade().unwrap_or_else(Scope::new)),
        }
    }
}
