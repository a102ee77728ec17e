//! Policy format 1: strict YAML into the validated model.
//!
//! Input is a [`PolicyBundle`]: bytes whose signature was already checked (or that the caller
//! explicitly admitted unsigned). Every error names the file, line and column, says what was
//! expected and, where the fix is obvious, gives a hint. Host directories are resolved here,
//! once; a missing one is an error, never a silently empty grant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use capgate_signing::PolicyBundle;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::error::PolicyError;
use super::model::*;
use super::pattern::{NamePattern, PatternError, SocketPattern, Transport, UrlPattern};
use super::units::{ByteSize, Span, UnitError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[allow(dead_code)]
    capgate: u64,
    name: String,
    version: u64,
    #[allow(dead_code)]
    expires: Option<String>,
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    audit: RawAudit,
    components: Spanned<BTreeMap<String, Spanned<RawComponent>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default)]
    level: AuditLevel,
    log: Option<String>,
    #[serde(default)]
    durability: crate::audit::Durability,
    #[serde(default)]
    on_failure: crate::audit::OnFailure,
    checkpoint_every: Option<Spanned<u64>>,
    rotate: Option<Spanned<Quantity>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    component: Spanned<String>,
    sha256: Option<Spanned<String>>,
    #[serde(default)]
    signed_by: Vec<Spanned<String>>,
    #[serde(default)]
    files: Vec<Spanned<RawFile>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    env_from_host: Vec<Spanned<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    stdio: RawStdio,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    http: Vec<Spanned<RawHttp>>,
    #[serde(default)]
    calls: Vec<Spanned<RawCall>>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    host: String,
    guest: String,
    #[serde(default = "read_only")]
    access: Access,
}

fn read_only() -> Access {
    Access::ReadOnly
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdio {
    #[serde(default)]
    stdin: Input,
    #[serde(default)]
    stdout: Output,
    #[serde(default)]
    stderr: Output,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    connect: Vec<Spanned<String>>,
    #[serde(default)]
    bind: Vec<Spanned<String>>,
    #[serde(default)]
    udp: Vec<Spanned<String>>,
    #[serde(default)]
    lookup: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawHttp {
    Url(String),
    Full(RawHttpFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpFull {
    url: String,
    methods: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    component: String,
    interface: String,
    functions: Option<Vec<String>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Spanned<Quantity>>,
    timeout: Option<Spanned<String>>,
    fuel: Option<Spanned<u64>>,
    instances: Option<Spanned<u32>>,
    files: Option<Spanned<u32>>,
    sockets: Option<Spanned<u32>>,
    body: Option<Spanned<Quantity>>,
    output: Option<Spanned<Quantity>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Quantity {
    Bytes(u64),
    Text(String),
}

/// Builds located errors for one policy file.
struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, at: &Location, message: impl Into<String>, hint: Option<String>) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.to_owned(),
            line: at.line(),
            column: at.column(),
            message: message.into(),
            hint,
        }
    }

    fn pattern(&self, at: &Location, field: &str, e: PatternError) -> PolicyError {
        self.err(at, format!("{field}: {e}"), e.hint)
    }

    fn unit(&self, at: &Location, field: &str, e: UnitError) -> PolicyError {
        self.err(at, format!("{field}: {e}"), e.hint)
    }
}

fn is_ident(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses and validates a verified policy bundle.
pub fn parse(bundle: &PolicyBundle) -> Result<Policy, PolicyError> {
    let path = bundle.path();
    let cx = Ctx { path };
    let raw: RawPolicy = capgate_signing::yaml::from_slice(path, bundle.yaml())
        .map_err(|e| PolicyError::from_yaml(e, untagged_hint))?;
    let dir = absolute(bundle.dir());

    let mut rules = Vec::new();
    for name in &raw.rules {
        let bytes = bundle.file(name).ok_or_else(|| PolicyError::Invalid {
            path: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("rules file `{name}` was not read with the policy"),
            hint: None,
        })?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| PolicyError::Invalid {
            path: dir.join(name),
            line: 0,
            column: 0,
            message: "not valid UTF-8 text".into(),
            hint: None,
        })?;
        rules.push(RulesSource {
            name: name.clone(),
            path: dir.join(name),
            text,
        });
    }

    let names: BTreeSet<&str> = raw.components.value.keys().map(String::as_str).collect();
    if names.is_empty() {
        return Err(cx.err(
            &raw.components.referenced,
            "`components` is empty: a policy must name at least one component",
            None,
        ));
    }
    let mut components = BTreeMap::new();
    for (name, rc) in &raw.components.value {
        let c = component(&cx, &dir, name, rc, &names)?;
        components.insert(name.clone(), c);
    }

    Ok(Policy {
        path: path.to_owned(),
        name: raw.name,
        version: raw.version,
        sha256: bundle.sha256(),
        rules,
        audit: audit(&cx, &dir, raw.audit)?,
        components,
    })
}

fn audit(cx: &Ctx<'_>, dir: &Path, raw: RawAudit) -> Result<AuditSpec, PolicyError> {
    let checkpoint_every = match raw.checkpoint_every {
        Some(n) if n.value == 0 => {
            return Err(cx.err(
                &n.referenced,
                "audit.checkpoint_every: must be at least 1",
                Some("checkpoints are written every N records; 1000 is the default".into()),
            ));
        }
        Some(n) => n.value,
        None => AuditSpec::DEFAULT_CHECKPOINT_EVERY,
    };
    let rotate = match &raw.rotate {
        None => None,
        Some(q) => Some(match &q.value {
            Quantity::Bytes(n) => ByteSize::from_bytes(*n),
            Quantity::Text(t) => t
                .parse()
                .map_err(|e| cx.unit(&q.referenced, "audit.rotate", e))?,
        }),
    };
    if let (Some(r), Some(q)) = (rotate, &raw.rotate)
        && r.bytes() < 4096
    {
        return Err(cx.err(
            &q.referenced,
            format!(
                "audit.rotate: {} bytes is too small to rotate at",
                r.bytes()
            ),
            Some("give a size of at least 4KiB, for example `64MiB`".into()),
        ));
    }
    Ok(AuditSpec {
        level: raw.level,
        log: raw.log.map(|l| dir.join(l)),
        durability: raw.durability,
        on_failure: raw.on_failure,
        checkpoint_every,
        rotate,
    })
}

fn absolute(dir: &Path) -> std::path::PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
}

