//! Policy bundles: signing and verifying a policy YAML together with every file it references.
//!
//! Verification reads each covered file once into memory, checks digests and signatures, and
//! only then parses the YAML, leniently, for the few fields trust depends on (`name`,
//! `version`, `expires`, `rules`). The result, a [`PolicyBundle`], carries the verified bytes so
//! the strict policy parser downstream reads exactly what was checked. The full policy format
//! belongs to the `capgate` crate, not here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::artifact::{OnStale, Signed};
use crate::digest::Sha256;
use crate::envelope::{BundleFile, PayloadKind, SignatureFile, sig_path};
use crate::error::Error;
use crate::key::SecretKey;
use crate::state::StateStore;
use crate::trust::{Role, TrustRoot};

/// The largest rules file capgate will read.
const MAX_RULES_BYTES: u64 = 4 * 1024 * 1024;

#[derive(serde::Deserialize)]
struct RawHeader {
    capgate: Option<Spanned<u64>>,
    name: Option<Spanned<String>>,
    version: Option<Spanned<u64>>,
    expires: Option<Spanned<String>>,
    #[serde(default)]
    rules: Vec<Spanned<String>>,
}

/// The fields of a policy that trust decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyHeader {
    /// The policy's identity, `[a-z0-9-]+`.
    pub name: String,
    /// Its revision, at least 1.
    pub version: u64,
    /// When it stops being valid.
    pub expires: Option<OffsetDateTime>,
    /// The rules files it references, as written.
    pub rules: Vec<String>,
}

/// A top-level key of `yaml` that looks like a misspelling of `want` (a required key that is
/// missing), with its 1-based line: `verison:` for `version`.
fn misspelt<'y>(yaml: &'y [u8], want: &str) -> Option<(u64, &'y str)> {
    let text = std::str::from_utf8(yaml).ok()?;
    text.lines().enumerate().find_map(|(i, l)| {
        let key = l.split_once(':')?.0;
        let plain = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        (plain && key != want && crate::yaml::edit_distance(key, want) <= 2)
            .then_some((i as u64 + 1, key))
    })
}

impl PolicyHeader {
    /// Reads the header fields from policy YAML, ignoring every other key.
    pub fn parse(path: &Path, yaml: &[u8]) -> Result<Self, Error> {
        let raw: RawHeader = crate::yaml::from_slice(path, yaml)?;
        let err = |at: Option<&serde_saphyr::Location>, message: String, hint: Option<&str>| {
            Error::Syntax {
                path: path.to_owned(),
                line: at.map_or(0, |l| l.line()),
                column: at.map_or(0, |l| l.column()),
                message,
                hint: hint.map(str::to_owned),
            }
        };
        // A required key that is missing, perhaps because it is misspelt.
        let missing = |want: &str, message: String, hint: &str| match misspelt(yaml, want) {
            Some((line, found)) => Error::Syntax {
                path: path.to_owned(),
                line,
                column: 1,
                message: format!("unknown key `{found}`, and `{want}` is missing"),
                hint: Some(format!("did you mean `{want}`?")),
            },
            None => err(None, message, Some(hint)),
        };
        match &raw.capgate {
            Some(v) if v.value == 1 => {}
            Some(v) => {
                return Err(err(
                    Some(&v.referenced),
                    format!(
                        "unsupported policy format `capgate: {}`, expected `capgate: 1`",
                        v.value
                    ),
                    None,
                ));
            }
            None => {
                return Err(missing(
                    "capgate",
                    "missing `capgate: 1` (the policy format version)".into(),
                    "add `capgate: 1` as the first line",
                ));
            }
        }
        let name = raw
            .name
            .ok_or_else(|| missing("name", "missing `name`".into(), "add `name: my-app`"))?;
        if name.value.is_empty()
            || !name
                .value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(
                Some(&name.referenced),
                format!(
                    "policy name `{}` is not valid: expected `[a-z0-9-]+`",
                    crate::error::clip(&name.value)
                ),
                None,
            ));
        }
        let version = raw.version.ok_or_else(|| {
            missing(
                "version",
                "missing `version`".into(),
                "add `version: 1` and raise it with every change",
            )
        })?;
        if version.value == 0 {
            return Err(err(
                Some(&version.referenced),
                "`version` must be at least 1".into(),
                None,
            ));
        }
        let expires = match raw.expires {
            None => None,
            Some(e) => Some(OffsetDateTime::parse(&e.value, &Rfc3339).map_err(|_| {
                err(
                    Some(&e.referenced),
                    format!(
                        "`expires: {}` is not an RFC 3339 instant",
                        crate::error::clip(&e.value)
                    ),
                    Some("write e.g. `expires: 2027-06-01T00:00:00Z`"),
                )
            })?),
        };
        let mut rules = Vec::new();
        for r in raw.rules {
            if r.value.is_empty() || Path::new(&r.value).is_absolute() {
                return Err(err(
                    Some(&r.referenced),
                    format!(
                        "rules path `{}` must be relative to the policy file",
                        crate::error::clip(&r.value)
                    ),
                    None,
                ));
            }
            // The signature lists each file under the name the policy gives it, and only a
            // plain path below the policy's directory is read back: `./r.cedar` or
            // `../x/r.cedar` would sign but never verify.
            let plain = Path::new(&r.value)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                let bare = Path::new(&r.value)
                    .components()
                    .filter(|c| matches!(c, std::path::Component::Normal(_)))
                    .collect::<std::path::PathBuf>();
                return Err(err(
                    Some(&r.referenced),
                    format!(
                        "rules path `{}` must be a plain path below the policy's directory, without `.` or `..` parts",
                        crate::error::clip(&r.value)
                    ),
                    Some(&format!(
                        "write `{}`, and keep rules files beside the policy or below it",
                        bare.display()
                    )),
                ));
            }
            rules.push(r.value);
        }
        Ok(Self {
            name: name.value,
            version: version.value,
            expires,
            rules,
        })
    }
}

