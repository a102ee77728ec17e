//! Grants → WASI: builds each component's `WasiCtx` from its policy, and the store limiter.
//!
//! Everything the guest can reach is added here and nowhere else, starting from a context with
//! nothing granted: preopens from the directory handles opened at load, literal and host
//! environment variables, arguments, stdio, and sockets behind a check that asks the one
//! decision function for every address. This module never widens a grant: when in doubt, it
//! denies.

pub(crate) mod body;
pub(crate) mod dns;
pub(crate) mod fs;
pub(crate) mod http;
mod limits;
pub(crate) mod output;
pub(crate) mod sockets;

use std::net::SocketAddr;
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::audit::Auditor;
use crate::authz::{Action, Decision, Request};
use crate::policy::{Access, ComponentPolicy, Input, Output};
use crate::verified::VerifiedPolicy;

pub use limits::{LimitHit, Limiter};
pub use output::OutputExceeded;

/// One decision made while a guest ran, for observers (the CLI prints denials; the audit log
/// records them).
#[derive(Debug, Clone)]
pub struct DecisionEvent {
    /// The component that asked.
    pub component: String,
    /// The action.
    pub action: Action,
    /// The resource, as one line.
    pub resource: String,
    /// The whole request.
    pub request: Request,
    /// The decision.
    pub decision: Decision,
}

/// Receives every decision made on behalf of running guests.
pub type DecisionObserver = Arc<dyn Fn(&DecisionEvent) + Send + Sync>;

/// Decides `request` for `component` from a guest's host call.
///
/// Host calls run on wasmtime's fiber stacks, where Cedar's stack guard cannot measure the
/// stack and would refuse to evaluate; a decision not in the cache is therefore evaluated on
/// a blocking-pool thread with a real stack.
pub(crate) async fn decide_decision(
    policy: Arc<VerifiedPolicy>,
    component: String,
    request: Request,
) -> Decision {
    if let Some(d) = policy.authority().cached(&component, &request) {
        return d;
    }
    match tokio::task::spawn_blocking(move || policy.authority().decide(&component, &request)).await
    {
        Ok(d) => d,
        Err(e) => failed(e.to_string()),
    }
}

/// Like [`decide_decision`], for synchronous host calls: a cache miss is evaluated on a
/// short-lived thread with a real stack, and the caller waits for it.
pub(crate) fn decide_now(policy: &VerifiedPolicy, component: &str, request: &Request) -> Decision {
    if let Some(d) = policy.authority().cached(component, request) {
        return d;
    }
    std::thread::scope(|s| {
        match std::thread::Builder::new()
            .spawn_scoped(s, || policy.authority().decide(component, request))
        {
            Ok(h) => h
                .join()
                .unwrap_or_else(|_| failed("the decision thread panicked".into())),
            Err(e) => failed(e.to_string()),
        }
    })
}

fn failed(why: String) -> Decision {
    Decision::failure(format!("the decision could not be made: {why}"))
}

/// Where every decision goes before it is enforced: the audit log (which, fail-closed, may
/// turn it into a deny), then the host's observer.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub audit: Option<Arc<Auditor>>,
    pub observer: Option<DecisionObserver>,
    /// The observer wants denials only.
    pub denials_only: bool,
}

impl Recorder {
    /// Whether the observer is to see `decision`.
    pub(crate) fn observes(&self, decision: &Decision) -> bool {
        self.observer.is_some() && !(self.denials_only && decision.allowed)
    }

    /// Whether the audit log keeps `decision` (so values for it are worth preparing).
    pub(crate) fn writes(&self, decision: &Decision) -> bool {
        self.audit.as_ref().is_some_and(|a| a.keeps(decision))
    }

