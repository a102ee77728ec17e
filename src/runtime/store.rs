//! One store per instance: the guest's WASI context and adapters, its limiter, and the time,
//! fuel and handle limits, and how a failed call is told apart (which limit, which trap).
//!
//! A store belongs to exactly one component of one verified policy; every adapter in it asks
//! that component's [`Gate`]. Nothing here decides or records anything itself.

use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::error::{LimitHit, RunError};
use super::limits::Limiter;
use super::scope::ScopeRef;
use super::wasi::{
    self,
    dns::{FilteredDns, LookupGuard},
    fs::{FsGuard, GuardedFs},
    http::HttpGuard,
    sockets::{CountedSockets, SocketCount},
};
use crate::gate::Gate;
use crate::policy::Limits;

/// How often the epoch advances; timeouts are rounded up to this.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The wasm stack a guest may use before it traps with a stack overflow.
pub(crate) const MAX_WASM_STACK: usize = 1 << 20;

/// The state of one store.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    http: WasiHttpCtx,
    hooks: HttpGuard,
    lookup: LookupGuard,
    fs: FsGuard,
    sockets: SocketCount,
    /// The run or request this store works for, which its calls to other components run in.
    scope: ScopeRef,
}

impl State {
    /// Whether the limiter refused a memory growth.
    pub(crate) fn limiter_refused(&self) -> bool {
        self.limiter.memory_refused()
    }

    /// The scope this store's calls to other components run in.
    pub(crate) fn scope(&self) -> &ScopeRef {
        &self.scope
    }

    /// Sets the scope the next call's calls run in (a linked instance serves calls of
    /// several scopes one after another).
    pub(crate) fn set_scope(&mut self, scope: ScopeRef) {
        self.scope = scope;
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

pub(crate) fn guarded_fs(s: &mut State) -> GuardedFs<'_> {
    GuardedFs {
        inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
            ctx: s.wasi.filesystem(),
            table: &mut s.table,
        },
        guard: &mut s.fs,
    }
}

pub(crate) fn counted_sockets(s: &mut State) -> CountedSockets<'_> {
    CountedSockets {
        inner: WasiSocketsCtxView {
            ctx: s.wasi.sockets(),
            table: &mut s.table,
        },
        guard: &mut s.sockets,
    }
}

pub(crate) fn filtered_dns(s: &mut State) -> FilteredDns<'_> {
    FilteredDns {
        inner: WasiSocketsCtxView {
            ctx: s.wasi.sockets(),
            table: &mut s.table,
        },
        guard: &mut s.lookup,
    }
}

/// A callee's failure, as one phrase naming the limit or trap.
pub(crate) fn describe_failure(
    component: &str,
    limits: &Limits,
    e: wasmtime::Error,
    memory_refused: bool,
) -> String {
    match classify(component, limits, e, memory_refused) {
        RunError::Limit { message, .. } | RunError::Trap { message, .. } => message,
        other => other.to_string(),
    }
}

/// Resources (files, sockets, streams, pollables) one instance may hold at once: a backstop
/// against exhausting the host's descriptors; past it the guest traps.
const MAX_RESOURCES: usize = 8192;

fn resource_table() -> ResourceTable {
    let mut t = ResourceTable::new();
    t.set_max_capacity(MAX_RESOURCES);
    t
}

/// A store for the component of `gate`: its own WASI context, adapters (each deciding through
/// `gate`) and limiter, with `limits` armed.
pub(crate) fn new_store(
    engine: &Engine,
    gate: &Gate,
    limits: &Limits,
    args: &[String],
    scope: ScopeRef,
) -> Result<Store<State>, wasmtime::Error> {
    let spec = &gate.policy().policy().components[gate.component()];
    let wasi = wasi::wasi_ctx(gate, spec, args)?;
    let mut store = Store::new(
        engine,
        State {
            wasi,
            table: resource_table(),
            limiter: Limiter::new(limits.memory.bytes()),
            http: WasiHttpCtx::new(),
            hooks: HttpGuard {
                gate: gate.clone(),
                connections: Default::default(),
                max_connections: limits.sockets as usize,
            },
            lookup: LookupGuard::new(gate.clone(), limits.sockets),
            fs: FsGuard::new(gate.clone(), limits.files),
            sockets: SocketCount::new(limits.sockets),
            scope,
        },
    );
    store.limiter(|s| &mut s.limiter);
    // Instantiation runs guest code (start functions), so the limits apply from the start.
    arm_limits(&mut store, limits);
    Ok(store)
}

