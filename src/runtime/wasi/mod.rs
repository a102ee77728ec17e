//! Grants → WASI: builds each component's `WasiCtx` from its policy, and the adapters that
//! stand in front of wasmtime-wasi.
//!
//! Everything the guest can reach is added here and nowhere else, starting from a context with
//! nothing granted: preopens from the directory handles opened at load, literal and host
//! environment variables, arguments, stdio, and sockets behind a check that asks the
//! component's [`Gate`] for every address. Every adapter here decides through the gate and
//! only through it. This module never widens a grant: when in doubt, it denies.

pub(crate) mod body;
pub(crate) mod dns;
pub(crate) mod fs;
pub(crate) mod http;
pub(crate) mod output;
pub(crate) mod sockets;

use std::net::SocketAddr;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::authz::{Action, Request};
use crate::gate::Gate;
use crate::policy::{Access, ComponentPolicy, Input, Output};

/// Builds the WASI context for `component`, exactly as its policy grants.
pub(crate) fn wasi_ctx(
    gate: &Gate,
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

    let dirs = gate
        .policy()
        .dirs
        .get(&component.name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (grant, dir) in component.files.iter().zip(dirs) {
        let perms = match grant.access {
            Access::ReadOnly => FsPerms::ReadOnly,
            Access::ReadWrite => FsPerms::ReadWrite,
        };
        b.preopened_dir(handle_path(dir, &grant.host), &grant.preopen, perms)?;
    }
    if let Some(cwd) = &component.cwd {
        b.initial_cwd(cwd);
    }

    let net = &component.network;
    b.allow_tcp(!net.connect.is_empty() || !net.bind.is_empty());
    b.allow_udp(!net.udp.is_empty());
    // Lookups are enabled for components with `lookup` grants; each name is then decided by
    // the filter in `dns`.
    b.allow_ip_name_lookup(!net.lookup.is_empty());
    let gate = gate.clone();
    let has_connect = !net.connect.is_empty();
    let has_udp = !net.udp.is_empty();
    // The check is decided before the future is returned, so it is ready on first poll:
    // wasmtime-wasi's UDP `send` reports success for a check still pending and fails a later
    // call instead, which would tell the guest a refused datagram was sent.
    b.socket_addr_check(move |addr, use_| {
        let ok = socket_allowed(&gate, has_connect, has_udp, addr, use_);
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
    gate: &Gate,
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
    gate.decide_blocking(&request).allowed
}
