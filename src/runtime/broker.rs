//! Calls between components: each non-WASI import of a component is bound to the component
//! its policy's `calls` names, through an adapter that authorises every call, forwards the
//! values into the callee's own store, and isolates faults.
//!
//! Each callee runs in its own `Store` with its own WASI context, limits and identity; no
//! store is ever shared between components. A callee runs up to `limits.instances` calls at
//! once, each in an instance of its own; calls beyond that wait their turn in arrival order,
//! so one caller cannot starve the others. Between calls an instance is kept for the run or
//! served request that started it (see [`super::scope`]), so calls made one after another in
//! one request reach the same instance and no request reaches another's; a `reusable`
//! component's instances are kept for every request. A trap or limit hit in the callee
//! fails the caller's call with a message naming the callee, and the instance it ran in is
//! dropped: the next call gets a fresh one. Links are resolved before anything runs (see
//! [`super::links`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{Component, Instance, Linker, Val};
use wasmtime::{Engine, Store};

use super::error::RunError;
use super::limits::Fallback;
use super::links::base_name;
pub(crate) use super::links::{Graph, resolve};
use super::scope::{Scope, ScopeRef};
use super::store::{self, State};
use crate::authz::{Decision, Request};
use crate::gate::{Gate, Recorder};
use crate::verified::VerifiedPolicy;

/// A live instance of a callee, in its own store.
struct Live {
    store: Store<State>,
    instance: Instance,
    /// Functions already looked up, by (export, function). Each lookup makes a new handle
    /// that lives as long as the store, so they are looked up once per instance.
    /// By export (`""` for top-level functions), then function.
    funcs: std::collections::HashMap<
        String,
        std::collections::HashMap<String, wasmtime::component::Func>,
    >,
    /// Functions called through call sites, by the site's index (no lookup per call).
    by_site: Vec<Option<wasmtime::component::Func>>,
    /// The scope it serves ([`Scope::id`]), or `None` when it is shared.
    scope: Option<u64>,
}

/// A component other components call, and its (lazily started) instance.
pub(crate) struct Callee {
    name: String,
    component: Component,
    linker: Linker<State>,
    /// Its imports resolved against `linker` once, so each instance it starts skips that;
    /// `None` when they do not resolve (instantiating then says why).
    pre: Option<wasmtime::component::InstancePre<State>>,
    engine: Engine,
    policy: Arc<VerifiedPolicy>,
    recorder: Recorder,
    /// Instances between calls, the most recently returned last.
    idle: std::sync::Mutex<Vec<Live>>,
    /// Whether its instances serve every scope (the policy's `reusable`).
    reusable: bool,
    /// One permit per instance `limits.instances` allows; tokio's semaphore hands them out
    /// in the order they were asked for.
    permits: tokio::sync::Semaphore,
    /// Call sites bound to this callee so far (each gets the next index).
    sites: std::sync::atomic::AtomicUsize,
    /// Its `limits`, applied to every call.
    limits: crate::policy::Limits,
}

/// A call the caller's policy does not allow: the caller traps with it, and `serve` answers a
/// request that ended this way with 403.
#[derive(Debug)]
pub(crate) struct CallDenied(String);

impl std::fmt::Display for CallDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CallDenied {}

/// One imported function of a caller, bound to its callee.
struct CallSite {
    callee: Arc<Callee>,
    /// The caller's gate: the caller is the one asking.
    gate: Gate,
    /// The `call` request every call through this site makes.
    request: Request,
    /// This site's index among its callee's sites.
    index: usize,
    /// Its decision, once made. A call request carries no per-call context, and a site lives
    /// only as long as the verified policy it was linked for, so the first complete decision
    /// holds for every later call.
    decided: std::sync::OnceLock<Decision>,
}

