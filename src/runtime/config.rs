//! [`HostConfig`]: what a host application may set, each setting starting from the safe side.
//!
//! Nothing here weakens what a policy says: the policy's `audit` section is applied by the
//! [`Host`](super::Host) itself (a log path, a sink, a checkpoint key or a salt given here only
//! say *where* and *how* its records go), a compilation cache must be private to this user,
//! and components whose policy sets no timeout or fuel get the documented defaults. Giving
//! any of that up takes a call in [`crate::danger`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use capgate_signing::SecretKey;

use super::limits::Fallback;
use crate::audit::AuditSink;
use crate::gate::{DecisionEvent, DecisionObserver};

/// Settings of a [`Host`](super::Host).
#[derive(Clone)]
pub struct HostConfig {
    pub(super) cache_dir: Option<PathBuf>,
    pub(super) observer: Option<DecisionObserver>,
    pub(super) denials_only: bool,
    pub(super) audit_log: Option<PathBuf>,
    pub(super) audit_sink: Option<Arc<dyn AuditSink>>,
    pub(super) audit_key: Option<Arc<SecretKey>>,
    pub(super) audit_salt: Option<[u8; 32]>,
    pub(super) audit_state: Option<PathBuf>,
    pub(super) audit_otlp: Option<String>,
    pub(super) audit_otlp_ca: Option<PathBuf>,
    pub(super) failures: Option<FailureObserver>,
    pub(super) progress: bool,
    pub(super) pool: Option<u32>,
    pub(crate) fallback: Fallback,
}

/// A served request that failed. The client is answered with a bare status; the reason is
/// for the host's operator only.
#[derive(Debug, Clone)]
pub struct RequestFailure {
    /// The served component.
    pub component: String,
    /// The status the client received: 403 when a call the handler made was denied, 413 for a
    /// body past `limits.body`, 500 when the handler trapped, hit a limit or answered nothing.
    pub status: u16,
    /// What happened, naming the limit, the trap or the denied call.
    pub detail: String,
}

