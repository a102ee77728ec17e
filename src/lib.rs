//! capgate runs WebAssembly components under signed, capability-based policies.
//!
//! Data flows one way: verified bytes ([`signing`]) → parsed policy ([`policy`]) → compiled
//! authorisation ([`authz`]) → running components → decisions. Signing and trust live in the
//! [`signing`] crate (re-exported here), which has no WebAssembly runtime dependency so build
//! pipelines can sign without it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod authz;
#[cfg(feature = "runtime")]
pub mod grant;
#[cfg(feature = "runtime")]
mod host;
#[cfg(feature = "runtime")]
pub mod inspect;
pub mod policy;
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
