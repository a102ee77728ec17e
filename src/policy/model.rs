//! The validated policy: what each component is granted, in types that can only hold valid
//! values. Built only by [`super::parse`]; nothing here reads files or makes decisions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use capgate_signing::Sha256;

use super::pattern::{NamePattern, SocketPattern, UrlPattern};
use super::units::{ByteSize, Span};

/// Defaults for limits a policy does not set. Listed once here and in `docs/policy.md`.
pub mod defaults {
    use super::{ByteSize, Span};

    /// Wall-clock time one run, served request or call may take when `limits.timeout` is not
    /// set: 60 seconds.
    pub const TIMEOUT: Span = Span::from_secs(60);
    /// Fuel one run, served request or call may burn when `limits.fuel` is not set: 10^11,
    /// roughly a minute of busy computation.
    pub const FUEL: u64 = 100_000_000_000;

    /// Linear memory and tables together one instance's store may hold when `limits.memory`
    /// is not set: 256 MiB.
    pub const MEMORY: ByteSize = ByteSize::from_bytes(256 << 20);
    /// Concurrent instances of one component when `limits.instances` is not set.
    pub const INSTANCES: u32 = 4;
    /// File and directory descriptors one instance may hold open when `limits.files` is not
    /// set.
    pub const FILES: u32 = 256;
    /// The largest HTTP body a component receives or sends when `limits.body` is not set:
    /// 16 MiB.
    pub const BODY: ByteSize = ByteSize::from_bytes(16 << 20);
    /// TCP and UDP sockets one instance may hold open when `limits.sockets` is not set.
    pub const SOCKETS: u32 = 64;
    /// Bytes one instance may write to stdout and stderr together when `limits.output` is
    /// not set: 256 MiB.
    pub const OUTPUT: ByteSize = ByteSize::from_bytes(256 << 20);
}

/// A stable identifier of one grant, from its place in the YAML: `http-handler.http[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(pub(crate) String);

impl GrantId {
    pub(crate) fn new(component: &str, kind: &str, index: usize) -> Self {
        Self(format!("{component}.{kind}[{index}]"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for GrantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where in the policy file a value was written: 1-based line and column (0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) line: u64,
    pub(crate) column: u64,
}

impl Origin {
    pub(crate) fn of(at: &serde_saphyr::Location) -> Self {
        Self {
            line: at.line(),
            column: at.column(),
        }
    }
}

/// How a directory is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Reading only: every mutation is refused.
    ReadOnly,
    /// Reading and writing.
    ReadWrite,
}

/// A preopened directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FileGrant {
    /// The grant's id.
    pub id: GrantId,
    /// The host directory, absolute: joined to the policy's directory when parsed, then
    /// resolved (symlinks followed, checked to be a directory) when the policy is loaded.
    pub host: PathBuf,
    /// Where decisions see it: an absolute, normalised path (`/NAME` for a relative
    /// [`FileGrant::preopen`]).
    pub guest: String,
    /// The name the guest is given for it: `guest` itself, or a relative name (`data`, `.`)
    /// as the policy wrote it.
    pub preopen: String,
    /// Read-only or read-write.
    pub access: Access,
    /// Where the grant is written.
    pub(crate) at: Origin,
}

/// A socket grant.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SocketGrant {
    /// The grant's id.
    pub id: GrantId,
    /// The addresses and ports it covers.
    pub pattern: SocketPattern,
}

/// A DNS lookup grant.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LookupGrant {
    /// The grant's id.
    pub id: GrantId,
    /// The names it covers.
    pub pattern: NamePattern,
}

/// Network grants of one component.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Network {
    /// Outbound TCP connections.
    pub connect: Vec<SocketGrant>,
    /// TCP listening addresses.
    pub bind: Vec<SocketGrant>,
    /// UDP peers and local addresses.
    pub udp: Vec<SocketGrant>,
    /// Names it may resolve.
    pub lookup: Vec<LookupGrant>,
}

/// An outbound HTTP grant.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpGrant {
    /// The grant's id.
    pub id: GrantId,
    /// Scheme, host, port and path prefix.
    pub url: UrlPattern,
    /// Allowed methods (uppercase); `None` allows every method.
    pub methods: Option<Vec<String>>,
}

/// Permission to call another component of the policy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallGrant {
    /// The grant's id.
    pub id: GrantId,
    /// The callee component's name.
    pub component: String,
    /// The interface, `ns:pkg/iface` with an optional `@version`.
    pub interface: String,
    /// The functions allowed; `None` allows every function of the interface.
    pub functions: Option<Vec<String>>,
}

/// Standard input: closed unless the policy says `inherit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Input {
    /// The guest reads end-of-file.
    #[default]
    Closed,
    /// The guest reads the host's stdin.
    Inherit,
}

/// Standard output or error: inherited unless the policy says `closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// Written to the host's stream.
    #[default]
    Inherit,
    /// Discarded.
    Closed,
}

/// Standard streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stdio {
    /// Standard input.
    pub stdin: Input,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
}

