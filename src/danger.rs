//! What gives up a protection, named for what it gives up. For local development and for
//! hosts that enforce the same thing another way; never reached by omission.

use std::path::Path;

use crate::VerifiedPolicy;
use crate::policy::PolicyError;

/// Loads a policy and its artifacts **without checking any signature** and without
/// rollback protection. Digest pins and expiry are still enforced.
pub fn load_unsigned_policy(path: &Path) -> Result<VerifiedPolicy, PolicyError> {
    let bundle = capgate_signing::danger::unverified_policy(path)?;
    VerifiedPolicy::from_bundle(bundle, None)
}

/// A host configuration under which components whose policy sets no `limits.timeout` or
/// `limits.fuel` run **without a time or fuel limit**, as they did before capgate applied
/// [`defaults::TIMEOUT`](crate::policy::defaults::TIMEOUT) and
/// [`defaults::FUEL`](crate::policy::defaults::FUEL). One busy guest can then hold a thread
/// for ever.
#[cfg(feature = "runtime")]
pub fn no_default_limits(mut config: crate::HostConfig) -> crate::HostConfig {
    config.fallback = crate::runtime::Fallback::NONE;
    config
}
