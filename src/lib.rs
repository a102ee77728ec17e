//! capgate runs WebAssembly components under signed, capability-based policies.
//!
//! Data flows one way: verified bytes ([`signing`]) → parsed policy ([`policy`]) → compiled
//! authorisation ([`authz`]) → running components → decisions. Signing and trust live in the
//! [`signing`] crate (re-exported here), which has no WebAssembly runtime dependency so build
//! pipelines can sign without it.
//!
//! A host application verifies a policy once and runs its components on one [`Host`]:
//!
//! ```no_run
//! # #[cfg(feature = "runtime")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::sync::Arc;
//!
//! use capgate::signing::{StateStore, TrustRoot};
//! use capgate::{Host, HostConfig, VerifiedPolicy};
//!
//! let trust = TrustRoot::load(Path::new("trust.yaml"))?;
//! let state = StateStore::at("/var/lib/capgate");
//! // Signatures, expiry, rollback, digest pins and artifact signatures are all checked here.
//! let policy = Arc::new(VerifiedPolicy::load(Path::new("policy.yaml"), &trust, &state)?);
//!
//! let host = Host::new(HostConfig::new().observe(|event| {
//!     if !event.decision.allowed {
//!         eprintln!("{} {} {}: {}", event.component, event.action, event.resource, event.decision.explain());
//!     }
//! }))?;
//! let exit = host.run(&policy, "app", &["--verbose".to_owned()]).await?;
//! # let _ = exit;
//! # Ok(()) }
//! ```
//!
//! `examples/embed.rs` is a complete host application built on this.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod authz;
#[cfg(feature = "runtime")]
mod broker;
#[cfg(feature = "runtime")]
pub mod grant;
#[cfg(feature = "runtime")]
mod host;
#[cfg(feature = "runtime")]
pub mod inspect;
pub mod policy;
#[cfg(feature = "runtime")]
pub mod serve;
mod verified;

#[cfg(feature = "runtime")]
pub use host::{Host, HostConfig, RunError};
pub use verified::VerifiedPolicy;

/// Loading policies without signatures. For local development only.
pub mod danger {
    use std::path::Path;

    use crate::VerifiedPolicy;
    use crate::policy::PolicyError;

    /// Loads a policy and its artifacts **without checking any signature** and without
    /// rollback protection. Digest pins and expiry are still enforced.
    pub fn load_unsigned_policy(path: &Path) -> Result<VerifiedPolicy, PolicyError> {
        let bundle = capgate_signing::danger::unverified_policy(path)?;
        VerifiedPolicy::from_bundle(bundle, None)
    }
}

pub use capgate_signing as signing;
