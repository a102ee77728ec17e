//! The host: runs components under a [`VerifiedPolicy`], enforcing all of it.
//!
//! Each run, served request and callee gets its own `Store` with its own WASI context,
//! limiter, epoch deadline and fuel. A guest that traps or hits a limit ends its own run with
//! an error naming the limit; the host and its other runs go on. The host applies each
//! policy's `audit` section itself, the first time it runs anything of that policy: a
//! fail-closed policy whose log cannot be opened runs nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi::I32Exit;

use super::broker::{self, Callee};
use super::config::{HostConfig, check_private_dir};
use super::error::{RunError, check_expiry, no_such};
use super::scope::ScopeRef;
use super::store::{self, State};
use super::{engine, wave};
use crate::audit::{Auditor, JsonlSink};
use crate::gate::{Gate, Recorder};
use crate::policy::Limits;
use crate::verified::VerifiedPolicy;

mod audit;

/// Runs components under verified policies.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    config: HostConfig,
    ticker: Arc<engine::Ticker>,
    /// Each policy's auditor (`None`: the policy keeps no log), by policy identity, opened the
    /// first time the host runs anything of that policy.
    auditors: Mutex<HashMap<u64, Option<Arc<Auditor>>>>,
    /// The log files open, by path: policies (or versions of one policy) that write to the
    /// same file share its one writer, which holds the file's lock.
    files: Mutex<HashMap<PathBuf, Arc<JsonlSink>>>,
    /// Linked apps by (policy identity, root component): callees keep their instances across
    /// runs of the same verified policy on this host.
    apps: Mutex<HashMap<(u64, String), Arc<App>>>,
    /// Callees by policy identity, shared by every app and direct call of that policy.
    callees: Mutex<HashMap<u64, BTreeMap<String, Arc<Callee>>>>,
    /// The OTLP exporters of the log files opened, one per file.
    #[cfg(feature = "otlp")]
    exporters: Mutex<Vec<Arc<crate::audit::OtlpExporter>>>,
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
        f.debug_struct("Host")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Logs not closed by `close` still get their final checkpoint.
        let _ = self.close();
    }
}