/// Resource limits of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Linear memories and tables together, per store.
    pub memory: ByteSize,
    /// Wall-clock time one run or call may take, as the policy sets it; a host applies
    /// [`defaults::TIMEOUT`] when it is `None`.
    pub timeout: Option<Span>,
    /// Fuel (roughly, wasm instructions) one run or call may burn, as the policy sets it; a
    /// host applies [`defaults::FUEL`] when it is `None`.
    pub fuel: Option<u64>,
    /// Concurrent instances.
    pub instances: u32,
    /// File and directory descriptors one instance may hold open at once.
    pub files: u32,
    /// TCP and UDP sockets one instance may hold open at once.
    pub sockets: u32,
    /// The largest HTTP body a component receives or sends: requests `serve` passes to it and
    /// responses it answers with, requests it sends out and responses it reads back.
    pub body: ByteSize,
    /// Bytes one instance (a run, a served request, a linked component's instance) may write
    /// to stdout and stderr together.
    pub output: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: defaults::MEMORY,
            timeout: None,
            fuel: None,
            instances: defaults::INSTANCES,
            files: defaults::FILES,
            sockets: defaults::SOCKETS,
            body: defaults::BODY,
            output: defaults::OUTPUT,
        }
    }
}

/// Everything one component is granted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ComponentPolicy {
    /// The component's name in the policy.
    pub name: String,
    /// The artifact path, resolved against the policy file's directory. For an artifact in
    /// an OCI registry ([`ComponentPolicy::source`]), where it was laid out once pulled.
    pub artifact: PathBuf,
    /// The `oci://` reference the artifact comes from, as the policy writes it; once the
    /// policy is loaded, pinned by the manifest's digest (`oci://HOST/REPO@sha256:…`).
    pub source: Option<String>,
    /// Where the artifact path is written.
    pub(crate) artifact_at: Origin,
    /// A digest pin, if given.
    pub sha256: Option<Sha256>,
    /// Trust-root key names, one of which must have signed the artifact; empty means the
    /// trust root's `artifact` role decides.
    pub signed_by: Vec<String>,
    /// Preopened directories.
    pub files: Vec<FileGrant>,
    /// The initial working directory (`wasi:cli/environment.initial-cwd`), inside a mount.
    pub cwd: Option<String>,
    /// Environment variables with literal values.
    pub env: Vec<(String, String)>,
    /// Environment variables copied from the host by name (absent ones are skipped).
    pub env_from_host: Vec<String>,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Standard streams.
    pub stdio: Stdio,
    /// Sockets and DNS.
    pub network: Network,
    /// Outbound HTTP.
    pub http: Vec<HttpGrant>,
    /// Calls into other components.
    pub calls: Vec<CallGrant>,
    /// Resource limits.
    pub limits: Limits,
    /// Whether one instance of it, linked as a callee, may serve calls made for different
    /// runs and served requests (so state it keeps carries over between them). When `false`,
    /// an instance serves one run or request and is dropped at its end.
    pub reusable: bool,
}

impl ComponentPolicy {
    /// How many grants it has: mounts, socket and lookup patterns, HTTP entries and calls.
    pub fn grant_count(&self) -> usize {
        self.files.len()
            + self.network.connect.len()
            + self.network.bind.len()
            + self.network.udp.len()
            + self.network.lookup.len()
            + self.http.len()
            + self.calls.len()
    }
}

/// Which decisions are written to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditLevel {
    /// Denials only.
    #[default]
    Deny,
    /// Every decision.
    All,
}

/// When records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Each record is written and `fdatasync`ed before its decision takes effect.
    Always,
    /// Each record is handed to the operating system before its decision takes effect (so a
    /// crash of the process loses nothing), and synced to disk every 64 records, at rotation
    /// and at close. A power failure can lose records not yet synced.
    #[default]
    Batch,
}

/// What happens to a decision whose record cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// The decision becomes a deny, naming the audit error.
    #[default]
    FailClosed,
    /// The decision stands; a gap record is written when the sink recovers.
    Continue,
}

/// The policy's `audit` section.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditSpec {
    /// What is recorded.
    pub level: AuditLevel,
    /// Where, resolved against the policy file's directory.
    pub log: Option<PathBuf>,
    /// When records reach the disk.
    pub durability: Durability,
    /// What happens to a decision whose record cannot be written.
    pub on_failure: OnFailure,
    /// Records between signed checkpoints (when a checkpoint key is given).
    pub checkpoint_every: u64,
    /// Rotate the log file once it reaches this size.
    pub rotate: Option<crate::policy::units::ByteSize>,
    /// Also export every record of the log as an OpenTelemetry log record to this OTLP/HTTP
    /// endpoint (`http://HOST:PORT/v1/logs`); the local log stays the source of truth, so
    /// export needs one (`log`, or the host's own).
    pub otlp: Option<String>,
}

impl AuditSpec {
    /// Records between checkpoints unless the policy says otherwise.
    pub const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
}

impl Default for AuditSpec {
    fn default() -> Self {
        Self {
            level: AuditLevel::Deny,
            log: None,
            durability: Default::default(),
            on_failure: Default::default(),
            checkpoint_every: Self::DEFAULT_CHECKPOINT_EVERY,
            rotate: None,
            otlp: None,
        }
    }
}

/// A Cedar rules file the policy references, with its verified text.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RulesSource {
    /// The path as the policy names it.
    pub name: String,
    /// The file as messages name it: the policy's directory, as the policy's own path gives
    /// it (relative if that is), joined with `name`.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
}

/// A parsed, validated policy.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Policy {
    /// The policy file.
    pub path: PathBuf,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// SHA-256 of the policy YAML.
    pub sha256: Sha256,
    /// Rules files.
    pub rules: Vec<RulesSource>,
    /// Audit settings.
    pub audit: AuditSpec,
    /// Components by name.
    pub components: BTreeMap<String, ComponentPolicy>,
}
