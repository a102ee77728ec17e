//! One component's grants and settings, old against new.

use std::collections::{BTreeMap, BTreeSet};

use super::{Effect, Out};
use crate::policy::{Access, ComponentPolicy};

/// `c` with no grant, environment or arguments: what a new component is compared against.
pub(super) fn empty_like(c: &ComponentPolicy) -> ComponentPolicy {
    let mut e = c.clone();
    e.files.clear();
    e.network = Default::default();
    e.http.clear();
    e.calls.clear();
    e.env.clear();
    e.env_from_host.clear();
    e.args.clear();
    e
}

/// Each grant's id with what it grants, in order.
pub(super) fn ids(c: &ComponentPolicy) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for f in &c.files {
        v.push((
            f.id.to_string(),
            format!("{} {:?} {}", f.guest, f.access, f.host.display()),
        ));
    }
    for list in [&c.network.connect, &c.network.bind, &c.network.udp] {
        v.extend(
            list.iter()
                .map(|g| (g.id.to_string(), g.pattern.to_string())),
        );
    }
    for g in &c.network.lookup {
        v.push((g.id.to_string(), g.pattern.to_string()));
    }
    for g in &c.http {
        v.push((g.id.to_string(), format!("{} {:?}", g.url, g.methods)));
    }
    for g in &c.calls {
        v.push((
            g.id.to_string(),
            format!("{} {} {:?}", g.component, g.interface, g.functions),
        ));
    }
    v
}

/// `N grants` of a component.
pub(super) fn summary(c: &ComponentPolicy) -> String {
    let n = c.grant_count();
    format!("{n} grant{}", if n == 1 { "" } else { "s" })
}

pub(super) fn component(out: &mut Out<'_>, a: &ComponentPolicy, b: &ComponentPolicy) {
    identity(out, a, b);
    files(out, a, b);
    for (key, old, new) in [
        ("network.connect", &a.network.connect, &b.network.connect),
        ("network.bind", &a.network.bind, &b.network.bind),
        ("network.udp", &a.network.udp, &b.network.udp),
    ] {
        let text = |v: &Vec<crate::policy::SocketGrant>| {
            v.iter()
                .map(|g| g.pattern.to_string())
                .collect::<BTreeSet<_>>()
        };
        sockets(out, key, &text(old), &text(new));
    }
    let names = |v: &Vec<crate::policy::LookupGrant>| {
        v.iter()
            .map(|g| g.pattern.to_string())
            .collect::<BTreeSet<_>>()
    };
    sets(
        out,
        "network.lookup",
        &names(&a.network.lookup),
        &names(&b.network.lookup),
    );
    http(out, a, b);
    calls(out, a, b);
    super::limits(out, &a.limits, &b.limits);
}

fn identity(out: &mut Out<'_>, a: &ComponentPolicy, b: &ComponentPolicy) {
    if a.artifact != b.artifact {
        out.push(
            "component",
            Effect::Changed,
            format!(
                "artifact {} → {}",
                a.artifact.display(),
                b.artifact.display()
            ),
        );
    }
    let pin = |p: &Option<capgate_signing::Sha256>| p.map_or("none".to_owned(), |s| s.to_string());
    if a.sha256 != b.sha256 {
        // A pin added admits one artifact where any signed one was admitted.
        let effect = match (a.sha256, b.sha256) {
            (_, None) => Effect::Widened,
            (None, Some(_)) => Effect::Narrowed,
            _ => Effect::Changed,
        };
        out.push(
            "sha256",
            effect,
            format!("pin {} → {}", pin(&a.sha256), pin(&b.sha256)),
        );
    }
    if a.signed_by != b.signed_by {
        out.push(
            "signed_by",
            Effect::Changed,
            format!(
                "[{}] → [{}]",
                a.signed_by.join(", "),
                b.signed_by.join(", ")
            ),
        );
    }
    let env = |c: &ComponentPolicy| {
        c.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(
                c.env_from_host
                    .iter()
                    .map(|k| format!("{k} (from the host)")),
            )
            .collect::<BTreeSet<_>>()
    };
    sets(out, "env", &env(a), &env(b));
    if a.args != b.args {
        out.push(
            "args",
            Effect::Changed,
            format!("{:?} → {:?}", a.args, b.args),
        );
    }
    if a.cwd != b.cwd {
        out.push("cwd", Effect::Changed, format!("{:?} → {:?}", a.cwd, b.cwd));
    }
    if a.stdio != b.stdio {
        out.push(
            "stdio",
            Effect::Changed,
            format!("{:?} → {:?}", a.stdio, b.stdio).to_lowercase(),
        );
    }
    if a.reusable != b.reusable {
        let effect = if b.reusable {
            Effect::Widened
        } else {
            Effect::Narrowed
        };
        out.push(
            "reusable",
            effect,
            format!("{} → {}", a.reusable, b.reusable),
        );
    }
}

