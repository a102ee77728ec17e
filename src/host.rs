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
use crate::grant::fs::{FsGuard, GuardedFs, GuardedFsData};
use crate::grant::http::HttpGuard;
use crate::grant::sockets::{CountedSockets, CountedSocketsData, SocketCount};
use crate::grant::{self, DecisionObserver, LimitHit, Limiter, Recorder};
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
    denials_only: bool,
    audit: Option<Arc<crate::audit::Auditor>>,
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
        self.denials_only = false;
        self
    }

    /// Calls `observer` with every denial (and no allowed decision). Cheaper than
    /// [`HostConfig::observe`] when only denials matter: allowed calls between linked
    /// components then stay on their fast path.
    pub fn observe_denials(
        mut self,
        observer: impl Fn(&grant::DecisionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self.denials_only = true;
        self
    }

    /// Records decisions with `auditor` before they are enforced: a fail-closed auditor that
    /// cannot write a record turns the decision into a deny.
    pub fn audit(mut self, auditor: Arc<crate::audit::Auditor>) -> Self {
        self.audit = Some(auditor);
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
    /// An import cannot be linked to another component.
    #[error("component `{component}`: import `{import}` cannot be linked: {message}")]
    Link {
        /// The importing component.
        component: String,
        /// The import.
        import: String,
        /// Why.
        message: String,
    },
    /// The function or its arguments do not fit the component's export.
    #[error("component `{component}`: {message}")]
    Call {
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
    recorder: Recorder,
    ticker: Arc<AtomicBool>,
    /// Linked apps by (policy identity, root component): callees keep their instances across
    /// runs of the same verified policy on this host.
    apps: std::sync::Mutex<std::collections::HashMap<(u64, String), Arc<App>>>,
    /// Callees by policy identity, shared by every app and direct call of that policy.
    callees: std::sync::Mutex<
        std::collections::HashMap<
            u64,
            std::collections::BTreeMap<String, Arc<crate::broker::Callee>>,
        >,
    >,
}

/// A root component with its links resolved and its callees created.
struct App {
    component: Component,
    linker: Linker<State>,
    /// The component's imports resolved against the linker once, for every run; `None` if
    /// it is not a command (running it then reports why).
    command: Option<wasmtime_wasi::p2::bindings::CommandPre<State>>,
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
    fs: FsGuard,
    sockets: SocketCount,
}

impl State {
    /// Whether the limiter refused a memory growth.
    pub(crate) fn limiter_refused(&self) -> bool {
        self.limiter.memory_refused
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

fn guarded_fs(s: &mut State) -> GuardedFs<'_> {
    GuardedFs {
        inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
            ctx: s.wasi.filesystem(),
            table: &mut s.table,
        },
        guard: &mut s.fs,
    }
}

fn counted_sockets(s: &mut State) -> CountedSockets<'_> {
    CountedSockets {
        inner: WasiSocketsCtxView {
            ctx: s.wasi.sockets(),
            table: &mut s.table,
        },
        guard: &mut s.sockets,
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
        // Count the sockets each instance creates (`limits.sockets`, see `grant::sockets`).
        wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::add_to_linker::<
            State,
            CountedSocketsData,
        >(&mut linker, counted_sockets)
        .map_err(setup)?;
        wasmtime_wasi::p2::bindings::sockets::udp_create_socket::add_to_linker::<
            State,
            CountedSocketsData,
        >(&mut linker, counted_sockets)
        .map_err(setup)?;
        // Put the filesystem adapter in front of every filesystem call (see `grant::fs`).
        wasmtime_wasi::p2::bindings::filesystem::types::add_to_linker::<State, GuardedFsData>(
            &mut linker,
            guarded_fs,
        )
        .map_err(setup)?;
        wasmtime_wasi::p2::bindings::filesystem::preopens::add_to_linker::<State, GuardedFsData>(
            &mut linker,
            guarded_fs,
        )
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
            recorder: Recorder {
                audit: config.audit,
                observer: config.observer,
                denials_only: config.denials_only,
            },
            ticker: stop,
            apps: Default::default(),
            callees: Default::default(),
        })
    }

    fn wiring<'a>(
        &'a self,
        policy: &'a Arc<VerifiedPolicy>,
        graph: &'a crate::broker::Graph,
    ) -> crate::broker::Wiring<'a> {
        crate::broker::Wiring {
            base: &self.linker,
            engine: &self.engine,
            policy,
            recorder: &self.recorder,
            graph,
        }
    }

    /// The linked app for `component` of `policy`, built on first use.
    fn app(&self, policy: &Arc<VerifiedPolicy>, component: &str) -> Result<Arc<App>, RunError> {
        let key = (policy.id(), component.to_owned());
        if let Some(app) = self
            .apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(app.clone());
        }
        let graph = crate::broker::resolve(&self.engine, policy, component, &mut |n| {
            self.compile(policy, n)
        })?;
        let linker = {
            let mut registry = self.callees.lock().unwrap_or_else(|e| e.into_inner());
            self.wiring(policy, &graph)
                .linker_for(component, registry.entry(policy.id()).or_default())?
        };
        let compiled = graph.compiled[component].clone();
        let command = linker
            .instantiate_pre(&compiled)
            .ok()
            .and_then(|pre| wasmtime_wasi::p2::bindings::CommandPre::new(pre).ok());
        let app = Arc::new(App {
            component: compiled,
            linker,
            command,
        });
        self.apps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, app.clone());
        Ok(app)
    }

    /// Calls an exported function of `component` from the host, with arguments and results
    /// in WAVE text (`"hello"`, `42`, `{x: 1}`). `function` is `interface#name` (the
    /// interface's version may be left out) or a top-level export's name. The component runs
    /// in its own store with its own grants; its instance is kept for later calls and replaced
    /// after a fault.
    pub async fn call(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
        function: &str,
        args: &[String],
    ) -> Result<Vec<String>, RunError> {
        policy
            .policy()
            .components
            .get(component)
            .ok_or_else(|| no_such(policy, component))?;
        let graph = crate::broker::resolve(&self.engine, policy, component, &mut |n| {
            self.compile(policy, n)
        })?;
        let callee = {
            let mut registry = self.callees.lock().unwrap_or_else(|e| e.into_inner());
            self.wiring(policy, &graph)
                .callee_for(component, registry.entry(policy.id()).or_default())?
        };
        let (export, name) = match function.rsplit_once('#') {
            Some((e, f)) => (Some(e), f),
            None => (None, function),
        };
        let parse = |ty: &wasmtime::component::types::ComponentFunc| {
            let params: Vec<_> = ty.params().collect();
            if params.len() != args.len() {
                let names: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "`{function}` takes {} argument{} ({}), {} given",
                    params.len(),
                    if params.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    args.len()
                ));
            }
            params
                .iter()
                .zip(args)
                .map(|((n, t), a)| {
                    wasm_wave::from_str::<wasmtime::component::Val>(t, a).map_err(|e| {
                        format!("argument `{n}`: `{a}` is not a valid WAVE value of its type: {e}")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let results = callee
            .invoke(
                export,
                name,
                None,
                crate::broker::Args::Parse(Box::new(parse)),
                crate::broker::Results::Fresh,
            )
            .await
            .map_err(|e| match e {
                crate::broker::InvokeError::Args(message) => RunError::Call {
                    component: component.to_owned(),
                    message,
                },
                crate::broker::InvokeError::Fault(message) => RunError::Trap {
                    component: component.to_owned(),
                    message,
                },
            })?;
        results
            .iter()
            .map(|v| {
                wasm_wave::to_string(v).map_err(|e| RunError::Trap {
                    component: component.to_owned(),
                    message: format!("cannot print a result: {e}"),
                })
            })
            .collect()
    }

    /// Where this host's decisions go.
    pub(crate) fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// `component` of `policy` compiled, and the linker with its links to other components.
    pub(crate) fn linked(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
    ) -> Result<(Component, Linker<State>), RunError> {
        let app = self.app(policy, component)?;
        Ok((app.component.clone(), app.linker.clone()))
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

    /// Builds `component`'s store under its policy and instantiates it, without running it:
    /// what every run costs before the guest's first instruction. For benchmarks.
    #[doc(hidden)]
    pub async fn instantiate_only(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
    ) -> Result<(), RunError> {
        self.instantiate_command(policy, component, &[]).await?;
        Ok(())
    }

    /// The store and the instantiated command that [`Host::run`] runs.
    async fn instantiate_command(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
        args: &[String],
    ) -> Result<(wasmtime_wasi::p2::bindings::Command, Store<State>), RunError> {
        let spec = policy
            .policy()
            .components
            .get(component)
            .ok_or_else(|| no_such(policy, component))?;
        let app = self.app(policy, component)?;
        let mut store =
            new_store(&self.engine, policy, &self.recorder, spec, args).map_err(|e| {
                RunError::Instantiate {
                    component: component.to_owned(),
                    message: e.to_string(),
                }
            })?;
        let cmd = match &app.command {
            Some(pre) => pre.instantiate_async(&mut store).await,
            None => {
                wasmtime_wasi::p2::bindings::Command::instantiate_async(
                    &mut store,
                    &app.component,
                    &app.linker,
                )
                .await
            }
        }
        .map_err(|e| instantiate_error(component, &app.component, &self.engine, e))?;
        Ok((cmd, store))
    }

    /// Runs `component` (a `wasi:cli/run` command) with `args` appended to its policy's
    /// arguments, its imports of other components linked as its policy's `calls` say.
    /// Returns the guest's exit status.
    pub async fn run(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
        args: &[String],
    ) -> Result<i32, RunError> {
        let (cmd, mut store) = self.instantiate_command(policy, component, args).await?;
        let limits = policy.policy().components[component].limits;
        let fail = |e: wasmtime::Error, store: &Store<State>| {
            classify(component, &limits, e, store.data().limiter.memory_refused)
        };
        let result = backstop(&limits, cmd.wasi_cli_run().call_run(&mut store)).await;
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

/// A callee's failure, as one phrase naming the limit or trap.
pub(crate) fn describe_failure(
    component: &str,
    limits: &crate::policy::Limits,
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

/// A store for `spec`'s component: its own WASI context, HTTP and DNS guards, and limiter.
pub(crate) fn new_store(
    engine: &Engine,
    policy: &Arc<VerifiedPolicy>,
    recorder: &Recorder,
    spec: &crate::policy::ComponentPolicy,
    args: &[String],
) -> Result<Store<State>, wasmtime::Error> {
    let wasi = grant::wasi_ctx(policy, recorder, spec, args)?;
    let guard = |p: &Arc<VerifiedPolicy>| (p.clone(), recorder.clone(), spec.name.clone());
    let (hp, ho, hc) = guard(policy);
    let (lp, lo, lc) = guard(policy);
    let mut store = Store::new(
        engine,
        State {
            wasi,
            table: resource_table(),
            limiter: Limiter::new(spec.limits.memory.bytes()),
            http: WasiHttpCtx::new(),
            hooks: HttpGuard {
                policy: hp,
                recorder: ho,
                component: hc,
            },
            lookup: LookupGuard {
                policy: lp,
                recorder: lo,
                component: lc,
            },
            fs: FsGuard::new(
                policy.clone(),
                recorder.clone(),
                spec.name.clone(),
                spec.limits.files,
            ),
            sockets: SocketCount::new(spec.limits.sockets),
        },
    );
    store.limiter(|s| &mut s.limiter);
    // Instantiation runs guest code (start functions), so the limits apply from the start.
    arm_limits(&mut store, &spec.limits);
    Ok(store)
}

/// Awaits a guest call under `limits.timeout` plus a second of grace. Epochs cannot interrupt
/// a guest blocked in a host call; this backstop can, and its expiry reads as the epoch
/// interrupt it stands in for, so every caller reports it as the timeout.
pub(crate) async fn backstop<T>(
    limits: &crate::policy::Limits,
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
pub(crate) fn arm_limits(store: &mut Store<State>, limits: &crate::policy::Limits) {
    let ticks = limits.timeout.map_or(u64::MAX / 2, |t| {
        t.duration().as_millis().div_ceil(TICK.as_millis()) as u64
    });
    store.set_epoch_deadline(ticks.max(1));
    store.epoch_deadline_trap();
    // INVARIANT: fuel consumption is enabled in `Host::new`, so setting fuel cannot fail.
    store
        .set_fuel(limits.fuel.unwrap_or(u64::MAX))
        .expect("fuel is enabled");
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
        _ if let Some(o) = e.downcast_ref::<grant::OutputExceeded>() => limit(
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
        // A host error (e.g. a refused call to another component): its root cause is the
        // message; the outer layers are wasmtime's backtrace.
        None => RunError::Trap {
            component: component.to_owned(),
            message: e.root_cause().to_string(),
        },
    }
}