    /// Records `decision` and returns the decision to enforce. `sensitive` values (a query
    /// string, call arguments) reach the log only as salted hashes.
    pub(crate) fn record(
        &self,
        policy: &VerifiedPolicy,
        component: &str,
        request: &Request,
        decision: Decision,
        sensitive: &[(&'static str, &[u8])],
    ) -> Decision {
        let decision = match &self.audit {
            Some(a) => a.admit(policy, component, request, decision, sensitive),
            None => decision,
        };
        if let Some(observer) = self.observer.as_ref().filter(|_| self.observes(&decision)) {
            observer(&DecisionEvent {
                component: component.to_owned(),
                action: request.action(),
                resource: request.resource(),
                request: request.clone(),
                decision: decision.clone(),
            });
        }
        decision
    }
}

/// Where the guest's standard streams go when the policy does not close them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdioMode {
    /// The host process's own stdin, stdout and stderr.
    #[default]
    Inherit,
}

/// Builds the WASI context for `component`, exactly as its policy grants.
pub(crate) fn wasi_ctx(
    policy: &Arc<VerifiedPolicy>,
    recorder: &Recorder,
    component: &ComponentPolicy,
    extra_args: &[String],
) -> Result<WasiCtx, wasmtime::Error> {
    let mut b = WasiCtxBuilder::new();

    // argv[0] is the component's name, as `wasmtime run` passes the program name.
    let mut argv = vec![component.name.clone()];
    argv.extend(component.args.iter().cloned());
    argv.extend(extra_args.iter().cloned());
    b.args(&argv);

    for (k, v) in &component.env {
        b.env(k, v);
    }
    for k in &component.env_from_host {
        if let Ok(v) = std::env::var(k) {
            b.env(k, v);
        }
    }

    if component.stdio.stdin == Input::Inherit {
        b.inherit_stdin();
    }
    // stdout and stderr share one `limits.output` budget.
    let budget = output::Budget::new(component.limits.output.bytes());
    if component.stdio.stdout == Output::Inherit {
        b.stdout(output::Metered {
            inner: wasmtime_wasi::cli::stdout(),
            budget: budget.clone(),
        });
    }
    if component.stdio.stderr == Output::Inherit {
        b.stderr(output::Metered {
            inner: wasmtime_wasi::cli::stderr(),
            budget,
        });
    }

    let dirs = policy
        .dirs
        .get(&component.name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (grant, dir) in component.files.iter().zip(dirs) {
        let perms = match grant.access {
            Access::ReadOnly => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        b.preopened_dir(handle_path(dir, &grant.host), &grant.guest, perms)?;
    }

    let net = &component.network;
    b.allow_tcp(!net.connect.is_empty() || !net.bind.is_empty());
    b.allow_udp(!net.udp.is_empty());
    // Lookups are enabled for components with `lookup` grants; each name is then decided by
    // the filter in `dns`.
    b.allow_ip_name_lookup(!net.lookup.is_empty());
    let (p, o, name) = (policy.clone(), recorder.clone(), component.name.clone());
    let has_connect = !net.connect.is_empty();
    let has_udp = !net.udp.is_empty();
    // The check is decided before the future is returned, so it is ready on first poll:
    // wasmtime-wasi's UDP `send` reports success for a check still pending and fails a later
    // call instead, which would tell the guest a refused datagram was sent.
    b.socket_addr_check(move |addr, use_| {
        let ok = socket_allowed(&p, &o, &name, has_connect, has_udp, addr, use_);
        Box::pin(std::future::ready(ok))
    });
    Ok(b.build())
}

/// The path wasmtime-wasi opens a preopen from. On Linux this is the handle opened when the
/// policy loaded (through `/proc/self/fd`), so replacing the directory on disk afterwards
/// cannot redirect the grant.
fn handle_path(dir: &cap_std::fs::Dir, host: &std::path::Path) -> std::path::PathBuf {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd as _;
        let _ = host;
        std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        host.to_owned()
    }
}

fn is_ephemeral(addr: SocketAddr) -> bool {
    addr.ip().is_unspecified() && addr.port() == 0
}

/// Maps wasi:sockets' address checks onto policy requests.
fn socket_allowed(
    policy: &VerifiedPolicy,
    recorder: &Recorder,
    component: &str,
    has_connect: bool,
    has_udp: bool,
    addr: SocketAddr,
    use_: SocketAddrUse,
) -> bool {
    let action = match use_ {
        // Binding the unspecified address with port 0 is the implicit local bind before an
        // outbound connection; it grants nothing by itself.
        SocketAddrUse::TcpBind if is_ephemeral(addr) && has_connect => return true,
        SocketAddrUse::UdpBind if is_ephemeral(addr) && has_udp => return true,
        SocketAddrUse::TcpConnect => Action::NetConnect,
        SocketAddrUse::TcpBind | SocketAddrUse::TcpListen => Action::NetBind,
        // Peers connecting to a listener the policy granted.
        SocketAddrUse::TcpAccept => return true,
        SocketAddrUse::UdpBind | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
            Action::NetUdp
        }
    };
    let request = Request::Socket { action, addr };
    let decision = decide_now(policy, component, &request);
    recorder
        .record(policy, component, &request, decision, &[])
        .allowed
}
