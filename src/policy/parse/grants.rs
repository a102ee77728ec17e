//! The grants of one component: files, sockets, DNS names, outbound HTTP and calls. Each
//! function validates one list of the YAML and names the entry (`app.http[1]`) in its errors.

use std::collections::BTreeSet;
use std::path::Path;

use serde_saphyr::Spanned;

use super::{Ctx, RawCall, RawComponent, RawHttp, is_ident};
use crate::policy::error::PolicyError;
use crate::policy::model::{
    CallGrant, FileGrant, GrantId, HttpGrant, LookupGrant, Network, Origin, SocketGrant,
};
use crate::policy::pattern::{NamePattern, SocketPattern, Transport, UrlPattern};

/// `files`: preopened directories, each mounted once at a normalised absolute guest path.
pub(super) fn files(
    cx: &Ctx<'_>,
    dir: &Path,
    name: &str,
    rc: &RawComponent,
) -> Result<Vec<FileGrant>, PolicyError> {
    let mut files = Vec::new();
    let mut guests = BTreeSet::new();
    for (i, f) in rc.files.iter().enumerate() {
        let field = format!("{name}.files[{i}]");
        let guest = guest_path(&f.value.guest)
            .map_err(|(m, h)| cx.err(&f.referenced, format!("{field}: {m}"), h))?;
        if !guests.insert(guest.clone()) {
            return Err(cx.err(
                &f.referenced,
                format!("{field}: guest path `{guest}` is mounted twice"),
                None,
            ));
        }
        files.push(FileGrant {
            id: GrantId::new(name, "files", i),
            // Resolved against the filesystem (and checked to be a directory) when the policy
            // is loaded; parsing reads no file.
            host: dir.join(&f.value.host),
            guest,
            access: f.value.access,
            at: Origin::of(&f.referenced),
        });
    }

    Ok(files)
}

/// `network`: socket patterns per use, and DNS names.
pub(super) fn network(cx: &Ctx<'_>, name: &str, rc: &RawComponent) -> Result<Network, PolicyError> {
    Ok(Network {
        connect: sockets(
            cx,
            name,
            "network.connect",
            &rc.network.connect,
            Transport::Tcp,
        )?,
        bind: sockets(cx, name, "network.bind", &rc.network.bind, Transport::Tcp)?,
        udp: sockets(cx, name, "network.udp", &rc.network.udp, Transport::Udp)?,
        lookup: rc
            .network
            .lookup
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let pattern: NamePattern = s.value.parse().map_err(|e| {
                    cx.pattern(&s.referenced, &format!("{name}.network.lookup[{i}]"), e)
                })?;
                Ok(LookupGrant {
                    id: GrantId::new(name, "network.lookup", i),
                    pattern,
                })
            })
            .collect::<Result<_, PolicyError>>()?,
    })
}

/// `http`: URL patterns with optional methods.
pub(super) fn http(
    cx: &Ctx<'_>,
    name: &str,
    rc: &RawComponent,
) -> Result<Vec<HttpGrant>, PolicyError> {
    let mut http = Vec::new();
    for (i, h) in rc.http.iter().enumerate() {
        let field = format!("{name}.http[{i}]");
        let (url, methods) = match &h.value {
            RawHttp::Url(u) => (u, None),
            RawHttp::Full(f) => (&f.url, f.methods.as_ref()),
        };
        let url: UrlPattern = url
            .parse()
            .map_err(|e| cx.pattern(&h.referenced, &field, e))?;
        let methods = match methods {
            None => None,
            Some(ms) if ms.is_empty() => {
                return Err(cx.err(
                    &h.referenced,
                    format!("{field}: `methods` is empty"),
                    Some("omit `methods` to allow every method".into()),
                ));
            }
            Some(ms) => {
                for m in ms {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(cx.err(
                            &h.referenced,
                            format!("{field}: `{m}` is not an HTTP method"),
                            Some(format!(
                                "methods are uppercase: `{}`",
                                m.to_ascii_uppercase()
                            )),
                        ));
                    }
                }
                Some(ms.clone())
            }
        };
        http.push(HttpGrant {
            id: GrantId::new(name, "http", i),
            url,
            methods,
        });
    }

    Ok(http)
}

