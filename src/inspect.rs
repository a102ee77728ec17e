//! `inspect`: what a component imports and exports, and which imports a policy grants.
//!
//! This reads a component's type only; it never instantiates or runs it.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::policy::{ComponentPolicy, Input, Output};

/// Whether a policy provides an import.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Coverage {
    /// Provided to every component (clocks, random, I/O plumbing).
    Always,
    /// Provided, and what the policy grants through it.
    Granted(String),
    /// Linked, but every use is denied: the policy grants nothing through it.
    Denied(String),
    /// Not provided: instantiation will fail.
    Missing(String),
}

/// One import of a component.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Import {
    /// The import's name, e.g. `wasi:filesystem/preopens@0.2.3`.
    pub name: String,
    /// The policy key that grants it, e.g. `files` (or why none is needed).
    pub key: &'static str,
    /// For an interface of another component (not WASI): its functions, which a `calls`
    /// entry may list.
    pub functions: Vec<String>,
    /// What the policy does with it, when a policy was given.
    pub coverage: Option<Coverage>,
}

/// A component's imports and exports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Inspection {
    /// Imports, in the component's order.
    pub imports: Vec<Import>,
    /// Export names.
    pub exports: Vec<String>,
}

/// Why a component could not be inspected.
#[derive(Debug, thiserror::Error)]
#[error("not a valid WebAssembly component: {0}")]
pub struct InspectError(String);

/// Reads `bytes` as a component and, with `policy`, says how each import is covered.
pub fn inspect(bytes: &[u8], policy: Option<&ComponentPolicy>) -> Result<Inspection, InspectError> {
    let engine = Engine::default();
    let component = Component::new(&engine, bytes).map_err(|e| {
        // wasmparser's messages can span lines (byte arrays); keep the error on one line.
        let text = format!("{e:#}");
        InspectError(text.split_whitespace().collect::<Vec<_>>().join(" "))
    })?;
    let ty = component.component_type();
    let imports = ty
        .imports(&engine)
        .map(|(name, item)| Import {
            name: name.to_owned(),
            key: policy_key(name),
            functions: match item.ty {
                wasmtime::component::types::ComponentItem::ComponentInstance(i)
                    if !name.starts_with("wasi:") =>
                {
                    i.exports(&engine).map(|(f, _)| f.to_owned()).collect()
                }
                _ => Vec::new(),
            },
            coverage: policy.map(|p| coverage(p, name)),
        })
        .collect();
    let exports = ty
        .exports(&engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    Ok(Inspection { imports, exports })
}

/// The policy key that grants an import, or why none is needed.
pub fn policy_key(import: &str) -> &'static str {
    match import.split('@').next().unwrap_or(import) {
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => "files (and cwd)",
        "wasi:sockets/tcp" | "wasi:sockets/tcp-create-socket" => "network.connect, network.bind",
        "wasi:sockets/udp" | "wasi:sockets/udp-create-socket" => "network.udp",
        "wasi:sockets/ip-name-lookup" => "network.lookup",
        "wasi:sockets/network" | "wasi:sockets/instance-network" => "network (any of its keys)",
        "wasi:http/outgoing-handler" => "http",
        "wasi:http/types" => "http (the types of requests and responses)",
        "wasi:cli/environment" => "env, env_from_host, args, cwd",
        "wasi:cli/stdin" | "wasi:cli/stdout" | "wasi:cli/stderr" => "stdio",
        "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr" => {
            "none (always provided; a terminal only behind inherited stdio)"
        }
        "wasi:cli/exit" | "wasi:io/error" | "wasi:io/poll" | "wasi:io/streams" => {
            "none (always provided)"
        }
        "wasi:clocks/monotonic-clock" | "wasi:clocks/wall-clock" => "none (always provided)",
        "wasi:random/random" | "wasi:random/insecure" | "wasi:random/insecure-seed" => {
            "none (always provided)"
        }
        other if other.starts_with("wasi:") => "none: capgate does not provide it",
        _ => "calls",
    }
}

fn count(n: usize, what: &str) -> String {
    match (n, what.strip_suffix('y')) {
        (1, _) => format!("1 {what}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {what}s"),
    }
}

fn granted_or_denied(n: usize, what: &str, key: &str) -> Coverage {
    if n == 0 {
        Coverage::Denied(format!("no `{key}` grant"))
    } else {
        Coverage::Granted(count(n, what))
    }
}