/// Told about every served request that failed.
pub(crate) type FailureObserver = Arc<dyn Fn(&RequestFailure) + Send + Sync>;

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            observer: None,
            denials_only: false,
            audit_log: None,
            audit_sink: None,
            audit_key: None,
            audit_salt: None,
            audit_state: None,
            audit_otlp: None,
            audit_otlp_ca: None,
            failures: None,
            progress: false,
            pool: None,
            fallback: Fallback::SAFE,
        }
    }
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("cache_dir", &self.cache_dir)
            .field("audit_log", &self.audit_log)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl HostConfig {
    /// Defaults: no compilation cache; decisions not observed; each policy's `audit` section
    /// applied as written (its log, level, durability and failure mode); components whose
    /// policy sets no `timeout` or `fuel` get [`defaults::TIMEOUT`](crate::policy::defaults::TIMEOUT)
    /// and [`defaults::FUEL`](crate::policy::defaults::FUEL).
    pub fn new() -> Self {
        Self::default()
    }

    /// Caches compiled components in `dir`, keyed by their bytes. Compiled code from the
    /// cache runs as native code without further checks, so [`Host::new`](super::Host::new)
    /// refuses a directory that another user owns or that group or others can reach (and
    /// creates a missing one with mode 0700).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Calls `observer` with every decision made for running guests, after it is recorded.
    pub fn observe(mut self, observer: impl Fn(&DecisionEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(observer));
        self.denials_only = false;
        self
    }

    /// Reserves memory, tables and stacks for `instances` component instances at once and
    /// reuses them (wasmtime's pooling allocator), instead of mapping and unmapping them for
    /// every instance: much faster for a server that instantiates per request. Every limit of
    /// the policy still applies; past `instances` live instances, instantiation fails cleanly.
    /// It reserves (but does not use) several terabytes of address space. `capgate serve`
    /// turns it on with 1,000.
    pub fn pooling(mut self, instances: u32) -> Self {
        self.pool = Some(instances.max(1));
        self
    }

    /// Prints a line on stderr when compiling a component takes more than a second (a first
    /// run of a large component; later runs use the cache). Off by default: a library does not
    /// print unless asked. The CLI turns it on when stderr is a terminal.
    pub fn progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Calls `observer` with every request [`serve`](crate::serve) answered with an error
    /// status, and why; the client itself is told only the status.
    pub fn observe_failures(
        mut self,
        observer: impl Fn(&RequestFailure) + Send + Sync + 'static,
    ) -> Self {
        self.failures = Some(Arc::new(observer));
        self
    }

    /// Calls `observer` with every denial (and no allowed decision). Cheaper than
    /// [`HostConfig::observe`] when only denials matter: allowed calls between linked
    /// components then stay on their fast path.
    pub fn observe_denials(
        mut self,
        observer: impl Fn(&DecisionEvent) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self.denials_only = true;
        self
    }

    /// Writes audit records to the file `path` instead of the policy's `audit.log` (for a
    /// policy that has none, too). The policy's level, durability and failure mode still
    /// apply. This is the CLI's `--audit FILE`.
    pub fn audit_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit_log = Some(path.into());
        self
    }

    /// Hands audit records to `sink` instead of a file (for a host that ships them itself).
    /// The policy's level and failure mode still apply: a fail-closed policy denies what
    /// `sink` cannot take. Takes precedence over [`HostConfig::audit_log`].
    pub fn audit_sink(mut self, sink: impl AuditSink + 'static) -> Self {
        self.audit_sink = Some(Arc::new(sink));
        self
    }

    /// Signs audit checkpoints with `key` (one that the trust root's `audit` role holds, for
    /// `capgate audit verify` to accept them). The CLI's `--audit-key KEY`.
    pub fn audit_key(mut self, key: SecretKey) -> Self {
        self.audit_key = Some(Arc::new(key));
        self
    }

    /// Keeps, in `dir`, where this host left each audit log file it writes (an anchor per log:
    /// its last `seq`, hash and length), and refuses to continue a log that no longer holds
    /// that line (cut off or rewritten since) or that it has no anchor for. The CLI uses its
    /// state directory (`--state-dir`). Without it, an existing log is continued from
    /// whatever line it ends with.
    pub fn audit_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.audit_state = Some(dir.into());
        self
    }

    /// Also exports every record of each audit log file this host writes to the OTLP/HTTP
    /// logs `endpoint` (e.g. `http://127.0.0.1:4318/v1/logs`), overriding a policy's
    /// `audit.otlp` (see [`crate::audit::OtlpExporter`]). The local log stays the source of
    /// truth: a policy with no log to export is an error when it first runs.
    pub fn audit_otlp(mut self, endpoint: impl Into<String>) -> Self {
        self.audit_otlp = Some(endpoint.into());
        self
    }

    /// Certificates (a PEM file) an `https://` OTLP endpoint may present a chain to, besides
    /// the Web PKI roots: a private CA of the collector.
    pub fn audit_otlp_ca(mut self, pem: impl Into<PathBuf>) -> Self {
        self.audit_otlp_ca = Some(pem.into());
        self
    }

    /// The secret salt of the hashes of sensitive values in audit records; without it, each
    /// log gets a random one (so hashes cannot be compared across runs).
    pub fn audit_salt(mut self, salt: [u8; 32]) -> Self {
        self.audit_salt = Some(salt);
        self
    }
}

/// Checks that `dir` is fit to hold compiled code: private to this user (created with mode
/// 0700 if missing, refused if another user owns it or group or others can reach it). The
/// error says what is wrong and how to fix it.
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
        if !dir.is_absolute() {
            return Err("it is not an absolute path".into());
        }
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| e.to_string())?;
        }
        let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
        if !meta.is_dir() {
            return Err("it is not a directory".into());
        }
        // The owner of a file we create is this process's effective user.
        let probe = dir.join(".owner");
        let me = std::fs::File::create(&probe)
            .and_then(|f| f.metadata())
            .map_err(|e| e.to_string())?
            .uid();
        if meta.uid() != me {
            return Err(format!(
                "it belongs to user {}, not to this user ({me})",
                meta.uid()
            ));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "its mode is {:o}; it must be 700 (run `chmod 700` on it)",
                meta.permissions().mode() & 0o777
            ));
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Err("a private cache directory cannot be checked on this platform".into())
    }
}
