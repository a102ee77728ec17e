//! OCI distribution: component artifacts and policy bundles stored in OCI registries.
//!
//! An `oci://HOST[:PORT]/REPOSITORY:TAG` or `oci://HOST[:PORT]/REPOSITORY@sha256:HEX`
//! reference names a manifest in a registry. capgate stores:
//!
//! - a **component** in the CNCF Wasm OCI layout: one `application/wasm` layer, config of
//!   type `application/vnd.wasm.config.v0+json`;
//! - a **policy bundle** as an artifact of type [`POLICY_ARTIFACT`]: the YAML as the first
//!   layer, each rules file after it under its path (the `org.opencontainers.image.title`
//!   annotation);
//! - each **signature file** (`FILE.sig`) as an artifact of type [`SIGNATURE_ARTIFACT`] whose
//!   `subject` is the signed manifest, found through the referrers API or, on registries
//!   without it (Distribution 2.8), the referrers tag `sha256-HEX`.
//!
//! [`fetch`] pulls what a reference names into a content-addressed cache and lays it out as
//! local files (`component.wasm`, or `policy.yaml` and its rules, each with its `.sig`), so
//! that they are verified exactly as local files are: nothing pulled is parsed as a policy or
//! a component before its signature is checked. Every byte pulled is checked against the
//! digest that names it. A reference by digest is served from the cache without the network
//! once it has been pulled with a signature; a tag is resolved at the registry each time, and
//! only when the registry cannot be reached is the digest it last resolved to used (said on
//! stderr).
//!
//! The registry is reached over HTTPS, except on loopback hosts (`localhost`, `127.0.0.0/8`,
//! `[::1]`), which are reached over plain HTTP as a local development registry usually is.
//! Credentials for HTTP basic authentication come from `CAPGATE_REGISTRY_USERNAME` and
//! `CAPGATE_REGISTRY_PASSWORD`.

mod cache;
mod push;
mod registry;

use std::path::{Path, PathBuf};

pub use crate::policy::FetchClass;
pub use push::{Pushed, push_artifact, push_policy};

/// The artifact type of a capgate policy bundle.
pub const POLICY_ARTIFACT: &str = "application/vnd.capgate.policy.v1";
/// The media type of a policy bundle's YAML layer.
pub const POLICY_LAYER: &str = "application/vnd.capgate.policy.v1+yaml";
/// The media type of a policy bundle's rules layers.
pub const RULES_LAYER: &str = "application/vnd.capgate.rules.v1+cedar";
/// The artifact type (and layer media type) of a capgate signature file.
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.capgate.signature.v1+json";
/// The media type of a component's layer (CNCF Wasm OCI layout).
pub const WASM_LAYER: &str = "application/wasm";
/// The media type of a component manifest's config (CNCF Wasm OCI layout).
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// The scheme of an OCI reference.
pub const SCHEME: &str = "oci://";

/// Whether `text` is an `oci://` reference rather than a local path.
pub fn is_reference(text: &str) -> bool {
    text.starts_with(SCHEME)
}

/// [`is_reference`] for a path given on the command line.
pub fn path_is_reference(path: &Path) -> bool {
    path.to_str().is_some_and(is_reference)
}

/// Why something could not be pushed to or pulled from a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The reference is malformed.
    #[error(
        "`{text}` is not an OCI reference: {why} (hint: oci://HOST[:PORT]/REPOSITORY:TAG or oci://HOST[:PORT]/REPOSITORY@sha256:HEX)"
    )]
    Reference {
        /// The text given.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// The registry has no such manifest or blob.
    #[error("{reference}: not found in the registry ({detail})")]
    NotFound {
        /// The reference.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry refused the credentials (or asked for some).
    #[error(
        "{reference}: the registry refused access ({detail}) (hint: set CAPGATE_REGISTRY_USERNAME and CAPGATE_REGISTRY_PASSWORD)"
    )]
    Unauthorized {
        /// The reference.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry could not be reached or failed.
    #[error("{reference}: registry error: {detail}")]
    Registry {
        /// The reference.
        reference: String,
        /// What happened.
        detail: String,
    },
    /// Bytes did not hash to the digest that names them.
    #[error(
        "{reference}: {what} has digest {found}, not {expected}: the registry served other bytes than the reference names"
    )]
    Digest {
        /// The reference.
        reference: String,
        /// Which part.
        what: String,
        /// The digest that names it.
        expected: String,
        /// The digest of what arrived.
        found: String,
    },
    /// The signatures found do not meet the trust root's requirement.
    #[error("{reference}: its signatures are not trusted: {why}")]
    Untrusted {
        /// The reference (by digest).
        reference: String,
        /// Why.
        why: String,
    },
    /// No capgate signature refers to the manifest.
    #[error(
        "{reference}: no capgate signature refers to it (hint: sign the file, then `capgate push` it again: the signature is pushed with it)"
    )]
    NoSignature {
        /// The reference (by digest).
        reference: String,
    },
    /// The manifest is not a capgate component or policy bundle, or is malformed.
    #[error("{reference}: {message}")]
    Format {
        /// The reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// A local file could not be read or written.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A local input is missing or unusable (e.g. a signature file to push).
    #[error("{0}")]
    Input(#[from] capgate_signing::Error),
}

impl OciError {
    /// The kind of failure.
    pub fn class(&self) -> FetchClass {
        match self {
            Self::Reference { .. } | Self::Format { .. } => FetchClass::Invalid,
            Self::NotFound { .. } => FetchClass::Missing,
            Self::Digest { .. }
            | Self::NoSignature { .. }
            | Self::Untrusted { .. }
            | Self::Unauthorized { .. } => FetchClass::Trust,
            Self::Registry { .. } | Self::Io { .. } => FetchClass::Io,
            Self::Input(e) => match e.class() {
                capgate_signing::ErrorClass::MissingInput => FetchClass::Missing,
                capgate_signing::ErrorClass::Trust => FetchClass::Trust,
                capgate_signing::ErrorClass::Invalid => FetchClass::Invalid,
                _ => FetchClass::Io,
            },
        }
    }
}

/// How capgate reaches registries and where it caches what it pulled.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// The cache directory [default: `$XDG_CACHE_HOME/capgate-oci`, else
    /// `~/.cache/capgate-oci`].
    pub cache_dir: Option<PathBuf>,
    /// HTTP basic authentication: user name and password.
    pub basic_auth: Option<(String, String)>,
}

