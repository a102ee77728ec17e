//! Why a run failed: the one error type of the runtime, with the cause kept as a source.

/// A boxed cause: wasmtime's errors, I/O errors, audit errors.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which limit a guest hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitHit {
    /// `limits.memory`.
    Memory,
    /// `limits.timeout`.
    Timeout,
    /// `limits.fuel`.
    Fuel,
    /// The wasm stack (unbounded recursion).
    Stack,
    /// `limits.output`.
    Output,
    /// The per-instance bound on handles (descriptors, streams, sockets, pollables).
    Resources,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {message}")]
    Engine {
        /// What was being set up, and why it failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Cause>,
    },
    /// The compilation cache directory is not private to this user, or cannot be made.
    #[error(
        "not using the compilation cache `{dir}`: {why} (compiled code in a cache runs as native code, so the cache must be private to this user)"
    )]
    Cache {
        /// The directory.
        dir: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The policy's audit log cannot be opened, and its `audit.on_failure` is fail-closed.
    #[error(
        "{source} (the policy's `audit.on_failure` is fail-closed, so nothing runs without its log)"
    )]
    Audit {
        /// The cause.
        #[source]
        source: crate::audit::AuditError,
    },
    /// The policy expired (its `expires` has passed): nothing of it runs any more.
    #[error(
        "policy `{policy}` version {version} expired at {at}: nothing of it runs any more (hint: sign and load a newer version)"
    )]
    Expired {
        /// The policy's name.
        policy: String,
        /// Its version.
        version: u64,
        /// When it expired (RFC 3339).
        at: String,
    },
    /// The policy has no such component.
    #[error("no component `{name}` in policy `{policy}` (hint: components are {known})")]
    NoSuchComponent {
        /// The name asked for.
        name: String,
        /// The policy's name.
        policy: String,
        /// The names it has.
        known: String,
    },
    /// The component could not be compiled, or is not a component.
    #[error("component `{component}` is not a valid WebAssembly component: {message}")]
    Invalid {
        /// The component.
        component: String,
        /// Why.
        message: String,
        /// The cause.
        #[source]
        source: Option<Cause>,
    },
    /// The component imports something the policy does not provide.
    #[error("component `{component}` cannot be instantiated: {message}")]
    Instantiate {
        /// The component.
        component: String,
        /// Why.
        message: String,
        /// The cause.
        #[source]
        source: Option<Cause>,
    },
    /// An import cannot be linked to another component.
    #[error("component `{component}`: import `{import}` cannot be linked: {message}")]
    Link {
        /// The importing component.
        component: String,
        /// The import.
        import: String,
        /// Why.
        message: String,
    },
    /// The function or its arguments do not fit the component's export.
    #[error("component `{component}`: {message}")]
    Call {
        /// The component.
        component: String,
        /// Why.
        message: String,
    },
    /// The guest trapped.
    #[error("component `{component}` trapped: {message}")]
    Trap {
        /// The component.
        component: String,
        /// The trap.
        message: String,
    },
    /// The guest hit a limit of its policy.
    #[error("component `{component}` stopped: {message}")]
    Limit {
        /// The component.
        component: String,
        /// Which limit.
        limit: LimitHit,
        /// The limit, stated.
        message: String,
    },
}

impl RunError {
    /// An engine set-up failure: `what` failed because of `e`.
    pub(crate) fn engine(what: &str, e: impl Into<Cause>) -> Self {
        let source = e.into();
        Self::Engine {
            message: format!("{what}: {source}"),
            source: Some(source),
        }
    }
}

/// The error for a policy that has expired, if it has.
pub(crate) fn check_expiry(policy: &crate::VerifiedPolicy) -> Result<(), RunError> {
    if !policy.expired() {
        return Ok(());
    }
    let at = policy
        .expires()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Err(RunError::Expired {
        policy: policy.policy().name.clone(),
        version: policy.policy().version,
        at,
    })
}

/// The error for a component `name` that `policy` does not have.
pub(crate) fn no_such(policy: &crate::VerifiedPolicy, name: &str) -> RunError {
    RunError::NoSuchComponent {
        name: name.to_owned(),
        policy: policy.policy().name.clone(),
        known: policy
            .policy()
            .components
            .keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}
