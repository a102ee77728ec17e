//! Writing the learned policy: one YAML entry per component, each grant with its evidence.

use std::fmt::Write as _;
use std::path::Path;

use super::Seen;
use crate::policy::{Access, AuditLevel, ComponentPolicy, Durability, Input, OnFailure, Output};
use crate::policy::{Limits, Policy};

/// A string as a YAML scalar: double-quoted, escaped as JSON (which YAML reads the same).
pub(super) fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `path` relative to `base` (canonical) when it lies below it, else as it is.
pub(super) fn shown(path: &Path, base: &Path) -> String {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    match real.strip_prefix(base) {
        Ok(r) if r.as_os_str().is_empty() => ".".into(),
        Ok(r) => r.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

pub(super) fn audit_section(p: &Policy, rel: &dyn Fn(&Path) -> String) -> String {
    let a = &p.audit;
    let mut parts = vec![format!(
        "level: {}",
        match a.level {
            AuditLevel::Deny => "deny",
            AuditLevel::All => "all",
        }
    )];
    if let Some(log) = &a.log {
        parts.push(format!("log: {}", q(&rel(log))));
    }
    if a.durability != Durability::default() {
        parts.push(format!(
            "durability: {}",
            match a.durability {
                Durability::Always => "always",
                _ => "batch",
            }
        ));
    }
    if a.on_failure != OnFailure::default() {
        parts.push(format!(
            "on_failure: {}",
            match a.on_failure {
                OnFailure::Continue => "continue",
                _ => "fail-closed",
            }
        ));
    }
    if a.checkpoint_every != crate::policy::AuditSpec::DEFAULT_CHECKPOINT_EVERY {
        parts.push(format!("checkpoint_every: {}", a.checkpoint_every));
    }
    if let Some(r) = a.rotate {
        parts.push(format!("rotate: {r}"));
    }
    let note = if a.level == AuditLevel::All {
        "  # `level: deny` keeps only denials, once learning is over"
    } else {
        ""
    };
    format!("audit: {{ {} }}{note}\n", parts.join(", "))
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// One component's entry.
pub(super) fn component(
    y: &mut String,
    name: &str,
    c: &ComponentPolicy,
    seen: Option<&Seen>,
    rel: &dyn Fn(&Path) -> String,
) {
    let empty = Seen::default();
    let seen = seen.unwrap_or(&empty);
    let _ = writeln!(y, "  {name}:");
    let _ = writeln!(y, "    component: {}", q(&rel(&c.artifact)));
    // Pinned to the artifact the records were made with, when they agree on one.
    let pin = match (&c.sha256, seen.sha256.len()) {
        (Some(s), _) => Some(s.to_string()),
        (None, 1) => seen.sha256.iter().next().cloned(),
        (None, _) => None,
    };
    if let Some(pin) = pin {
        let _ = writeln!(y, "    sha256: {pin}");
    }
    if !c.signed_by.is_empty() {
        let keys: Vec<String> = c.signed_by.iter().map(|k| q(k)).collect();
        let _ = writeln!(y, "    signed_by: [{}]", keys.join(", "));
    }
    if !c.env.is_empty() {
        let vars: Vec<String> = c
            .env
            .iter()
            .map(|(k, v)| format!("{}: {}", q(k), q(v)))
            .collect();
        let _ = writeln!(y, "    env: {{ {} }}", vars.join(", "));
    }
    if !c.env_from_host.is_empty() {
        let vars: Vec<String> = c.env_from_host.iter().map(|k| q(k)).collect();
        let _ = writeln!(y, "    env_from_host: [{}]", vars.join(", "));
    }
    if !c.args.is_empty() {
        let args: Vec<String> = c.args.iter().map(|a| q(a)).collect();
        let _ = writeln!(y, "    args: [{}]", args.join(", "));
    }
    if let Some(cwd) = &c.cwd {
        let _ = writeln!(y, "    cwd: {}", q(cwd));
    }
    if c.stdio != crate::policy::Stdio::default() {
        let out = |o: Output| match o {
            Output::Inherit => "inherit",
            Output::Closed => "closed",
        };
        let _ = writeln!(
            y,
            "    stdio: {{ stdin: {}, stdout: {}, stderr: {} }}",
            match c.stdio.stdin {
                Input::Closed => "closed",
                Input::Inherit => "inherit",
            },
            out(c.stdio.stdout),
            out(c.stdio.stderr)
        );
    }
    files(y, c, seen, rel);
    network(y, c, seen);
    http(y, c, seen);
    calls(y, c, seen);
    limits(y, &c.limits);
    if c.reusable {
        let _ = writeln!(y, "    reusable: true");
    }
}

fn files(y: &mut String, c: &ComponentPolicy, seen: &Seen, rel: &dyn Fn(&Path) -> String) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for f in &c.files {
        let Some(paths) = seen.files.get(&f.guest) else {
            dropped.push(format!("{} (`{}`)", f.id, f.guest));
            continue;
        };
        let (reads, writes) = paths
            .values()
            .fold((0, 0), |(r, w), (pr, pw)| (r + pr, w + pw));
        let mut guest = f.guest.clone();
        let mut host = f.host.clone();
        // Only a mount the guest names by its absolute path can move without the guest
        // noticing (a relative name is how the guest finds it); and only one it cannot
        // write: in a writable mount the guest could replace the directory below with a
        // symlink before the learned policy is loaded, and the mount would follow it.
        if f.preopen == f.guest && f.access == Access::ReadOnly {
            let deepest = deepest_dir(&f.guest, &f.host, paths.keys());
            let holds_cwd = c
                .cwd
                .as_deref()
                .is_some_and(|cwd| !within(cwd, &deepest) && within(cwd, &f.guest));
            if deepest != f.guest && !holds_cwd {
                let below = deepest[f.guest.len()..].trim_start_matches('/');
                host = f.host.join(below);
                guest = deepest;
            }
        }
        let access = if writes > 0 {
            "read-write"
        } else {
            "read-only"
        };
        let preopen = if guest == f.guest { &f.preopen } else { &guest };
        kept.push(format!(
            "      - {{ host: {}, guest: {}, access: {access} }}  # {}: {}, {}{}",
            q(&rel(&host)),
            q(preopen),
            plural(reads + writes, "record"),
            plural(reads, "read"),
            plural(writes, "write"),
            if f.access == Access::ReadWrite && writes == 0 {
                " (was read-write)"
            } else {
                ""
            }
        ));
    }
    if !kept.is_empty() {
        y.push_str("    files:\n");
        for k in kept {
            y.push_str(&k);
            y.push('\n');
        }
    }
    for d in dropped {
        let _ = writeln!(y, "    # dropped: {d}, no allowed record");
    }
}

/// Is `path` the directory `dir` or below it?
pub(super) fn within(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// The deepest directory under `mount` (a guest path, mounted from `host`) that holds every
/// one of `paths`: a path that is a directory on the host stands for itself, any other for
/// its parent.
fn deepest_dir<'a>(mount: &str, host: &Path, paths: impl Iterator<Item = &'a String>) -> String {
    let mut common: Option<Vec<String>> = None;
    for p in paths {
        let Some(below) = p.strip_prefix(mount) else {
            return mount.to_owned();
        };
        let below = below.trim_start_matches('/');
        let mut segs: Vec<String> = below
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let on_host = host.join(below);
        let is_dir = std::fs::symlink_metadata(&on_host).is_ok_and(|m| m.is_dir());
        if !is_dir {
            segs.pop();
        }
        common = Some(shared_start(common, segs));
    }
    let segs = common.unwrap_or_default();
    if segs.is_empty() {
        return mount.to_owned();
    }
    format!("{}/{}", mount.trim_end_matches('/'), segs.join("/"))
}

fn network(y: &mut String, c: &ComponentPolicy, seen: &Seen) {
    let kinds = [
        ("connect", &seen.connect, &c.network.connect),
        ("bind", &seen.bind, &c.network.bind),
        ("udp", &seen.udp, &c.network.udp),
    ];
    // Comments alone under `network:` would leave it empty (null), so what was dropped is
    // said after the section.
    let (mut body, mut dropped) = (String::new(), String::new());
    let lookup = [("lookup", &seen.lookup, c.network.lookup.is_empty())];
    let kinds = kinds
        .into_iter()
        .map(|(k, used, granted)| (k, used, granted.is_empty()))
        .chain(lookup);
    for (key, used, none_granted) in kinds {
        if !used.is_empty() {
            let _ = writeln!(body, "      {key}:");
            for (what, n) in used {
                let _ = writeln!(body, "        - {}  # {}", q(what), plural(*n, "record"));
            }
        } else if !none_granted {
            let _ = writeln!(
                dropped,
                "    # dropped: every `network.{key}` grant, no allowed record"
            );
        }
    }
    if !body.is_empty() {
        y.push_str("    network:\n");
        y.push_str(&body);
    }
    y.push_str(&dropped);
}

fn http(y: &mut String, c: &ComponentPolicy, seen: &Seen) {
    if seen.http.is_empty() {
        if !c.http.is_empty() {
            y.push_str("    # dropped: every `http` grant, no allowed record\n");
        }
        return;
    }
    y.push_str("    http:\n");
    for ((_grant, scheme, host, port), h) in &seen.http {
        let prefix = common_prefix(h.paths.keys());
        let default_port = matches!((scheme.as_str(), port), ("http", 80) | ("https", 443));
        let authority = if default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let url = format!(
            "{scheme}://{authority}{}",
            if prefix == "/" { "" } else { &prefix }
        );
        // Methods, like every string a guest chose, are quoted: none can add YAML of its own.
        let methods: Vec<String> = h.methods.iter().map(|m| q(m)).collect();
        let n: u64 = h.paths.values().sum();
        let _ = writeln!(
            y,
            "      - {{ url: {}, methods: [{}] }}  # {}, {}",
            q(&url),
            methods.join(", "),
            plural(n, "record"),
            plural(h.paths.len() as u64, "distinct path")
        );
    }
}

/// The longest prefix, in whole segments, of every path (`/` when they share none).
fn common_prefix<'a>(paths: impl Iterator<Item = &'a String>) -> String {
    let mut common: Option<Vec<&str>> = None;
    for p in paths {
        let segs: Vec<&str> = p
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        common = Some(shared_start(common, segs));
    }
    format!("/{}", common.unwrap_or_default().join("/"))
}

/// The segments `common` (none yet: all of `segs`) and `segs` start with.
fn shared_start<T: PartialEq>(common: Option<Vec<T>>, segs: Vec<T>) -> Vec<T> {
    match common {
        None => segs,
        Some(c) => c
            .into_iter()
            .zip(segs)
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect(),
    }
}

fn calls(y: &mut String, c: &ComponentPolicy, seen: &Seen) {
    if seen.calls.is_empty() {
        if !c.calls.is_empty() {
            y.push_str("    # dropped: every `calls` grant, no allowed record\n");
        }
        return;
    }
    y.push_str("    calls:\n");
    for ((callee, iface), functions) in &seen.calls {
        let names: Vec<String> = functions.keys().map(|f| q(f)).collect();
        let n: u64 = functions.values().sum();
        let _ = writeln!(
            y,
            "      - {{ component: {}, interface: {}, functions: [{}] }}  # {}",
            q(callee),
            q(iface),
            names.join(", "),
            plural(n, "record")
        );
    }
}

fn limits(y: &mut String, l: &Limits) {
    let d = Limits::default();
    let mut parts = Vec::new();
    if l.memory != d.memory {
        parts.push(format!("memory: {}", l.memory));
    }
    if let Some(t) = l.timeout {
        parts.push(format!("timeout: {t}"));
    }
    if let Some(f) = l.fuel {
        parts.push(format!("fuel: {f}"));
    }
    for (key, v, dv) in [
        ("instances", l.instances, d.instances),
        ("files", l.files, d.files),
        ("sockets", l.sockets, d.sockets),
    ] {
        if v != dv {
            parts.push(format!("{key}: {v}"));
        }
    }
    if l.body != d.body {
        parts.push(format!("body: {}", l.body));
    }
    if l.output != d.output {
        parts.push(format!("output: {}", l.output));
    }
    if !parts.is_empty() {
        let _ = writeln!(y, "    limits: {{ {} }}", parts.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_whole_segments() {
        let paths = ["/v1/items/3".to_owned(), "/v1/users".to_owned()];
        assert_eq!(common_prefix(paths.iter()), "/v1");
        let paths = ["/v1x".to_owned(), "/v1/users".to_owned()];
        assert_eq!(common_prefix(paths.iter()), "/");
        let paths = ["/a/b?q=1".to_owned()];
        assert_eq!(common_prefix(paths.iter()), "/a/b");
    }

    #[test]
    fn within_is_by_whole_components() {
        assert!(within("/data/x", "/data"));
        assert!(within("/data", "/data"));
        assert!(!within("/database", "/data"));
        assert!(within("/anything", "/"));
    }
}