impl CallSite {
    /// A call from the caller: authorised (`call` action), recorded, then invoked.
    async fn call(
        &self,
        scope: &ScopeRef,
        params: &[Val],
        results: &mut [Val],
    ) -> wasmtime::Result<()> {
        let callee = &self.callee;
        let Request::Call {
            interface: export,
            function,
            ..
        } = &self.request
        else {
            unreachable!("a call site's request is a call");
        };
        // The arguments are formatted (and hashed) only for a decision the log will keep.
        let args = || vec![("args", format!("{params:?}").into_bytes())];
        if let Err(denied) = self
            .gate
            .decide_kept(&self.decided, &self.request, args)
            .await
        {
            let hint = self
                .gate
                .hint(&denied, &self.request)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(wasmtime::Error::new(CallDenied(format!(
                "call from `{}` to `{}` {export}#{function} {}{hint}",
                self.gate.component(),
                callee.name,
                denied.explain()
            ))));
        }
        callee
            .invoke(
                scope,
                Some(export),
                function,
                Some(self.index),
                Args::Given(params),
                Results::Into(results),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                let why = match e {
                    InvokeError::Args(m) | InvokeError::Fault(m) => m,
                };
                wasmtime::format_err!(
                    "capgate: call from `{}` to `{}` {export}#{function} failed: {why}",
                    self.gate.component(),
                    callee.name
                )
            })
    }
}