/// `calls`: links to other components of the policy, by interface.
pub(super) fn calls(
    cx: &Ctx<'_>,
    name: &str,
    raw: &[Spanned<RawCall>],
    names: &BTreeSet<&str>,
) -> Result<Vec<CallGrant>, PolicyError> {
    let mut calls = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        let field = format!("{name}.calls[{i}]");
        let callee = &c.value.component;
        if !names.contains(callee.as_str()) {
            let known: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            return Err(cx.err(
                &c.referenced,
                format!("{field}: no component `{callee}` in this policy"),
                Some(format!("components are {}", known.join(", "))),
            ));
        }
        if callee == name {
            return Err(cx.err(
                &c.referenced,
                format!("{field}: a component cannot call itself through a link"),
                None,
            ));
        }
        if !valid_interface(&c.value.interface) {
            return Err(cx.err(
                &c.referenced,
                format!("{field}: `{}` is not an interface name", c.value.interface),
                Some("write `namespace:package/interface`, optionally with `@version`".into()),
            ));
        }
        if let Some(fs) = &c.value.functions
            && fs.is_empty()
        {
            return Err(cx.err(
                &c.referenced,
                format!("{field}: `functions` is empty"),
                Some("omit `functions` to allow the whole interface".into()),
            ));
        }
        calls.push(CallGrant {
            id: GrantId::new(name, "calls", i),
            component: callee.clone(),
            interface: c.value.interface.clone(),
            functions: c.value.functions.clone(),
        });
    }

    Ok(calls)
}

fn sockets(
    cx: &Ctx<'_>,
    name: &str,
    kind: &str,
    raw: &[Spanned<String>],
    transport: Transport,
) -> Result<Vec<SocketGrant>, PolicyError> {
    raw.iter()
        .enumerate()
        .map(|(i, s)| {
            let field = format!("{name}.{kind}[{i}]");
            let pattern: SocketPattern = s
                .value
                .parse()
                .map_err(|e| cx.pattern(&s.referenced, &field, e))?;
            if pattern.transport() != transport {
                let (want, other) = match transport {
                    Transport::Tcp => ("tcp://", "`network.udp`"),
                    Transport::Udp => ("udp://", "`network.connect` or `network.bind`"),
                };
                return Err(cx.err(
                    &s.referenced,
                    format!("{field}: `{}` is not a `{want}` pattern", s.value),
                    Some(format!(
                        "this list takes `{want}` patterns; other transports go under {other}"
                    )),
                ));
            }
            Ok(SocketGrant {
                id: GrantId::new(name, kind, i),
                pattern,
            })
        })
        .collect()
}

/// Validates a guest mount point: absolute, normalised, no `.`/`..`, no NUL.
pub(super) fn guest_path(p: &str) -> Result<String, (String, Option<String>)> {
    if !p.starts_with('/') {
        return Err((
            format!("guest path `{p}` must be absolute"),
            Some(format!("write `/{p}`")),
        ));
    }
    if p.contains('\0') {
        return Err(("guest path contains a NUL byte".into(), None));
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|s| *s == "." || *s == "..") {
        return Err((
            format!("guest path `{p}` may not contain `.` or `..`"),
            None,
        ));
    }
    let normal = format!("/{}", parts.join("/"));
    if normal != p {
        return Err((
            format!("guest path `{p}` is not normalised"),
            Some(format!("write `{normal}`")),
        ));
    }
    Ok(normal)
}

pub(super) fn valid_interface(s: &str) -> bool {
    let (body, version) = match s.split_once('@') {
        Some((b, v)) => (b, Some(v)),
        None => (s, None),
    };
    let Some((pkg, iface)) = body.split_once('/') else {
        return false;
    };
    let Some((ns, name)) = pkg.split_once(':') else {
        return false;
    };
    let word = |w: &str| is_ident(w);
    word(ns)
        && word(name)
        && word(iface)
        && version.is_none_or(|v| !v.is_empty() && !v.contains(char::is_whitespace))
}
