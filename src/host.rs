//! The host: one wasmtime `Engine` with capgate's settings, and running components under a
//! [`VerifiedPolicy`].
//!
//! Each run gets its own `Store` with its own WASI context, limiter, epoch deadline and fuel.
//! A guest that traps or hits a limit ends its own run with an error naming the limit; the
//! host and its other runs go on. This module decides nothing itself: grants come from
//! [`crate::grant`], decisions from [`crate::authz`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::grant::dns::{FilteredDns, FilteredDnsData, LookupGuard};
use crate::grant::http::HttpGuard;
use crate::grant::{self, DecisionObserver, LimitHit, Limiter};
use crate::verified::VerifiedPolicy;

/// How often the epoch advances; timeouts are rounded up to this.
const TICK: Duration = Duration::from_millis(10);

/// The wasm stack a guest may use before it traps with a stack overflow.
const MAX_WASM_STACK: usize = 1 << 20;

/// Settings of a [`Host`].
#[derive(Clone, Default)]
pub struct HostConfig {
    cache_dir: Option<PathBuf>,
    observer: Option<DecisionObserver>,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl HostConfig {
    /// Defaults: no compilation cache, decisions not observed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caches compiled components in `dir` (an absolute path), keyed by their bytes.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Calls `observer` with every decision made for running guests.
    pub fn observe(
        mut self,
        observer: impl Fn(&grant::DecisionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The policy has no such component.
    #[error("no component `{name}` in policy `{policy}` (hint: components are {known})")]
    NoSuchComponent {
        /// The name asked for.
        name: String,
        /// The policy's name.
        policy: String,
        /// The names it has.
        known: String,
    },
    /// The component could not be compiled, or is not a component.
    #[error("component `{component}` is not a valid WebAssembly component: {message}")]
    Invalid {
        /// The component.
        component: String,
        /// Why.
        message: String,
    },
    /// The component imports something the policy does not provide.
    #[error("component `{component}` cannot be instantiated: {message}")]
    Instantiate {
        /// The component.
        component: String,
        /// Why.
        message: String,
    },
    /// The guest trapped.
    #[error("component `{component}` trapped: {message}")]
    Trap {
        /// The component.
        component: String,
        /// The trap.
        message: String,
    },
    /// The guest hit a limit of its policy.
    #[error("component `{component}` stopped: {message}")]
    Limit {
        /// The component.
        component: String,
        /// Which limit.
        limit: LimitHit,
        /// The limit, stated.
        message: String,
    },
}

/// Runs components under verified policies.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    observer: DecisionObserver,
    ticker: Arc<AtomicBool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").finish_non_exhaustive()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.ticker.store(true, Ordering::Relaxed);
    }
}

pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    http: WasiHttpCtx,
    hooks: HttpGuard,
    lookup: LookupGuard,
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

fn filtered_dns(s: &mut State) -> FilteredDns<'_> {
    FilteredDns {
        inner: WasiSocketsCtxView {
            ctx: s.wasi.sockets(),
            table: &mut s.table,
        },
        guard: &s.lookup,
    }
}