impl Callee {
    /// Calls `export#function` (or the top-level `function` when `export` is `None`) in one of
    /// this component's own instances: an idle one kept for the caller's `scope` (any shared
    /// one, for a `reusable` component), or a new one; when `limits.instances` calls are
    /// running, the call waits its turn. `site` is the calling site's index, if the call comes
    /// through one (its function is then found by index). A fault drops the instance, so the
    /// next call gets a fresh one. Returns the results when they are [`Results::Fresh`].
    pub(crate) async fn invoke(
        self: &Arc<Self>,
        scope: &ScopeRef,
        export: Option<&str>,
        function: &str,
        site: Option<usize>,
        params: Args<'_>,
        results: Results<'_>,
    ) -> Result<Vec<Val>, InvokeError> {
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| InvokeError::Fault(format!("component `{}` is closed", self.name)))?;
        // Held until the instance is back in the pool, so the scope cannot end (and drop its
        // instances) between the two.
        let caller = scope.current();
        let scope = if self.reusable { None } else { caller.clone() };
        let tag = scope.as_ref().map(|s| {
            s.touch(self);
            s.id()
        });
        let idle = {
            let mut idle = self.idle_instances();
            idle.iter()
                .rposition(|l| l.scope == tag)
                .map(|i| idle.remove(i))
        };
        let mut taken = match idle {
            Some(live) => live,
            None => self.start(scope.as_ref()).await?,
        };
        let live = &mut taken;
        // This call's own calls run in its caller's scope, even from a `reusable` instance
        // shared by every scope: what it calls that is not reusable stays the caller's.
        live.store.data_mut().set_scope(match &caller {
            Some(s) => ScopeRef::Member(Arc::downgrade(s)),
            None => ScopeRef::Shared,
        });
        store::arm_limits(&mut live.store, &self.limits);
        let cached = match site {
            Some(i) => live.by_site.get(i).copied().flatten(),
            None => live
                .funcs
                .get(export.unwrap_or_default())
                .and_then(|m| m.get(function))
                .copied(),
        };
        let func = match cached {
            Some(f) => f,
            None => {
                let f = match self.lookup(live, export, function) {
                    Ok(f) => f,
                    // Nothing ran: the instance goes back whole.
                    Err(e) => {
                        self.idle_instances().push(taken);
                        return Err(e);
                    }
                };
                match site {
                    Some(i) => {
                        if live.by_site.len() <= i {
                            live.by_site.resize(i + 1, None);
                        }
                        live.by_site[i] = Some(f);
                    }
                    None => {
                        live.funcs
                            .entry(export.unwrap_or_default().to_owned())
                            .or_default()
                            .insert(function.to_owned(), f);
                    }
                }
                f
            }
        };
        let parsed;
        let args: &[Val] = match params {
            Args::Given(v) => v,
            Args::Parse(parse) => match parse(&func.ty(&live.store)) {
                Ok(v) => {
                    parsed = v;
                    &parsed
                }
                Err(e) => {
                    self.idle_instances().push(taken);
                    return Err(InvokeError::Args(e));
                }
            },
        };
        let mut fresh = Vec::new();
        let out = match results {
            Results::Into(r) => r,
            Results::Fresh => {
                fresh.resize(func.ty(&live.store).results().len(), Val::Bool(false));
                &mut fresh[..]
            }
        };
        let limits = self.limits;
        // The instance returns to the pool only if the call completes: a fault, or a caller
        // that gives up (dropping this future), drops it, so no one ever gets an instance
        // stopped halfway.
        let call = func.call_async(&mut live.store, args, out);
        let outcome = store::backstop(&limits, call).await;
        match outcome {
            Ok(()) => {
                self.idle_instances().push(taken);
                Ok(fresh)
            }
            Err(e) => {
                let why = store::describe_failure(
                    &self.name,
                    &limits,
                    e,
                    live.store.data().limiter_refused(),
                );
                // The instance may be in any state after a fault: it is not put back, so the
                // next call starts afresh.
                Err(InvokeError::Fault(format!(
                    "{why}; `{}` will be restarted for the next call",
                    self.name
                )))
            }
        }
    }

    /// A new instance in a new store, for `scope` (or shared).
    async fn start(&self, scope: Option<&Arc<Scope>>) -> Result<Live, InvokeError> {
        use InvokeError::Fault;
        let gate = Gate::new(self.policy.clone(), &self.name, self.recorder.clone());
        // Its own calls run in the same scope.
        let member = match scope {
            Some(s) => ScopeRef::Member(Arc::downgrade(s)),
            None => ScopeRef::Shared,
        };
        let mut store = store::new_store(&self.engine, &gate, &self.limits, &[], member)
            .map_err(|e| Fault(format!("cannot start component `{}`: {e}", self.name)))?;
        // Instantiation runs guest code (start functions), so it is under the timeout too.
        let instantiate = async {
            match &self.pre {
                Some(pre) => pre.instantiate_async(&mut store).await,
                None => {
                    self.linker
                        .instantiate_async(&mut store, &self.component)
                        .await
                }
            }
        };
        let instance = store::backstop(&self.limits, instantiate)
            .await
            .map_err(|e| {
                if e.downcast_ref::<wasmtime::Trap>().is_some() {
                    let refused = store.data().limiter_refused();
                    Fault(store::describe_failure(
                        &self.name,
                        &self.limits,
                        e,
                        refused,
                    ))
                } else {
                    Fault(format!(
                        "cannot instantiate component `{}`: {}",
                        self.name,
                        e.root_cause()
                    ))
                }
            })?;
        Ok(Live {
            store,
            instance,
            funcs: Default::default(),
            by_site: Vec::new(),
            scope: scope.map(|s| s.id()),
        })
    }

    /// Drops the idle instances kept for scope `id`, which has ended.
    pub(crate) fn forget(&self, id: u64) {
        let ended: Vec<Live> = {
            let mut idle = self.idle_instances();
            let (ended, kept) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|l| l.scope == Some(id));
            *idle = kept;
            ended
        };
        // Stores are dropped outside the lock.
        drop(ended);
    }

    /// The pool's idle instances. A panic elsewhere while it was held leaves only whole
    /// instances behind (each is pushed or popped whole), so a poisoned lock is still usable.
    fn idle_instances(&self) -> std::sync::MutexGuard<'_, Vec<Live>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Finds `export#function` (or the top-level `function`) in a live instance.
    fn lookup(
        &self,
        live: &mut Live,
        export: Option<&str>,
        function: &str,
    ) -> Result<wasmtime::component::Func, InvokeError> {
        let parent = match export {
            None => None,
            Some(e) => {
                let full = self
                    .component
                    .component_type()
                    .exports(&self.engine)
                    .map(|(n, _)| n.to_owned())
                    .filter(|n| n == e || base_name(n) == base_name(e))
                    .min_by_key(|n| n != e)
                    .ok_or_else(|| {
                        InvokeError::Args(format!(
                            "component `{}` does not export `{e}`",
                            self.name
                        ))
                    })?;
                Some(
                    live.instance
                        .get_export_index(&mut live.store, None, &full)
                        .ok_or_else(|| {
                            InvokeError::Args(format!(
                                "component `{}` does not export `{e}`",
                                self.name
                            ))
                        })?,
                )
            }
        };
        live.instance
            .get_export_index(&mut live.store, parent.as_ref(), function)
            .and_then(|i| live.instance.get_func(&mut live.store, i))
            .ok_or_else(|| {
                InvokeError::Args(format!(
                    "component `{}` has no exported function `{function}`",
                    self.name
                ))
            })
    }
}

