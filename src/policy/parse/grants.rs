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

/// `files`: preopened directories, each mounted once.
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
        let (preopen, guest) = guest_path(&f.value.guest)
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
            preopen,
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
            RawHttp::Full(f) => (&f.url, f.methods.as_ref().map(|m| m.list())),
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
                for m in &ms {
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
                Some(ms)
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

/// Validates a guest mount point: the name the guest sees, and the absolute path decisions
/// use for it. An absolute name must be normalised, without `.` or `..`. A relative one (as
/// wasmtime's `--dir HOST::NAME` allows; `.` for the working directory) must be plain names
/// joined by `/`; decisions see it as `/NAME` (`.` as `/`).
pub(super) fn guest_path(p: &str) -> Result<(String, String), (String, Option<String>)> {
    if p.contains('\0') {
        return Err(("guest path contains a NUL byte".into(), None));
    }
    if p == "." {
        return Ok((".".into(), "/".into()));
    }
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|s| *s == "." || *s == "..") {
        return Err((
            format!("guest path `{p}` may not contain `.` or `..`"),
            None,
        ));
    }
    let absolute = p.starts_with('/');
    let normal = match absolute {
        true => format!("/{}", parts.join("/")),
        false => parts.join("/"),
    };
    if normal != p || normal.is_empty() {
        return Err((
            format!("guest path `{p}` is not normalised"),
            Some(format!(
                "write `{}`",
                if normal.is_empty() { "." } else { &normal }
            )),
        ));
    }
    let decided = match absolute {
        true => normal.clone(),
        false => format!("/{normal}"),
    };
    Ok((normal, decided))
}

/// `cwd`: the guest's initial working directory, absolute and inside one of its mounts.
pub(super) fn cwd(
    cx: &Ctx<'_>,
    name: &str,
    raw: Option<&Spanned<String>>,
    files: &[FileGrant],
) -> Result<Option<String>, PolicyError> {
    let Some(c) = raw else {
        return Ok(None);
    };
    let field = format!("{name}.cwd");
    let (given, path) =
        guest_path(&c.value).map_err(|(m, h)| cx.err(&c.referenced, format!("{field}: {m}"), h))?;
    if !given.starts_with('/') {
        return Err(cx.err(
            &c.referenced,
            format!("{field}: `{given}` must be absolute"),
            Some(format!("write `/{given}`")),
        ));
    }
    let inside = |m: &str| m == "/" || path == m || path.starts_with(&format!("{m}/"));
    if !files
        .iter()
        .any(|f| f.preopen.starts_with('/') && inside(&f.guest))
    {
        return Err(cx.err(
            &c.referenced,
            format!("{field}: `{path}` is not inside a directory the component is given"),
            Some("name a directory under one of its `files` mounts".into()),
        ));
    }
    Ok(Some(path))
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