impl Host {
    /// A host with `config`. Starts a thread that advances the engine's epoch every 10 ms
    /// (stopped when the host is dropped).
    pub fn new(config: HostConfig) -> Result<Self, RunError> {
        let mut c = Config::new();
        c.epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(MAX_WASM_STACK);
        if let Some(dir) = &config.cache_dir {
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(dir);
            let cache = wasmtime::Cache::new(cc).map_err(|e| {
                RunError::Engine(format!("compilation cache in `{}`: {e}", dir.display()))
            })?;
            c.cache(Some(cache));
        }
        let engine = Engine::new(&c).map_err(|e| RunError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        let setup = |e: wasmtime::Error| RunError::Engine(e.to_string());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(setup)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(setup)?;
        // Replace wasmtime-wasi's name lookup with the filtered one (see `grant::dns`).
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::add_to_linker::<State, FilteredDnsData>(&mut linker, filtered_dns)
            .map_err(setup)?;
        linker.allow_shadowing(false);
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("capgate-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| RunError::Engine(e.to_string()))?;
        Ok(Self {
            engine,
            linker,
            observer: config.observer.unwrap_or_else(|| Arc::new(|_| {})),
            ticker: stop,
        })
    }

    /// The wasmtime engine (for embedders that compile or inspect components themselves).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles `component`'s verified artifact (from the cache when one is configured).
    pub fn compile(&self, policy: &VerifiedPolicy, component: &str) -> Result<Component, RunError> {
        let artifact = policy
            .artifact(component)
            .ok_or_else(|| no_such(policy, component))?;
        Component::new(&self.engine, artifact.bytes()).map_err(|e| RunError::Invalid {
            component: component.to_owned(),
            message: e.to_string(),
        })
    }

    /// Runs `component` (a `wasi:cli/run` command) with `args` appended to its policy's
    /// arguments. Returns the guest's exit code.
    pub async fn run(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
        args: &[String],
    ) -> Result<i32, RunError> {
        let spec = policy
            .policy()
            .components
            .get(component)
            .ok_or_else(|| no_such(policy, component))?;
        let compiled = self.compile(policy, component)?;
        let wasi = grant::wasi_ctx(policy, &self.observer, spec, args).map_err(|e| {
            RunError::Instantiate {
                component: component.to_owned(),
                message: e.to_string(),
            }
        })?;
        let limits = spec.limits;
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter::new(limits.memory.bytes()),
                http: WasiHttpCtx::new(),
                hooks: HttpGuard {
                    policy: policy.clone(),
                    observer: self.observer.clone(),
                    component: component.to_owned(),
                },
                lookup: LookupGuard {
                    policy: policy.clone(),
                    observer: self.observer.clone(),
                    component: component.to_owned(),
                },
            },
        );
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.timeout.map_or(u64::MAX / 2, |t| {
            t.duration().as_millis().div_ceil(TICK.as_millis()) as u64
        });
        store.set_epoch_deadline(ticks.max(1));
        store.epoch_deadline_trap();
        // INVARIANT: fuel consumption is enabled in `Host::new`, so setting fuel cannot fail.
        store
            .set_fuel(limits.fuel.unwrap_or(u64::MAX))
            .expect("fuel is enabled");

        let fail = |e: wasmtime::Error, store: &Store<State>| {
            classify(component, &limits, e, store.data().limiter.memory_refused)
        };
        let cmd = wasmtime_wasi::p2::bindings::Command::instantiate_async(
            &mut store,
            &compiled,
            &self.linker,
        )
        .await
        .map_err(|e| instantiate_error(component, &compiled, &self.engine, e))?;
        let call = cmd.wasi_cli_run().call_run(&mut store);
        let result = match limits.timeout {
            // Epochs cannot interrupt a guest blocked in a host call; this backstop can.
            Some(t) => {
                match tokio::time::timeout(t.duration() + Duration::from_secs(1), call).await {
                    Ok(r) => r,
                    Err(_) => {
                        return Err(RunError::Limit {
                            component: component.to_owned(),
                            limit: LimitHit::Timeout,
                            message: format!("timeout of {t} exceeded (`limits.timeout`)"),
                        });
                    }
                }
            }
            None => call.await,
        };
        match result {
            Ok(Ok(())) => Ok(0),
            Ok(Err(())) => Ok(1),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => Ok(exit.0),
                None => Err(fail(e, &store)),
            },
        }
    }
}

fn no_such(policy: &VerifiedPolicy, name: &str) -> RunError {
    RunError::NoSuchComponent {
        name: name.to_owned(),
        policy: policy.policy().name.clone(),
        known: policy
            .policy()
            .components
            .keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn instantiate_error(
    component: &str,
    compiled: &Component,
    engine: &Engine,
    e: wasmtime::Error,
) -> RunError {
    let exports: Vec<String> = compiled
        .component_type()
        .exports(engine)
        .map(|(n, _)| n.to_owned())
        .collect();
    let message = if !exports.iter().any(|n| n.starts_with("wasi:cli/run@")) {
        format!(
            "it does not export `wasi:cli/run`, so it cannot be run as a command (it exports: {})",
            exports.join(", ")
        )
    } else {
        format!("{e:#}")
    };
    RunError::Instantiate {
        component: component.to_owned(),
        message,
    }
}

fn classify(
    component: &str,
    limits: &crate::policy::Limits,
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
        _ if memory_refused => limit(
            LimitHit::Memory,
            format!(
                "memory limit of {} exceeded (`limits.memory`)",
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
        None => RunError::Trap {
            component: component.to_owned(),
            message: e.to_string(),
        },
    }
}