/// How a [`PolicyBundle`] came to be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provenance {
    /// Signed by these keys of the trust root's `policy` role.
    Signed {
        /// Names of the keys whose signatures counted.
        signers: Vec<String>,
    },
    /// Admitted without a signature by [`crate::danger::unverified_policy`].
    UnsignedForDevelopment,
}

/// A policy YAML and the files it references, as verified. Built only by
/// [`PolicyVerifier::verify`] or [`crate::danger::unverified_policy`].
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    path: PathBuf,
    yaml: Vec<u8>,
    files: BTreeMap<String, Vec<u8>>,
    header: PolicyHeader,
    sha256: Sha256,
    provenance: Provenance,
}

impl PolicyBundle {
    /// The policy file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory that relative paths in the policy are resolved against.
    pub fn dir(&self) -> &Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    /// The policy YAML bytes that were verified.
    pub fn yaml(&self) -> &[u8] {
        &self.yaml
    }

    /// The bytes of a referenced file, by the path the policy names it with.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(Vec::as_slice)
    }

    /// Every referenced file, by the name the policy gives it.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The trust-relevant header fields.
    pub fn header(&self) -> &PolicyHeader {
        &self.header
    }

    /// SHA-256 of the policy YAML.
    pub fn sha256(&self) -> Sha256 {
        self.sha256
    }

    /// Who vouched for it.
    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
}

/// A policy and its referenced files as read from disk, not yet verified.
struct ReadBundle {
    yaml: Vec<u8>,
    header: PolicyHeader,
    files: BTreeMap<String, Vec<u8>>,
    entries: Vec<BundleFile>,
}

/// Reads the policy and the files its `rules` reference.
fn read_bundle(path: &Path) -> Result<ReadBundle, Error> {
    let yaml = crate::error::read_bounded(path, crate::yaml::MAX_YAML_BYTES)?;
    let header = PolicyHeader::parse(path, &yaml)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = BTreeMap::new();
    let mut entries = Vec::new();
    for r in &header.rules {
        let b = crate::error::read_bounded(&dir.join(r), MAX_RULES_BYTES)?;
        entries.push(BundleFile {
            path: r.clone(),
            sha256: Sha256::of(&b),
            size: b.len() as u64,
        });
        files.insert(r.clone(), b);
    }
    Ok(ReadBundle {
        yaml,
        header,
        files,
        entries,
    })
}

/// Signs the policy at `path` and every file it references with `key`, creating or extending
/// `path.sig`. A `path.sig` over other content is refused ([`Error::StaleSignature`]);
/// [`sign_policy_with`] can replace it.
pub fn sign_policy(path: &Path, key: &SecretKey) -> Result<SignatureFile, Error> {
    sign_policy_with(path, key, OnStale::Refuse).map(|s| s.file)
}

/// [`sign_policy`], choosing what happens to a signature file over other content.
pub fn sign_policy_with(path: &Path, key: &SecretKey, on_stale: OnStale) -> Result<Signed, Error> {
    let ReadBundle { yaml, entries, .. } = read_bundle(path)?;
    let sig = sig_path(path);
    let (mut sf, discarded) = crate::artifact::existing_or_new(
        path,
        &sig,
        PayloadKind::Policy,
        Sha256::of(&yaml),
        yaml.len() as u64,
        entries,
        on_stale,
    )?;
    sf.sign(PayloadKind::Policy, key);
    sf.save(&sig)?;
    Ok(Signed {
        file: sf,
        discarded,
    })
}

/// Verifies policy bundles against a trust root, the clock and the rollback state.
#[derive(Debug)]
pub struct PolicyVerifier<'a> {
    trust: &'a TrustRoot,
    state: &'a StateStore,
    now: OffsetDateTime,
    record: bool,
}

