//! Trust roots: named public keys, and roles (`policy`, `artifact`, `audit`) with thresholds.
//!
//! A [`TrustRoot`] is the only source of trust in capgate. This module loads it strictly and
//! counts valid signatures toward a [`Requirement`]: each distinct key counts once, however many
//! names or entries it appears under. It never reads the signed content itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use crate::envelope::SignatureFile;
use crate::error::{Error, SignatureProblem};
use crate::key::{KeyId, PublicKey};

/// The roles a trust root may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Role {
    /// May sign policies.
    Policy,
    /// May sign component artifacts.
    Artifact,
    /// May sign audit-log checkpoints.
    Audit,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Policy => "policy",
            Self::Artifact => "artifact",
            Self::Audit => "audit",
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(rename = "capgate-trust")]
    format: Spanned<u32>,
    keys: BTreeMap<String, Spanned<RawKey>>,
    #[serde(default)]
    roles: RawRoles,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RawKey {
    File(String),
    Spec(RawKeySpec),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeySpec {
    file: Option<String>,
    pem: Option<String>,
    keyid: Option<String>,
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    policy: Option<Spanned<RawRole>>,
    artifact: Option<Spanned<RawRole>>,
    audit: Option<Spanned<RawRole>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    keys: Vec<Spanned<String>>,
    threshold: Spanned<usize>,
}

/// A set of keys that may sign something, and how many distinct ones must.
#[derive(Debug, Clone)]
pub struct Requirement {
    what: String,
    keys: Vec<(KeyId, String)>,
    threshold: usize,
}

impl Requirement {
    /// What this requirement is, for messages: "role `policy`" or "keys {a, b}".
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// How many distinct keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

/// A loaded, validated trust root.
#[derive(Debug, Clone)]
pub struct TrustRoot {
    path: PathBuf,
    keys: BTreeMap<String, PublicKey>,
    by_id: BTreeMap<KeyId, String>,
    roles: BTreeMap<Role, (Vec<String>, usize)>,
}

impl TrustRoot {
    /// Loads a trust root YAML file; key files are resolved relative to it.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = crate::error::read_bounded(path, crate::yaml::MAX_YAML_BYTES)?;
        let raw: RawTrust = crate::yaml::from_slice(path, &bytes)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::build(path, dir, raw)
    }

    /// Parses a trust root from YAML text; key files are resolved relative to `dir`.
    pub fn from_yaml(path: &Path, dir: &Path, text: &str) -> Result<Self, Error> {
        let raw: RawTrust = crate::yaml::from_str(path, text)?;
        Self::build(path, dir, raw)
    }

    fn build(path: &Path, dir: &Path, raw: RawTrust) -> Result<Self, Error> {
        let bad =
            |at: &serde_saphyr::Location, message: String, hint: Option<&str>| Error::Syntax {
                path: path.to_owned(),
                line: at.line(),
                column: at.column(),
                message,
                hint: hint.map(str::to_owned),
            };
        if raw.format.value != 1 {
            return Err(bad(
                &raw.format.referenced,
                format!(
                    "unsupported `capgate-trust` version {}, expected 1",
                    raw.format.value
                ),
                None,
            ));
        }
        let mut keys = BTreeMap::new();
        let mut by_id: BTreeMap<KeyId, String> = BTreeMap::new();
        for (name, entry) in raw.keys {
            let at = &entry.referenced;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(bad(
                    at,
                    format!(
                        "key name `{}` is not valid: expected letters, digits, `-`, `_` or `.`",
                        crate::error::clip(&name)
                    ),
                    None,
                ));
            }
            let (key, pin) = match entry.value {
                RawKey::File(f) => (PublicKey::load(&dir.join(f))?, None),
                RawKey::Spec(RawKeySpec {
                    file: Some(f),
                    pem: None,
                    keyid,
                }) => (PublicKey::load(&dir.join(f))?, keyid),
                RawKey::Spec(RawKeySpec {
                    file: None,
                    pem: Some(p),
                    keyid,
                }) => (
                    PublicKey::from_pem(&p)
                        .map_err(|e| bad(at, format!("key `{name}`: {e}"), None))?,
                    keyid,
                ),
                RawKey::Spec(_) => {
                    return Err(bad(
                        at,
                        format!("key `{name}` must give exactly one of `file` or `pem`"),
                        Some(
                            "write `name: path/to/key.pub` or `name: { pem: \"-----BEGIN PUBLIC KEY-----...\" }`",
                        ),
                    ));
                }
            };
            if let Some(pin) = pin
                && pin != key.id().to_string()
            {
                return Err(bad(
                    at,
                    format!(
                        "key `{name}` has key id `{}`, not the pinned `{}`",
                        key.id(),
                        crate::error::clip(&pin)
                    ),
                    Some("the key file was replaced, or the pin is wrong"),
                ));
            }
            if let Some(other) = by_id.get(&key.id()) {
                return Err(bad(
                    at,
                    format!(
                        "keys `{other}` and `{name}` are the same key (key id `{}`)",
                        key.id()
                    ),
                    Some("give each key one name, so thresholds count distinct keys"),
                ));
            }
            by_id.insert(key.id(), name.clone());
            keys.insert(name, key);
        }
        let mut roles = BTreeMap::new();
        for (role, spec) in [
            (Role::Policy, raw.roles.policy),
            (Role::Artifact, raw.roles.artifact),
            (Role::Audit, raw.roles.audit),
        ] {
            let Some(spec) = spec else { continue };
            let mut names = Vec::new();
            for k in &spec.value.keys {
                if !keys.contains_key(&k.value) {
                    return Err(bad(
                        &k.referenced,
                        format!(
                            "role `{role}` names key `{}`, which `keys` does not define",
                            crate::error::clip(&k.value)
                        ),
                        None,
                    ));
                }
                if names.contains(&k.value) {
                    return Err(bad(
                        &k.referenced,
                        format!("role `{role}` lists key `{}` twice", k.value),
                        None,
                    ));
                }
                names.push(k.value.clone());
            }
            let t = spec.value.threshold.value;
            if t == 0 || t > names.len() {
                return Err(bad(
                    &spec.value.threshold.referenced,
                    format!(
                        "role `{role}` has threshold {t}, expected 1 to {} (the number of its keys)",
                        names.len()
                    ),
                    None,
                ));
            }
            roles.insert(role, (names, t));
        }
        Ok(Self {
            path: path.to_owned(),
            keys,
            by_id,
            roles,
        })
    }

    /// The file this trust root was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key with this name.
    pub fn key(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name)
    }

    /// The trust root's name for a key id.
    pub fn name_of(&self, id: &KeyId) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// What signing for `role` requires. A role the trust root does not define can be met by
    /// no one.
    pub fn role(&self, role: Role) -> Requirement {
        let (names, threshold) = self.roles.get(&role).cloned().unwrap_or((Vec::new(), 1));
        self.requirement(format!("role `{role}`"), &names, threshold)
    }

    /// Whether this trust root defines `role` (with at least one key).
    pub fn has_role(&self, role: Role) -> bool {
        self.roles
            .get(&role)
            .is_some_and(|(names, _)| !names.is_empty())
    }

    /// One valid signature by any of the named keys (a policy's `signed_by`). Unknown names
    /// are an error naming them.
    pub fn any_of(&self, names: &[String]) -> Result<Requirement, UnknownKey> {
        if let Some(missing) = names.iter().find(|n| !self.keys.contains_key(*n)) {
            return Err(UnknownKey {
                name: missing.clone(),
            });
        }
        let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        Ok(self.requirement(format!("`signed_by` {{{}}}", quoted.join(", ")), names, 1))
    }

    fn requirement(&self, what: String, names: &[String], threshold: usize) -> Requirement {
        let keys = names
            .iter()
            .filter_map(|n| self.keys.get(n).map(|k| (k.id(), n.clone())))
            .collect();
        Requirement {
            what,
            keys,
            threshold,
        }
    }

    /// Counts the valid signatures in `sigs` over `message` toward `req`. Returns the names of
    /// the keys that signed, or [`Error::NotTrusted`] listing what did not count.
    pub fn check(
        &self,
        path: &Path,
        req: &Requirement,
        message: &[u8],
        sigs: &SignatureFile,
    ) -> Result<Vec<String>, Error> {
        self.check_signatures(path, req, message, &sigs.signatures)
    }

    /// Like [`TrustRoot::check`], for signatures kept somewhere other than a signature file
    /// (an audit checkpoint carries its own).
    pub fn check_signatures(
        &self,
        path: &Path,
        req: &Requirement,
        message: &[u8],
        signatures: &[crate::SignatureEntry],
    ) -> Result<Vec<String>, Error> {
        let mut valid = BTreeSet::new();
        let mut problems = Vec::new();
        for entry in signatures {
            let Some(name) = self.by_id.get(&entry.keyid) else {
                problems.push(SignatureProblem::UnknownKey { keyid: entry.keyid });
                continue;
            };
            if !req.keys.iter().any(|(id, _)| *id == entry.keyid) {
                problems.push(SignatureProblem::NotAllowed {
                    name: name.clone(),
                    keyid: entry.keyid,
                });
                continue;
            }
            let key = &self.keys[name];
            let ok =
                SignatureFile::decode(entry).is_some_and(|sig| key.verify_strict(message, &sig));
            if !ok {
                problems.push(SignatureProblem::BadSignature {
                    name: name.clone(),
                    keyid: entry.keyid,
                });
            } else if !valid.insert(name.clone()) {
                problems.push(SignatureProblem::Duplicate { name: name.clone() });
            }
        }
        if valid.len() >= req.threshold && !req.keys.is_empty() {
            return Ok(valid.into_iter().collect());
        }
        Err(Error::NotTrusted {
            path: path.to_owned(),
            shortfall: Box::new(crate::error::Shortfall {
                what: req.what.clone(),
                threshold: req.threshold,
                accepted: req.keys.iter().map(|(_, n)| n.clone()).collect(),
                valid: valid.into_iter().collect(),
                problems,
            }),
        })
    }
}

/// A key name the trust root does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{name}` is not in the trust root")]
#[non_exhaustive]
pub struct UnknownKey {
    /// The name asked for.
    pub name: String,
}