fn coverage(p: &ComponentPolicy, import: &str) -> Coverage {
    let base = import.split('@').next().unwrap_or(import);
    let net = &p.network;
    match base {
        "wasi:io/error"
        | "wasi:io/poll"
        | "wasi:io/streams"
        | "wasi:clocks/monotonic-clock"
        | "wasi:clocks/wall-clock"
        | "wasi:random/random"
        | "wasi:random/insecure"
        | "wasi:random/insecure-seed"
        | "wasi:cli/exit"
        | "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr"
        | "wasi:http/types"
        | "wasi:sockets/network"
        | "wasi:sockets/instance-network" => Coverage::Always,
        "wasi:cli/environment" => Coverage::Granted(format!(
            "argv[0] and {}, {}",
            count(p.args.len(), "argument"),
            count(p.env.len() + p.env_from_host.len(), "environment variable")
        )),
        "wasi:cli/stdin" => match p.stdio.stdin {
            Input::Closed => Coverage::Denied("stdin is closed".into()),
            Input::Inherit => Coverage::Granted("stdin inherited".into()),
        },
        "wasi:cli/stdout" | "wasi:cli/stderr" => {
            let which = if base.ends_with("stdout") {
                p.stdio.stdout
            } else {
                p.stdio.stderr
            };
            match which {
                Output::Inherit => Coverage::Granted("inherited".into()),
                Output::Closed => Coverage::Denied("closed".into()),
            }
        }
        "wasi:filesystem/types" | "wasi:filesystem/preopens" => {
            granted_or_denied(p.files.len(), "preopened directory", "files")
        }
        "wasi:sockets/tcp" | "wasi:sockets/tcp-create-socket" => granted_or_denied(
            net.connect.len() + net.bind.len(),
            "TCP grant",
            "network.connect` or `network.bind",
        ),
        "wasi:sockets/udp" | "wasi:sockets/udp-create-socket" => {
            granted_or_denied(net.udp.len(), "UDP grant", "network.udp")
        }
        "wasi:sockets/ip-name-lookup" => {
            granted_or_denied(net.lookup.len(), "lookup grant", "network.lookup")
        }
        "wasi:http/outgoing-handler" => granted_or_denied(p.http.len(), "HTTP grant", "http"),
        other if other.starts_with("wasi:") => {
            Coverage::Missing("capgate does not provide this WASI interface".into())
        }
        _ => {
            let calls: Vec<&str> = p
                .calls
                .iter()
                .filter(|c| c.interface == import || c.interface == base)
                .map(|c| c.component.as_str())
                .collect();
            if calls.is_empty() {
                Coverage::Missing("no `calls` entry names this interface".into())
            } else {
                Coverage::Granted(format!("linked to {}", calls.join(", ")))
            }
        }
    }
}

/// A starter policy for the component `bytes` (read from `file`, as the policy will name it):
/// valid policy YAML in which every capability the component's imports could use is present
/// but commented out, with the key that grants it and a placeholder, so nothing is granted
/// until someone uncomments it. The artifact is pinned by its SHA-256. `name` is the policy's
/// and the component's name.
pub fn suggest(bytes: &[u8], file: &str, name: &str) -> Result<String, InspectError> {
    let found = inspect(bytes, None)?;
    let has = |prefix: &str| found.imports.iter().any(|i| i.name.starts_with(prefix));
    let digest = capgate_signing::Sha256::of(bytes);
    let mut y = format!(
        "# A starter policy for `{file}`, from its imports. Nothing is granted until you\n\
         # uncomment it: fill in the placeholders, keep what the component needs, then run\n\
         # `capgate policy check` and sign it.\n\
         capgate: 1\n\
         name: {name}\n\
         version: 1\n\
         components:\n  {name}:\n    component: {file}\n    sha256: {digest}\n"
    );
    let mut say = |lines: &[&str]| {
        for l in lines {
            y.push_str("    ");
            y.push_str(l);
            y.push('\n');
        }
    };
    if has("wasi:filesystem/") {
        say(&[
            "# wasi:filesystem: directories it may open (read-only unless it must write).",
            "# files:",
            "#   - { host: ./data, guest: /data, access: read-only }",
            "# cwd: /data",
        ]);
    }
    if has("wasi:cli/environment") {
        say(&[
            "# wasi:cli/environment: its arguments and environment variables.",
            "# args: [--flag]",
            "# env: { KEY: value }",
            "# env_from_host: [HOME]",
        ]);
    }
    if has("wasi:cli/stdin") || has("wasi:cli/stdout") || has("wasi:cli/stderr") {
        say(&[
            "# wasi:cli/stdin, stdout, stderr: stdin is closed and output inherited unless you say.",
            "# stdio: { stdin: inherit, stdout: inherit, stderr: inherit }",
        ]);
    }
    let tcp = has("wasi:sockets/tcp");
    let udp = has("wasi:sockets/udp");
    let lookup = has("wasi:sockets/ip-name-lookup");
    if tcp || udp || lookup {
        say(&[
            "# wasi:sockets: addresses (not names), CIDR ranges and port ranges.",
            "# network:",
        ]);
        if tcp {
            say(&[
                "#   connect: [tcp://203.0.113.10:443]",
                "#   bind: [tcp://127.0.0.1:8080]",
            ]);
        }
        if udp {
            say(&["#   udp: [udp://203.0.113.53:53]"]);
        }
        if lookup {
            say(&["#   lookup: [api.example.com]"]);
        }
    }
    if has("wasi:http/outgoing-handler") {
        say(&[
            "# wasi:http/outgoing-handler: outbound requests, by scheme, host, path prefix and method.",
            "# http:",
            "#   - https://api.example.com/v1/",
            "#   - { url: https://hooks.example.com/, methods: [POST] }",
        ]);
    }
    let links: Vec<&Import> = found.imports.iter().filter(|i| i.key == "calls").collect();
    if !links.is_empty() {
        say(&[
            "# Other components' interfaces: each needs a `calls` entry naming the component",
            "# (defined in this policy) that provides it, and the functions it may call.",
            "# calls:",
        ]);
        for l in links {
            let base = l.name.split('@').next().unwrap_or(&l.name);
            y.push_str(&format!(
                "    #   - {{ component: PROVIDER, interface: {base}, functions: [{}] }}\n",
                l.functions.join(", ")
            ));
        }
    }
    y.push_str("    limits: { timeout: 60s, memory: 256MiB }\n");
    Ok(y)
}