impl<'a> PolicyVerifier<'a> {
    /// A verifier using the current time.
    pub fn new(trust: &'a TrustRoot, state: &'a StateStore) -> Self {
        Self {
            trust,
            state,
            now: OffsetDateTime::now_utc(),
            record: true,
        }
    }

    /// Checks rollback against the state but does not record the version as accepted (for
    /// read-only checks such as `capgate policy check`).
    pub fn check_only(mut self) -> Self {
        self.record = false;
        self
    }

    /// Judges expiry as of `now` instead of the current time.
    pub fn at(mut self, now: OffsetDateTime) -> Self {
        self.now = now;
        self
    }

    /// Verifies the policy at `path` (signature file `path.sig`): content digests, signatures
    /// by the `policy` role, coverage of every referenced file, expiry, then rollback. On
    /// success the version is recorded as accepted.
    pub fn verify(&self, path: &Path) -> Result<PolicyBundle, Error> {
        let sig = crate::artifact::load_sig(path, PayloadKind::Policy)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let yaml = crate::error::read_bounded(path, crate::yaml::MAX_YAML_BYTES)?;
        let sha256 = Sha256::of(&yaml);
        if sig.sha256 != sha256 || sig.size != yaml.len() as u64 {
            return Err(Error::ContentMismatch {
                path: path.to_owned(),
                digests: Box::new(crate::error::Digests {
                    expected: sig.sha256,
                    expected_size: sig.size,
                    found: sha256,
                    found_size: yaml.len() as u64,
                }),
            });
        }
        // The statement (the YAML's digest and the list of files with theirs) is checked
        // before any listed file is read: an unsigned list names nothing capgate reads.
        let signers = self.trust.check(
            path,
            &self.trust.role(Role::Policy),
            &sig.signed_message(PayloadKind::Policy),
            &sig,
        )?;
        let mut files = BTreeMap::new();
        for f in &sig.files {
            let inside = Path::new(&f.path)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside {
                return Err(Error::NotCovered {
                    path: path.to_owned(),
                    file: f.path.clone(),
                });
            }
            let file_path = dir.join(&f.path);
            let b = crate::error::read_bounded(&file_path, MAX_RULES_BYTES)?;
            let d = Sha256::of(&b);
            if d != f.sha256 || b.len() as u64 != f.size {
                return Err(Error::ContentMismatch {
                    path: file_path,
                    digests: Box::new(crate::error::Digests {
                        expected: f.sha256,
                        expected_size: f.size,
                        found: d,
                        found_size: b.len() as u64,
                    }),
                });
            }
            files.insert(f.path.clone(), b);
        }
        // Only now, with every byte vouched for, is the YAML parsed.
        let header = PolicyHeader::parse(path, &yaml)?;
        if let Some(missing) = header.rules.iter().find(|r| !files.contains_key(*r)) {
            return Err(Error::NotCovered {
                path: path.to_owned(),
                file: missing.clone(),
            });
        }
        check_expiry(path, &header, self.now)?;
        if self.record {
            self.state
                .accept_content(path, &header.name, header.version, Some(&sha256))?;
        } else if let Some(highest) = self.state.highest(&header.name)? {
            if header.version < highest {
                return Err(Error::Rollback {
                    path: path.to_owned(),
                    name: header.name.clone(),
                    version: header.version,
                    highest,
                });
            }
            if header.version == highest
                && self
                    .state
                    .highest_digest(&header.name)?
                    .is_some_and(|d| d != sha256.to_string())
            {
                return Err(Error::VersionReused {
                    path: path.to_owned(),
                    name: header.name.clone(),
                    version: header.version,
                });
            }
        }
        Ok(PolicyBundle {
            path: path.to_owned(),
            yaml,
            files,
            header,
            sha256,
            provenance: Provenance::Signed { signers },
        })
    }
}

fn check_expiry(path: &Path, header: &PolicyHeader, now: OffsetDateTime) -> Result<(), Error> {
    match header.expires {
        Some(at) if now >= at => Err(Error::Expired {
            path: path.to_owned(),
            name: header.name.clone(),
            // INVARIANT: an instant parsed from RFC 3339 formats back to RFC 3339.
            expires: at.format(&Rfc3339).unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn unverified(path: &Path, now: OffsetDateTime) -> Result<PolicyBundle, Error> {
    let ReadBundle {
        yaml,
        header,
        files,
        ..
    } = read_bundle(path)?;
    check_expiry(path, &header, now)?;
    Ok(PolicyBundle {
        path: path.to_owned(),
        sha256: Sha256::of(&yaml),
        yaml,
        files,
        header,
        provenance: Provenance::UnsignedForDevelopment,
    })
}
