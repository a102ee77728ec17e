//! Keys, detached signatures and trust roots for capgate.
//!
//! This crate is what a build pipeline needs to sign component artifacts and policies, and what
//! a host needs to verify them before anything runs. It has no WebAssembly runtime dependency.
//!
//! - [`SecretKey`] / [`PublicKey`]: Ed25519 keys in PKCS#8 / SPKI PEM, [`KeyId`]s.
//! - [`SignatureFile`]: the detached `FILE.sig` (DSSE PAE over a statement of the content).
//! - [`TrustRoot`]: named keys and roles with thresholds.
//! - [`sign_artifact`], [`VerifiedArtifact`], [`verify_artifact_file`]: artifacts.
//! - [`sign_policy`], [`PolicyVerifier`], [`PolicyBundle`]: policies, with expiry and
//!   rollback protection through a [`StateStore`].
//!
//! ```
//! use capgate_signing::{SecretKey, TrustRoot, Role, sign_artifact, verify_artifact_file};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let key = SecretKey::generate();
//! key.save_pair(&dir.path().join("release"), false)?;
//! std::fs::write(dir.path().join("trust.yaml"),
//!     "capgate-trust: 1\nkeys: { release: release.pub }\n\
//!      roles: { artifact: { keys: [release], threshold: 1 } }\n")?;
//! std::fs::write(dir.path().join("app.wasm"), b"\0asm...")?;
//!
//! sign_artifact(&dir.path().join("app.wasm"), &key)?;
//! let trust = TrustRoot::load(&dir.path().join("trust.yaml"))?;
//! let report = verify_artifact_file(&dir.path().join("app.wasm"), &trust, &trust.role(Role::Artifact))?;
//! assert_eq!(report.signers, ["release"]);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod artifact;
mod digest;
mod envelope;
mod error;
mod key;
mod policy;
mod state;
mod trust;
pub mod yaml;

pub use artifact::{
    ArtifactReport, OnStale, Signed, VerifiedArtifact, sign_artifact, sign_artifact_with,
    verify_artifact_file,
};
pub use digest::{ParseDigestError, Sha256};
pub use envelope::{BundleFile, PayloadKind, SignatureEntry, SignatureFile, pae, sig_path};
pub use error::{Digests, Error, ErrorClass, Shortfall, SignatureProblem, read_regular};
pub use key::{KeyId, ParseKeyIdError, PublicKey, SecretKey};
pub use policy::{
    PolicyBundle, PolicyHeader, PolicyVerifier, Provenance, sign_policy, sign_policy_with,
};
pub use state::{StateStore, default_cache_dir};
pub use trust::{Requirement, Role, TrustRoot, UnknownKey};

/// Admitting unsigned inputs. For local development only: nothing here checks a signature.
pub mod danger {
    use std::path::Path;

    use crate::{Error, PolicyBundle, VerifiedArtifact};

    /// Reads a policy and its referenced files without checking any signature or recording a
    /// version for rollback protection. Expiry is still enforced.
    pub fn unverified_policy(path: &Path) -> Result<PolicyBundle, Error> {
        crate::policy::unverified(path, time::OffsetDateTime::now_utc())
    }

    /// Wraps artifact bytes without checking any signature.
    pub fn unverified_artifact(path: &Path, bytes: Vec<u8>) -> VerifiedArtifact {
        VerifiedArtifact::unverified(path, bytes)
    }
}