fn files(out: &mut Out<'_>, a: &ComponentPolicy, b: &ComponentPolicy) {
    fn by_guest(c: &ComponentPolicy) -> BTreeMap<String, &crate::policy::FileGrant> {
        c.files.iter().map(|f| (f.guest.clone(), f)).collect()
    }
    let (old, new) = (by_guest(a), by_guest(b));
    let access = |x: Access| match x {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    };
    for (guest, f) in &new {
        match old.get(guest) {
            None => out.push(
                "files",
                Effect::Added,
                format!("{guest} ({}) from {}", access(f.access), f.host.display()),
            ),
            Some(o) => {
                if o.host != f.host {
                    out.push(
                        "files",
                        Effect::Changed,
                        format!("{guest}: host {} → {}", o.host.display(), f.host.display()),
                    );
                }
                if o.access != f.access {
                    let effect = if f.access == Access::ReadWrite {
                        Effect::Widened
                    } else {
                        Effect::Narrowed
                    };
                    out.push(
                        "files",
                        effect,
                        format!("{guest}: {} → {}", access(o.access), access(f.access)),
                    );
                }
            }
        }
    }
    for (guest, f) in &old {
        if !new.contains_key(guest) {
            out.push(
                "files",
                Effect::Removed,
                format!("{guest} ({})", access(f.access)),
            );
        }
    }
}

/// Added and removed members of a set of patterns.
fn sets(out: &mut Out<'_>, key: &str, old: &BTreeSet<String>, new: &BTreeSet<String>) {
    for n in new.difference(old) {
        out.push(key, Effect::Added, n.clone());
    }
    for o in old.difference(new) {
        out.push(key, Effect::Removed, o.clone());
    }
}

/// A port pattern's range (`*` is every port).
fn ports(text: &str) -> Option<(u16, u16)> {
    if text == "*" {
        return Some((0, u16::MAX));
    }
    match text.split_once('-') {
        Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
        None => text.parse().ok().map(|p| (p, p)),
    }
}

/// `scheme://host` and the port range of a socket pattern's text.
fn split_socket(p: &str) -> Option<(&str, (u16, u16))> {
    let (host, port) = p.rsplit_once(':')?;
    Some((host, ports(port)?))
}

/// Socket patterns: a pattern for the same host whose port range grew or shrank is widened
/// or narrowed; anything else is added or removed.
fn sockets(out: &mut Out<'_>, key: &str, old: &BTreeSet<String>, new: &BTreeSet<String>) {
    let mut paired_old = BTreeSet::new();
    for n in new.difference(old) {
        let mine = split_socket(n);
        let twin = old.difference(new).find(|o| {
            !paired_old.contains(*o)
                && match (mine, split_socket(o)) {
                    (Some((h, _)), Some((oh, _))) => h == oh,
                    _ => false,
                }
        });
        match (twin, mine) {
            (Some(o), Some((_, (lo, hi)))) => {
                paired_old.insert(o.clone());
                let (olo, ohi) = split_socket(o).map_or((0, 0), |(_, r)| r);
                let effect = if lo <= olo && hi >= ohi {
                    Effect::Widened
                } else if lo >= olo && hi <= ohi {
                    Effect::Narrowed
                } else {
                    Effect::Changed
                };
                out.push(key, effect, format!("{o} → {n}"));
            }
            _ => out.push(key, Effect::Added, n.clone()),
        }
    }
    for o in old.difference(new) {
        if !paired_old.contains(o) {
            out.push(key, Effect::Removed, o.clone());
        }
    }
}

/// Methods as a set; `None` (every method) is `None`.
fn method_text(m: &Option<Vec<String>>) -> String {
    m.as_ref().map_or("every method".into(), |v| v.join(", "))
}

/// Does the set `b` include `a` (`None` is everything)?
fn includes(b: &Option<Vec<String>>, a: &Option<Vec<String>>) -> bool {
    match (b, a) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(a)) => a.iter().all(|x| b.contains(x)),
    }
}