/// Awaits a guest call under `limits.timeout` plus a second of grace. Epochs cannot interrupt
/// a guest blocked in a host call; this backstop can, and its expiry reads as the epoch
/// interrupt it stands in for, so every caller reports it as the timeout.
pub(crate) async fn backstop<T>(
    limits: &Limits,
    call: impl std::future::Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    match limits.timeout {
        Some(t) => tokio::time::timeout(t.duration() + Duration::from_secs(1), call)
            .await
            .unwrap_or_else(|_| Err(Trap::Interrupt.into())),
        None => call.await,
    }
}

/// Arms the time and fuel limits for one run or one call.
#[allow(clippy::expect_used)]
pub(crate) fn arm_limits(store: &mut Store<State>, limits: &Limits) {
    // At every epoch tick the guest yields to the executor, so a busy guest never holds a
    // worker thread: other requests, other guests and the signal that stops `serve` go on.
    // Once `limits.timeout` has passed, the next tick stops it.
    let deadline = limits
        .timeout
        .map(|t| std::time::Instant::now() + t.duration());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| match deadline {
        Some(d) if std::time::Instant::now() >= d => Ok(wasmtime::UpdateDeadline::Interrupt),
        _ => Ok(wasmtime::UpdateDeadline::Yield(1)),
    });
    // INVARIANT: fuel consumption is enabled in `Host::new`, so setting fuel cannot fail.
    store
        .set_fuel(limits.fuel.unwrap_or(u64::MAX))
        .expect("fuel is enabled");
}

pub(crate) fn classify(
    component: &str,
    limits: &Limits,
    e: wasmtime::Error,
    memory_refused: bool,
) -> RunError {
    let limit = |limit, message: String| RunError::Limit {
        component: component.to_owned(),
        limit,
        message,
    };
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => limit(
            LimitHit::Timeout,
            format!(
                "timeout of {} exceeded (`limits.timeout`)",
                limits.timeout.map(|t| t.to_string()).unwrap_or_default()
            ),
        ),
        Some(Trap::OutOfFuel) => limit(
            LimitHit::Fuel,
            format!(
                "fuel limit of {} exhausted (`limits.fuel`)",
                limits.fuel.unwrap_or(0)
            ),
        ),
        Some(Trap::StackOverflow) => limit(
            LimitHit::Stack,
            format!(
                "wasm stack of {} KiB exhausted (unbounded recursion)",
                MAX_WASM_STACK / 1024
            ),
        ),
        _ if let Some(o) = e.downcast_ref::<wasi::output::OutputExceeded>() => limit(
            LimitHit::Output,
            format!(
                "output limit of {} exceeded (`limits.output`)",
                crate::policy::units::ByteSize::from_bytes(o.limit)
            ),
        ),
        _ if matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) =>
        {
            limit(
                LimitHit::Resources,
                format!(
                    "the instance holds {MAX_RESOURCES} handles (descriptors, streams, sockets, \
                     pollables), the most capgate allows one instance"
                ),
            )
        }
        _ if memory_refused => limit(
            LimitHit::Memory,
            format!(
                "memory limit of {} exceeded (`limits.memory`: linear memories and tables together)",
                limits.memory
            ),
        ),
        Some(trap) => RunError::Trap {
            component: component.to_owned(),
            message: match trap {
                Trap::UnreachableCodeReached => format!("{trap} (the guest panicked or aborted)"),
                other => other.to_string(),
            },
        },
        // A host error (e.g. a refused call to another component): its root cause is the
        // message; the outer layers are wasmtime's backtrace.
        None => RunError::Trap {
            component: component.to_owned(),
            message: e.root_cause().to_string(),
        },
    }
}