/// How long closing a host waits for buffered audit records to be exported over OTLP.
#[cfg(feature = "otlp")]
const EXPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// A poisoned lock only means another thread panicked mid-update; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Host {
    /// A host with `config`. Checks the compilation cache directory, if one is set, and
    /// starts a thread that advances the engine's epoch every 10 ms (stopped when the host is
    /// dropped).
    pub fn new(config: HostConfig) -> Result<Self, RunError> {
        if let Some(dir) = &config.cache_dir {
            check_private_dir(dir).map_err(|why| RunError::Cache {
                dir: dir.clone(),
                why,
            })?;
        }
        let engine = engine::engine(config.cache_dir.as_deref(), config.pool)?;
        let linker = engine::linker(&engine)?;
        let ticker = engine::start_ticker(&engine)?;
        Ok(Self {
            engine,
            linker,
            config,
            ticker,
            auditors: Mutex::default(),
            files: Mutex::default(),
            apps: Mutex::default(),
            callees: Mutex::default(),
            #[cfg(feature = "otlp")]
            exporters: Mutex::default(),
        })
    }

    /// Where `policy`'s decisions go on this host: its audit log (opened on first use, as
    /// the policy's `audit` section and this host's configuration say) and the observer.
    pub(crate) fn recorder(&self, policy: &VerifiedPolicy) -> Result<Recorder, RunError> {
        // An expired policy runs nothing, however long ago it was verified.
        check_expiry(policy)?;
        Ok(Recorder {
            audit: self.auditor(policy)?,
            observer: self.config.observer.clone(),
            denials_only: self.config.denials_only,
        })
    }

    /// The gate of `component` of `policy` on this host.
    pub(crate) fn gate(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
    ) -> Result<Gate, RunError> {
        Ok(Gate::new(policy.clone(), component, self.recorder(policy)?))
    }

    /// The limits `component` of `policy` runs under on this host: its policy's, with the
    /// host's defaults for a timeout and fuel the policy does not set. `None` if the policy
    /// has no such component.
    pub fn limits(&self, policy: &VerifiedPolicy, component: &str) -> Option<Limits> {
        let spec = policy.policy().components.get(component)?;
        Some(self.config.fallback.apply(spec.limits))
    }

    fn wiring<'a>(
        &'a self,
        policy: &'a Arc<VerifiedPolicy>,
        graph: &'a broker::Graph,
        recorder: &'a Recorder,
    ) -> broker::Wiring<'a> {
        broker::Wiring {
            base: &self.linker,
            engine: &self.engine,
            policy,
            recorder,
            graph,
            fallback: &self.config.fallback,
        }
    }

    /// Resolves the links of `component` of `policy` (compiling what it reaches) and hands the
    /// wiring and the policy's callees to `build`: the one way apps and direct calls are made.
    fn wired<R>(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
        build: impl FnOnce(
            &broker::Wiring<'_>,
            &mut BTreeMap<String, Arc<Callee>>,
        ) -> Result<R, RunError>,
    ) -> Result<(broker::Graph, R), RunError> {
        let recorder = self.recorder(policy)?;
        let graph = broker::resolve(&self.engine, policy, component, &mut |n| {
            self.compile(policy, n)
        })?;
        let built = {
            let mut registry = lock(&self.callees);
            build(
                &self.wiring(policy, &graph, &recorder),
                registry.entry(policy.id()).or_default(),
            )?
        };
        Ok((graph, built))
    }

    /// The linked app for `component` of `policy`, built on first use.
    fn app(&self, policy: &Arc<VerifiedPolicy>, component: &str) -> Result<Arc<App>, RunError> {
        let key = (policy.id(), component.to_owned());
        if let Some(app) = lock(&self.apps).get(&key) {
            return Ok(app.clone());
        }
        let (graph, linker) = self.wired(policy, component, |w, callees| {
            w.linker_for(component, callees)
        })?;
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
        lock(&self.apps).insert(key, app.clone());
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
        let (_, callee) = self.wired(policy, component, |w, callees| {
            w.callee_for(component, callees)
        })?;
        let (export, name) = match function.rsplit_once('#') {
            Some((e, f)) => (Some(e), f),
            None => (None, function),
        };
        let parse =
            |ty: &wasmtime::component::types::ComponentFunc| wave::parse_args(function, ty, args);
        // The host is one caller: its calls share instances, as documented above.
        let results = callee
            .invoke(
                &ScopeRef::Shared,
                export,
                name,
                None,
                broker::Args::Parse(Box::new(parse)),
                broker::Results::Fresh,
            )
            .await
            .map_err(|e| match e {
                broker::InvokeError::Args(message) => RunError::Call {
                    component: component.to_owned(),
                    message,
                },
                broker::InvokeError::Fault(message) => RunError::Trap {
                    component: component.to_owned(),
                    message,
                },
            })?;
        wave::print(component, &results)
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

    /// Forgets the linked apps and callees this host keeps for `policy`, once it is no longer
    /// used for new work (a version `serve` replaced). Runs and requests still holding them
    /// finish with them; the next use of the policy would create them again.
    pub(crate) fn retire(&self, policy: &VerifiedPolicy) {
        lock(&self.apps).retain(|(id, _), _| *id != policy.id());
        lock(&self.callees).remove(&policy.id());
    }

    /// Tells the configured observer about a failed request.
    pub(crate) fn report_failure(&self, failure: &super::config::RequestFailure) {
        if let Some(observe) = &self.config.failures {
            observe(failure);
        }
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
        // A compilation that takes a while says so (when asked to), so a first run of a large
        // component does not look hung; one served from the cache says nothing.
        let (done, waiting) = std::sync::mpsc::channel::<()>();
        let notice = self.config.progress.then(|| {
            let (name, kib) = (component.to_owned(), artifact.bytes().len() / 1024);
            std::thread::spawn(move || {
                if waiting.recv_timeout(std::time::Duration::from_secs(1))
                    == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    eprintln!(
                        "capgate: compiling `{name}` ({kib} KiB) to native code; later runs use the cache"
                    );
                }
            })
        });
        let compiled = Component::new(&self.engine, artifact.bytes());
        drop(done);
        if let Some(n) = notice {
            let _ = n.join();
        }
        compiled.map_err(|e| RunError::Invalid {
            component: component.to_owned(),
            message: e.to_string(),
            source: Some(e.into()),
        })
    }

    /// Builds `component`'s store under its policy and instantiates it as a command, ready
    /// for [`Prepared::run`]: everything a run costs before the guest's first instruction.
    /// `args` are appended to the policy's arguments.
    pub async fn prepare(
        &self,
        policy: &Arc<VerifiedPolicy>,
        component: &str,
        args: &[String],
    ) -> Result<Prepared, RunError> {
        let limits = self
            .limits(policy, component)
            .ok_or_else(|| no_such(policy, component))?;
        let app = self.app(policy, component)?;
        let gate = self.gate(policy, component)?;
        let instantiate =
            |e: wasmtime::Error| instantiate_error(component, &app.component, &self.engine, e);
        let mut store = store::new_store(&self.engine, &gate, &limits, args, ScopeRef::owner())
            .map_err(|e| RunError::Instantiate {
                component: component.to_owned(),
                message: e.to_string(),
                source: Some(e.into()),
            })?;
        // Instantiation runs guest code (start functions): a start function blocked in a host
        // call, where epochs cannot reach it, is stopped by the backstop.
        let command = store::backstop(&limits, async {
            match &app.command {
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
        })
        .await
        .map_err(|e| {
            // A start function that traps or hits a limit is a guest failure (69), not a
            // component that cannot be instantiated (65).
            if e.downcast_ref::<wasmtime::Trap>().is_some() {
                store::classify(component, &limits, e, store.data().limiter_refused())
            } else {
                instantiate(e)
            }
        })?;
        Ok(Prepared {
            component: component.to_owned(),
            limits,
            command,
            store,
            _ticker: self.ticker.clone(),
        })
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
        self.prepare(policy, component, args).await?.run().await
    }
}

/// A command instantiated under its policy and not yet run; see [`Host::prepare`].
pub struct Prepared {
    component: String,
    limits: Limits,
    command: wasmtime_wasi::p2::bindings::Command,
    store: Store<State>,
    /// Keeps the epoch advancing (so `limits.timeout` holds) even if the host is dropped
    /// first.
    _ticker: Arc<engine::Ticker>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// Runs the command, with its time and fuel limits armed afresh (instantiation does not
    /// count against them, however long ago it was). Returns the guest's exit status.
    pub async fn run(mut self) -> Result<i32, RunError> {
        store::arm_limits(&mut self.store, &self.limits);
        let call = self.command.wasi_cli_run().call_run(&mut self.store);
        match store::backstop(&self.limits, call).await {
            Ok(Ok(())) => Ok(0),
            Ok(Err(())) => Ok(1),
            Err(e) => match e.downcast_ref::<I32Exit>() {
                Some(exit) => Ok(exit.0),
                None => Err(store::classify(
                    &self.component,
                    &self.limits,
                    e,
                    self.store.data().limiter_refused(),
                )),
            },
        }
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
        source: Some(e.into()),
    }
}