/// An invocation's arguments.
pub(crate) enum Args<'p> {
    /// Given as values (a call forwarded from another component).
    Given(&'p [Val]),
    /// Made from the function's type (text from the command line).
    #[allow(clippy::type_complexity)]
    Parse(
        Box<
            dyn FnOnce(&wasmtime::component::types::ComponentFunc) -> Result<Vec<Val>, String>
                + Send
                + 'p,
        >,
    ),
}

/// Where an invocation's results go.
pub(crate) enum Results<'r> {
    /// Into the caller's slots (a call forwarded from another component).
    Into(&'r mut [Val]),
    /// Into a new vector of the function's arity, returned.
    Fresh,
}

/// Why an invocation failed.
pub(crate) enum InvokeError {
    /// The function or its arguments do not fit: nothing ran.
    Args(String),
    /// The component failed; its instance was dropped.
    Fault(String),
}

/// What building linkers and callees needs: the host's WASI linker, the engine, the policy,
/// the decision recorder and the resolved graph.
pub(crate) struct Wiring<'a> {
    pub(crate) base: &'a Linker<State>,
    pub(crate) engine: &'a Engine,
    pub(crate) policy: &'a Arc<VerifiedPolicy>,
    pub(crate) recorder: &'a Recorder,
    pub(crate) graph: &'a Graph,
    /// The host's time and fuel limits for components whose policy sets none.
    pub(crate) fallback: &'a Fallback,
}

impl Wiring<'_> {
    /// The callee for `name`, created (with its own links) if `callees` lacks it.
    pub(crate) fn callee_for(
        &self,
        name: &str,
        callees: &mut BTreeMap<String, Arc<Callee>>,
    ) -> Result<Arc<Callee>, RunError> {
        if let Some(c) = callees.get(name) {
            return Ok(c.clone());
        }
        let linker = self.linker_for(name, callees)?;
        let limits = self
            .fallback
            .apply(self.policy.policy().components[name].limits);
        let component = self.graph.compiled[name].clone();
        let c = Arc::new(Callee {
            name: name.to_owned(),
            pre: linker.instantiate_pre(&component).ok(),
            component,
            linker,
            engine: self.engine.clone(),
            policy: self.policy.clone(),
            recorder: self.recorder.clone(),
            idle: std::sync::Mutex::new(Vec::new()),
            reusable: self.policy.policy().components[name].reusable,
            permits: tokio::sync::Semaphore::new(limits.instances.max(1) as usize),
            sites: std::sync::atomic::AtomicUsize::new(0),
            limits,
        });
        callees.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// The linker of `name`: the host's WASI linker plus an adapter for each of its links,
    /// creating (and sharing through `callees`) the callees it needs.
    pub(crate) fn linker_for(
        &self,
        name: &str,
        callees: &mut BTreeMap<String, Arc<Callee>>,
    ) -> Result<Linker<State>, RunError> {
        let mut linker = self.base.clone();
        for link in self
            .graph
            .links
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let callee = self.callee_for(&link.callee, callees)?;
            let link_err = |e: wasmtime::Error| RunError::Link {
                component: name.to_owned(),
                import: link.import.clone(),
                message: e.to_string(),
            };
            let mut inst = linker.instance(&link.import).map_err(link_err)?;
            for f in &link.functions {
                // Everything a call needs that does not change between calls is built once.
                let site = Arc::new(CallSite {
                    callee: callee.clone(),
                    gate: Gate::new(self.policy.clone(), name, self.recorder.clone()),
                    request: Request::Call {
                        component: link.callee.clone(),
                        interface: link.export.clone(),
                        function: f.clone(),
                    },
                    decided: std::sync::OnceLock::new(),
                    index: callee
                        .sites
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                });
                inst.func_new_async(f, move |store, _ty, params, results| {
                    let site = site.clone();
                    let scope = store.data().scope().clone();
                    Box::new(async move { site.call(&scope, params, results).await })
                })
                .map_err(link_err)?;
            }
        }
        Ok(linker)
    }
}
