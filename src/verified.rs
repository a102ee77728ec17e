//! `VerifiedPolicy`: the proof that a policy and every artifact it names passed verification.
//!
//! This is the only input the runtime accepts. It is built by [`VerifiedPolicy::load`] (policy
//! signature by the trust root's `policy` role, expiry, rollback; each artifact's digest pin
//! and signature by `signed_by` keys or the `artifact` role) or, for local development only,
//! by [`crate::danger::load_unsigned_policy`]. Host directories are opened here, once, as
//! capability handles; nothing later resolves a grant's path again.

use std::collections::BTreeMap;
use std::path::Path;

use capgate_signing::{
    PolicyBundle, PolicyVerifier, Provenance, Role, StateStore, TrustRoot, VerifiedArtifact,
};

use crate::authz::{Authority, Identity};
use crate::policy::{self, Policy, PolicyError};

use crate::policy::MAX_ARTIFACT_BYTES;

/// A policy whose signatures, freshness and artifacts have all been checked, compiled and
/// ready to run.
#[derive(Debug, Clone)]
pub struct VerifiedPolicy {
    /// Distinguishes verified policies within this process (clones share it).
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    id: u64,
    policy: Policy,
    authority: Authority,
    artifacts: BTreeMap<String, VerifiedArtifact>,
    provenance: Provenance,
    expires: Option<time::OffsetDateTime>,
    /// The verified bundle, kept to be recorded by [`VerifiedPolicy::accept`].
    bundle: Option<std::sync::Arc<PolicyBundle>>,
    #[cfg(feature = "runtime")]
    pub(crate) dirs: BTreeMap<String, Vec<std::sync::Arc<cap_std::fs::Dir>>>,
}

impl VerifiedPolicy {
    /// Verifies the policy at `path` and every component artifact it names, against `trust`.
    /// Only once all of it has loaded is the version recorded in `state` as accepted, so a
    /// signed but broken new version cannot lock out the working one.
    /// A copy of the accepted bundle is kept in `state` for later versions to be compared
    /// with ([`StateStore::keep`]); failing to keep it does not fail the load.
    pub fn load(path: &Path, trust: &TrustRoot, state: &StateStore) -> Result<Self, PolicyError> {
        let loaded = Self::check(path, trust, state)?;
        loaded.accept(state)?;
        Ok(loaded)
    }

    /// Like [`VerifiedPolicy::load`], but does not record the version as accepted: a host that
    /// must first see the policy work (`serve --poll` checks that it can serve) calls
    /// [`VerifiedPolicy::accept`] once it does.
    pub fn check(path: &Path, trust: &TrustRoot, state: &StateStore) -> Result<Self, PolicyError> {
        let bundle = PolicyVerifier::new(trust, state)
            .check_only()
            .verify(path)?;
        let kept = std::sync::Arc::new(bundle.clone());
        let mut loaded = Self::from_bundle(bundle, Some(trust))?;
        loaded.bundle = Some(kept);
        Ok(loaded)
    }

    /// Records this verified version in `state` as accepted (rollback protection: no older
    /// version of its name loads after it), and keeps a copy of its bundle there. The check
    /// is made again under the state's lock, so a newer version accepted meanwhile wins.
    pub fn accept(&self, state: &StateStore) -> Result<(), PolicyError> {
        let p = &self.policy;
        state.accept_content(&p.path, &p.name, p.version, Some(&p.sha256))?;
        if let Some(bundle) = &self.bundle {
            let _ = state.keep(bundle);
        }
        Ok(())
    }

    pub(crate) fn from_bundle(
        bundle: PolicyBundle,
        trust: Option<&TrustRoot>,
    ) -> Result<Self, PolicyError> {
        let provenance = bundle.provenance().clone();
        let expires = bundle.header().expires;
        let policy = resolve(fetch_sources(policy::parse(&bundle)?, trust)?)?;
        let mut artifacts = BTreeMap::new();
        for (name, c) in &policy.components {
            let bytes = read_artifact(&c.artifact)?;
            if let Some(pin) = c.sha256 {
                let found = capgate_signing::Sha256::of(&bytes);
                if found != pin {
                    return Err(PolicyError::PinMismatch {
                        component: name.clone(),
                        artifact: c.artifact.clone(),
                        expected: pin,
                        found,
                    });
                }
            }
            let artifact = match trust {
                Some(trust) => {
                    let req = if c.signed_by.is_empty() {
                        trust.role(Role::Artifact)
                    } else {
                        trust.any_of(&c.signed_by).map_err(|capgate_signing::UnknownKey { name: missing, .. }| PolicyError::Invalid {
                            path: policy.path.clone(),
                            line: 0,
                            column: 0,
                            message: format!("{name}.signed_by: key `{missing}` is not in the trust root `{}`", trust.path().display()),
                            hint: Some("name keys as the trust root's `keys` section does".into()),
                        })?
                    };
                    VerifiedArtifact::verify(&c.artifact, bytes, trust, &req)?
                }
                None => capgate_signing::danger::unverified_artifact(&c.artifact, bytes),
            };
            artifacts.insert(name.clone(), artifact);
        }
        let authority = Authority::compile(&policy, |name| Identity {
            sha256: artifacts
                .get(name)
                .map(|a| a.report().sha256.to_string())
                .unwrap_or_default(),
            signers: artifacts
                .get(name)
                .map(|a| a.report().signers.clone())
                .unwrap_or_default(),
        })?;
        #[cfg(feature = "runtime")]
        let dirs = open_dirs(&policy)?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Self {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            policy,
            authority,
            artifacts,
            provenance,
            expires,
            bundle: None,
            #[cfg(feature = "runtime")]
            dirs,
        })
    }

    /// An identifier of this verification, unique within the process.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The parsed policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The compiled decision function.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The verified artifact of a component.
    pub fn artifact(&self, component: &str) -> Option<&VerifiedArtifact> {
        self.artifacts.get(component)
    }

    /// When the policy stops being valid (its `expires`), if it says.
    pub fn expires(&self) -> Option<time::OffsetDateTime> {
        self.expires
    }

    /// Whether the policy has expired by now: nothing of it may run any more.
    pub fn expired(&self) -> bool {
        self.expires
            .is_some_and(|at| time::OffsetDateTime::now_utc() >= at)
    }

    /// Who signed the policy, or that it was admitted unsigned.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
}