fn http(out: &mut Out<'_>, a: &ComponentPolicy, b: &ComponentPolicy) {
    // Paired by scheme, host and port: the path prefix and the methods may move.
    let key = |g: &crate::policy::HttpGrant| {
        let t = g.url.to_string();
        let p = g.url.path();
        let origin = if p == "/" {
            t.clone()
        } else {
            t[..t.len() - p.len()].to_owned()
        };
        (origin, p.to_owned(), g.methods.clone())
    };
    let old: Vec<_> = a.http.iter().map(key).collect();
    let new: Vec<_> = b.http.iter().map(key).collect();
    let mut used = vec![false; old.len()];
    for n in &new {
        if old.contains(n) {
            if let Some(i) = old.iter().position(|o| o == n) {
                used[i] = true;
            }
            continue;
        }
        let twin = old
            .iter()
            .enumerate()
            .find(|(i, o)| !used[*i] && !new.contains(o) && o.0 == n.0);
        let shown = |g: &(String, String, Option<Vec<String>>)| {
            let path = if g.1 == "/" { "" } else { &g.1 };
            format!("{}{path} ({})", g.0, method_text(&g.2))
        };
        match twin {
            Some((i, o)) => {
                used[i] = true;
                let within = |prefix: &str, path: &str| {
                    prefix == "/"
                        || path == prefix
                        || path
                            .strip_prefix(prefix.trim_end_matches('/'))
                            .is_some_and(|r| r.starts_with('/'))
                };
                let wider = within(&n.1, &o.1) && includes(&n.2, &o.2);
                let narrower = within(&o.1, &n.1) && includes(&o.2, &n.2);
                let effect = match (wider, narrower) {
                    (true, _) => Effect::Widened,
                    (false, true) => Effect::Narrowed,
                    _ => Effect::Changed,
                };
                out.push("http", effect, format!("{} → {}", shown(o), shown(n)));
            }
            None => out.push("http", Effect::Added, shown(n)),
        }
    }
    for (i, o) in old.iter().enumerate() {
        if !used[i] && !new.contains(o) {
            let path = if o.1 == "/" { "" } else { &o.1 };
            out.push(
                "http",
                Effect::Removed,
                format!("{}{path} ({})", o.0, method_text(&o.2)),
            );
        }
    }
}

fn calls(out: &mut Out<'_>, a: &ComponentPolicy, b: &ComponentPolicy) {
    // Entries for the same callee and interface add up, as the runtime adds them up: every
    // function of them is allowed (`None` is every function).
    let by_target = |c: &ComponentPolicy| {
        let mut m: BTreeMap<(String, String), Option<Vec<String>>> = BTreeMap::new();
        for g in &c.calls {
            let key = (g.component.clone(), g.interface.clone());
            let merged = match (m.remove(&key), &g.functions) {
                (None, f) => f.clone(),
                (Some(None), _) | (Some(Some(_)), None) => None,
                (Some(Some(mut a)), Some(b)) => {
                    for f in b {
                        if !a.contains(f) {
                            a.push(f.clone());
                        }
                    }
                    Some(a)
                }
            };
            m.insert(key, merged);
        }
        m
    };
    let (old, new) = (by_target(a), by_target(b));
    let fns =
        |f: &Option<Vec<String>>| f.as_ref().map_or("every function".into(), |v| v.join(", "));
    for ((callee, iface), f) in &new {
        let target = format!("{callee} {iface}");
        match old.get(&(callee.clone(), iface.clone())) {
            None => out.push("calls", Effect::Added, format!("{target}: {}", fns(f))),
            Some(o) if o != f => {
                let effect = match (includes(f, o), includes(o, f)) {
                    (true, _) => Effect::Widened,
                    (false, true) => Effect::Narrowed,
                    _ => Effect::Changed,
                };
                let added: Vec<&String> = match (f, o) {
                    (Some(f), Some(o)) => f.iter().filter(|x| !o.contains(x)).collect(),
                    _ => Vec::new(),
                };
                let detail = if added.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (new: {})",
                        added
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                out.push(
                    "calls",
                    effect,
                    format!("{target}: {} → {}{detail}", fns(o), fns(f)),
                );
            }
            Some(_) => {}
        }
    }
    for ((callee, iface), f) in &old {
        if !new.contains_key(&(callee.clone(), iface.clone())) {
            out.push(
                "calls",
                Effect::Removed,
                format!("{callee} {iface}: {}", fns(f)),
            );
        }
    }
}