fn untagged_hint(message: &str) -> Option<(String, String)> {
    if message.contains("untagged enum RawHttp") {
        return Some((
            "an `http` entry must be a URL or `{ url: URL, methods: [...] }`".into(),
            "write e.g. `- https://api.example.com` or `- { url: https://api.example.com/v1/, methods: [GET] }`".into(),
        ));
    }
    if message.contains("untagged enum Quantity") {
        return Some((
            "`memory` must be a size".into(),
            "write e.g. `memory: 64MiB`".into(),
        ));
    }
    None
}

fn component(
    cx: &Ctx<'_>,
    dir: &Path,
    name: &str,
    spanned: &Spanned<RawComponent>,
    names: &BTreeSet<&str>,
) -> Result<ComponentPolicy, PolicyError> {
    let at = &spanned.referenced;
    let rc = &spanned.value;
    if !is_ident(name) {
        return Err(cx.err(
            at,
            format!("component name `{name}` is not valid: expected `[a-z][a-z0-9-]*`"),
            None,
        ));
    }
    let artifact = dir.join(&rc.component.value);
    if !artifact.is_file() {
        return Err(PolicyError::MissingFile {
            path: cx.path.to_owned(),
            line: rc.component.referenced.line(),
            column: rc.component.referenced.column(),
            what: format!("component `{name}`: artifact"),
            file: artifact,
        });
    }
    let sha256 = match &rc.sha256 {
        None => None,
        Some(s) => Some(s.value.parse().map_err(|e| {
            cx.err(
                &s.referenced,
                format!("{name}.sha256: {e}"),
                Some("`sha256sum FILE` prints it".into()),
            )
        })?),
    };

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
        let host = dir.join(&f.value.host);
        let host = match std::fs::canonicalize(&host) {
            Ok(h) if h.is_dir() => h,
            Ok(h) => {
                return Err(cx.err(
                    &f.referenced,
                    format!("{field}: host path `{}` is not a directory", h.display()),
                    Some("grant the directory that contains it".into()),
                ));
            }
            Err(_) => {
                return Err(PolicyError::MissingFile {
                    path: cx.path.to_owned(),
                    line: f.referenced.line(),
                    column: f.referenced.column(),
                    what: format!("{field}: host directory"),
                    file: host,
                });
            }
        };
        files.push(FileGrant {
            id: GrantId::new(name, "files", i),
            host,
            guest,
            access: f.value.access,
        });
    }

    let mut env = Vec::new();
    for (k, v) in &rc.env {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(cx.err(
                &v.referenced,
                format!("{name}.env: `{k}` is not a variable name"),
                None,
            ));
        }
        env.push((k.clone(), v.value.clone()));
    }
    let mut env_from_host = Vec::new();
    for k in &rc.env_from_host {
        if k.value.is_empty() || k.value.contains(['=', '\0']) {
            return Err(cx.err(
                &k.referenced,
                format!("{name}.env_from_host: `{}` is not a variable name", k.value),
                None,
            ));
        }
        if rc.env.contains_key(&k.value) {
            return Err(cx.err(
                &k.referenced,
                format!("{name}: `{}` is in both `env` and `env_from_host`", k.value),
                Some("keep one".into()),
            ));
        }
        env_from_host.push(k.value.clone());
    }

    let network = Network {
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
    };

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

    let mut calls = Vec::new();
    for (i, c) in rc.calls.iter().enumerate() {
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

    let mut limits = Limits::default();
    let size = |q: &Spanned<Quantity>, field: &str| match &q.value {
        Quantity::Bytes(n) => Ok(ByteSize::from_bytes(*n)),
        Quantity::Text(t) => t
            .parse()
            .map_err(|e| cx.unit(&q.referenced, &format!("{name}.limits.{field}"), e)),
    };
    let count = |n: &Spanned<u32>, field: &str| {
        if n.value == 0 || n.value > 65536 {
            return Err(cx.err(
                &n.referenced,
                format!("{name}.limits.{field}: must be between 1 and 65536"),
                None,
            ));
        }
        Ok(n.value)
    };
    if let Some(m) = &rc.limits.memory {
        limits.memory = size(m, "memory")?;
    }
    if let Some(t) = &rc.limits.timeout {
        limits.timeout = Some(
            t.value
                .parse::<Span>()
                .map_err(|e| cx.unit(&t.referenced, &format!("{name}.limits.timeout"), e))?,
        );
    }
    if let Some(f) = &rc.limits.fuel {
        if f.value == 0 {
            return Err(cx.err(
                &f.referenced,
                format!("{name}.limits.fuel: must be at least 1"),
                None,
            ));
        }
        limits.fuel = Some(f.value);
    }
    if let Some(n) = &rc.limits.instances {
        if n.value == 0 {
            return Err(cx.err(
                &n.referenced,
                format!("{name}.limits.instances: must be at least 1"),
                None,
            ));
        }
        limits.instances = n.value;
    }
    if let Some(n) = &rc.limits.files {
        limits.files = count(n, "files")?;
    }
    if let Some(n) = &rc.limits.sockets {
        limits.sockets = count(n, "sockets")?;
    }
    if let Some(b) = &rc.limits.body {
        limits.body = size(b, "body")?;
    }
    if let Some(o) = &rc.limits.output {
        limits.output = size(o, "output")?;
    }

    Ok(ComponentPolicy {
        name: name.to_owned(),
        artifact,
        sha256,
        signed_by: rc.signed_by.iter().map(|s| s.value.clone()).collect(),
        files,
        env,
        env_from_host,
        args: rc.args.clone(),
        stdio: Stdio {
            stdin: rc.stdio.stdin,
            stdout: rc.stdio.stdout,
            stderr: rc.stdio.stderr,
        },
        network,
        http,
        calls,
        limits,
    })
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
fn guest_path(p: &str) -> Result<String, (String, Option<String>)> {
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

fn valid_interface(s: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        assert_eq!(guest_path("/static").unwrap(), "/static");
        assert_eq!(guest_path("/").unwrap(), "/");
        assert!(
            guest_path("static")
                .unwrap_err()
                .1
                .unwrap()
                .contains("/static")
        );
        assert!(guest_path("/a/../b").is_err());
        assert_eq!(
            guest_path("/a//b/").unwrap_err().1.as_deref(),
            Some("write `/a/b`")
        );
    }

    #[test]
    fn interfaces() {
        assert!(valid_interface("example:image/image-processor"));
        assert!(valid_interface("example:image/image-processor@0.1.0"));
        assert!(!valid_interface("image-processor"));
        assert!(!valid_interface("Example:image/x"));
    }
}