impl RegistryOptions {
    /// Options from the environment: `CAPGATE_REGISTRY_USERNAME` and
    /// `CAPGATE_REGISTRY_PASSWORD` (both, or neither, are used), and `CAPGATE_OCI_CACHE` for
    /// the cache directory.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            cache_dir: var("CAPGATE_OCI_CACHE").map(PathBuf::from),
            basic_auth: var("CAPGATE_REGISTRY_USERNAME").zip(var("CAPGATE_REGISTRY_PASSWORD")),
        }
    }

    fn cache_root(&self) -> Result<PathBuf, OciError> {
        self.cache_dir
            .clone()
            // Beside the compilation cache, not in it: wasmtime's cache manager owns that
            // directory and removes files it does not recognise.
            .or_else(|| {
                capgate_signing::default_cache_dir().map(|d| d.with_file_name("capgate-oci"))
            })
            .ok_or_else(|| OciError::Io {
                what: "OCI cache",
                path: PathBuf::from("$XDG_CACHE_HOME"),
                source: std::io::Error::other("neither XDG_CACHE_HOME nor HOME is set"),
            })
    }
}

/// What a reference names: a component or a policy bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A component (CNCF Wasm OCI layout).
    Component,
    /// A policy bundle.
    Policy,
}

/// A manifest pulled and laid out as local files.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The component artifact, or the policy YAML (its rules beside it), in the cache.
    pub path: PathBuf,
    /// The reference pinned by the manifest's digest: `oci://HOST/REPO@sha256:HEX`.
    pub pinned: String,
    /// The digest of the component's layer, or of the policy YAML: what the laid-out file
    /// must hash to.
    pub content: capgate_signing::Sha256,
    /// Whether a signature file was found and laid out beside it.
    pub signed: bool,
}

/// The longest one pull may take, however the registry trickles its answers.
const PULL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Decides whether a signature file pulled for a manifest is trusted (its signatures meet
/// the trust root's requirement), before anything else of the manifest is downloaded.
pub type Trusted<'a> = &'a (dyn Fn(&capgate_signing::SignatureFile) -> Result<(), String> + Sync);

/// What a [`Trusted`] check of a pulled signature file usually is: its signatures meet `req`
/// of `root`, over the statement a `kind` signature covers (digest, size, files). `what`
/// names the pulled reference in errors.
pub fn meets(
    root: &capgate_signing::TrustRoot,
    req: &capgate_signing::Requirement,
    kind: capgate_signing::PayloadKind,
    what: &str,
    sf: &capgate_signing::SignatureFile,
) -> Result<(), String> {
    root.check(Path::new(what), req, &sf.signed_message(kind), sf)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Pulls what `reference` names (verifying every digest), lays it out in the cache, and
/// returns where. With `trusted`, a manifest without a signature file that `trusted`
/// accepts is refused before any of its files is downloaded (and a cached layout whose
/// signature it does not accept is pulled again): what it returns is then always signed. Blocks the calling thread (any thread,
/// inside a tokio runtime or not).
pub fn fetch(
    reference: &str,
    expect: Expect,
    options: &RegistryOptions,
    trusted: Option<Trusted<'_>>,
) -> Result<Fetched, OciError> {
    let r = registry::parse(reference)?;
    let cache = cache::Cache::at(options.cache_root()?)?;
    if let Some(digest) = r.digest()
        && let Some(found) = cache.laid_out(&r, digest, expect, trusted)?
    {
        return Ok(found);
    }
    let options = options.clone();
    block(reference, async move {
        let pull = registry::pull(&r, expect, &options, &cache, trusted);
        tokio::time::timeout(PULL_DEADLINE, pull)
            .await
            .map_err(|_| OciError::Registry {
                reference: reference.to_owned(),
                detail: format!("the pull took longer than {} s", PULL_DEADLINE.as_secs()),
            })?
    })?
}

/// Runs `future` to completion on a thread of its own with its own runtime, so that a caller
/// inside a tokio runtime does not block it and one outside needs none.
fn block<T: Send>(
    reference: &str,
    future: impl std::future::Future<Output = T> + Send,
) -> Result<T, OciError> {
    let failed = |detail: String| OciError::Registry {
        reference: reference.to_owned(),
        detail,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(future))
                .map_err(|e| failed(format!("cannot start the client: {e}")))
        })
        .join()
        .map_err(|_| failed("the registry client panicked".into()))?
    })
}