/// Pulls every component the policy names by an `oci://` reference ([`crate::oci`]) and
/// points its artifact at the pulled file, pinned (unless the policy pins it itself) by the
/// digest of the layer the manifest names, so the bytes verified are the bytes the
/// reference names. The reference becomes the one pinned by the manifest's digest.
fn fetch_sources(mut policy: Policy, trust: Option<&TrustRoot>) -> Result<Policy, PolicyError> {
    for (name, c) in &mut policy.components {
        let Some(reference) = c.source.clone() else {
            continue;
        };
        let fail = |message: String, class| PolicyError::Fetch {
            path: policy.path.clone(),
            line: c.artifact_at.line,
            column: c.artifact_at.column,
            what: format!("component `{name}`: artifact `{reference}`"),
            message,
            class,
        };
        #[cfg(feature = "oci")]
        {
            use crate::oci::{Expect, RegistryOptions, fetch, meets};
            // The signatures must meet what the artifact's own verification will require:
            // its `signed_by` keys, else the trust root's `artifact` role.
            let req = match trust {
                Some(t) if c.signed_by.is_empty() => Some(t.role(Role::Artifact)),
                Some(t) => t.any_of(&c.signed_by).ok(),
                None => None,
            };
            let check = |sf: &capgate_signing::SignatureFile| match (trust, &req) {
                (Some(t), Some(req)) => meets(
                    t,
                    req,
                    capgate_signing::PayloadKind::Artifact,
                    &reference,
                    sf,
                ),
                _ => Err("a `signed_by` key is not in the trust root".to_owned()),
            };
            let trusted: Option<crate::oci::Trusted<'_>> = trust.map(|_| &check as _);
            let got = fetch(
                &reference,
                Expect::Component,
                &RegistryOptions::from_env(),
                trusted,
            )
            .map_err(|e| fail(e.to_string(), e.class()))?;
            c.sha256.get_or_insert(got.content);
            c.artifact = got.path;
            c.source = Some(got.pinned);
        }
        #[cfg(not(feature = "oci"))]
        {
            let _ = trust;
            return Err(fail(
                "this build of capgate cannot pull from registries (feature `oci`)".into(),
                crate::policy::FetchClass::Invalid,
            ));
        }
    }
    Ok(policy)
}

/// Resolves a parsed policy against the filesystem: every artifact must be a file, every
/// host directory is canonicalised (symlinks followed once, here) and must be a directory.
/// Errors name the line of the policy that references the path.
fn resolve(mut policy: Policy) -> Result<Policy, PolicyError> {
    let file = policy.path.clone();
    let missing = |at: (u64, u64), what: String, missing: &Path| PolicyError::MissingFile {
        path: file.clone(),
        line: at.0,
        column: at.1,
        what,
        file: missing.to_owned(),
    };
    for (name, c) in &mut policy.components {
        if !c.artifact.is_file() {
            return Err(missing(
                (c.artifact_at.line, c.artifact_at.column),
                format!("component `{name}`: artifact"),
                &c.artifact,
            ));
        }
        for (i, f) in c.files.iter_mut().enumerate() {
            let field = format!("{name}.files[{i}]");
            f.host = match std::fs::canonicalize(&f.host) {
                Ok(h) if h.is_dir() => h,
                Ok(h) => {
                    return Err(PolicyError::Invalid {
                        path: file.clone(),
                        line: f.at.line,
                        column: f.at.column,
                        message: format!("{field}: host path `{}` is not a directory", h.display()),
                        hint: Some("grant the directory that contains it".into()),
                    });
                }
                Err(_) => {
                    return Err(missing(
                        (f.at.line, f.at.column),
                        format!("{field}: host directory"),
                        &f.host,
                    ));
                }
            };
        }
    }
    Ok(policy)
}

fn read_artifact(path: &Path) -> Result<Vec<u8>, PolicyError> {
    Ok(capgate_signing::read_regular(path, MAX_ARTIFACT_BYTES)?)
}

/// Opens every granted host directory once, as a capability handle.
#[cfg(feature = "runtime")]
fn open_dirs(
    policy: &Policy,
) -> Result<BTreeMap<String, Vec<std::sync::Arc<cap_std::fs::Dir>>>, PolicyError> {
    let mut out = BTreeMap::new();
    for (name, c) in &policy.components {
        let mut dirs = Vec::new();
        for f in &c.files {
            let dir = cap_std::fs::Dir::open_ambient_dir(&f.host, cap_std::ambient_authority())
                .map_err(|source| {
                    PolicyError::Signing(capgate_signing::Error::Io {
                        path: f.host.clone(),
                        source,
                    })
                })?;
            dirs.push(std::sync::Arc::new(dir));
        }
        out.insert(name.clone(), dirs);
    }
    Ok(out)
}
