//! Policy format 1: strict YAML into the validated model.
//!
//! Input is a [`PolicyBundle`]: bytes whose signature was already checked (or that the caller
//! explicitly admitted unsigned). Every error names the file, line and column, says what was
//! expected and, where the fix is obvious, gives a hint. Parsing is pure: it reads no file.
//! Paths come out joined to the policy's directory; whether the artifacts and host directories
//! exist is checked when the policy is loaded (`VerifiedPolicy`), where a missing one is an
//! error naming the line that references it, never a silently empty grant.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use capgate_signing::PolicyBundle;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

mod component;
mod grants;
mod limits;

use super::error::PolicyError;
use super::model::{
    Access, AuditLevel, AuditSpec, Durability, Input, OnFailure, Output, Policy, RulesSource,
};
use super::pattern::PatternError;
use super::units::{ByteSize, UnitError};

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
    durability: Durability,
    #[serde(default)]
    on_failure: OnFailure,
    checkpoint_every: Option<Spanned<u64>>,
    rotate: Option<Spanned<Quantity>>,
    otlp: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    component: Spanned<String>,
    cwd: Option<Spanned<String>>,
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
    #[serde(default)]
    reusable: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    host: String,
    guest: String,
    #[serde(default = "read_only")]
    access: Access,
}

/// The `oci://` reference `text` is, if it is one (checked when the policy is loaded).
pub(crate) fn oci_reference(text: &str) -> Option<String> {
    text.starts_with("oci://").then(|| text.to_owned())
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
    methods: Option<RawMethods>,
}

/// `methods: [GET, POST]`, or one method written alone (`methods: GET`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawMethods {
    One(String),
    Many(Vec<String>),
}

impl RawMethods {
    fn list(&self) -> Vec<String> {
        match self {
            Self::One(m) => vec![m.clone()],
            Self::Many(ms) => ms.clone(),
        }
    }
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

/// Whether `s` is a valid component name: a lowercase letter, then lowercase letters, digits
/// and dashes. (Every such name is also a valid policy name.)
pub fn is_ident(s: &str) -> bool {
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
        // Messages name the file as the policy's own path does (relative if it is).
        let shown = match bundle.dir() {
            d if d.as_os_str().is_empty() || d == Path::new(".") => name.into(),
            d => d.join(name),
        };
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| PolicyError::Invalid {
            path: shown.clone(),
            line: 0,
            column: 0,
            message: "not valid UTF-8 text".into(),
            hint: None,
        })?;
        rules.push(RulesSource {
            name: name.clone(),
            path: shown,
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
        let c = component::component(&cx, &dir, name, rc, &names)?;
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
    let otlp = match raw.otlp {
        None => None,
        Some(u) => {
            if let Err(why) = otlp_endpoint(&u.value) {
                return Err(cx.err(
                    &u.referenced,
                    format!("audit.otlp: `{}` {why}", u.value),
                    Some("an OTLP/HTTP logs endpoint, e.g. `http://127.0.0.1:4318/v1/logs`".into()),
                ));
            }
            Some(u.value)
        }
    };
    Ok(AuditSpec {
        otlp,
        level: raw.level,
        log: raw.log.map(|l| dir.join(l)),
        durability: raw.durability,
        on_failure: raw.on_failure,
        checkpoint_every,
        rotate,
    })
}

/// Checks an OTLP/HTTP endpoint: `http://HOST[:PORT]/PATH` or `https://HOST[:PORT]/PATH`.
pub fn otlp_endpoint(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err("is not an `http://` or `https://` URL");
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains(['@', ' ']) || path.contains(' ') {
        return Err("has no valid host");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::grants::{guest_path, valid_interface};

    #[test]
    fn guest_paths() {
        let both = |p: &str| guest_path(p).unwrap();
        assert_eq!(both("/static"), ("/static".into(), "/static".into()));
        assert_eq!(both("/"), ("/".into(), "/".into()));
        // Relative names, as wasmtime's `--dir HOST::NAME`: decided as `/NAME`.
        assert_eq!(both("static"), ("static".into(), "/static".into()));
        assert_eq!(both("a/b"), ("a/b".into(), "/a/b".into()));
        assert_eq!(both("."), (".".into(), "/".into()));
        assert!(guest_path("../s").is_err());
        assert!(guest_path("./s").is_err());
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
