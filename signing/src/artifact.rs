//! Signing and verifying component artifacts.
//!
//! An artifact is verified before anything parses or compiles it. Two entry points: a
//! streaming check of a file (one pass of SHA-256, no copy in memory), and a check of bytes
//! already in memory that yields a [`VerifiedArtifact`], the proof a runtime compiles from, so
//! the bytes checked are the bytes run.

use std::path::{Path, PathBuf};

use crate::digest::Sha256;
use crate::envelope::{PayloadKind, SignatureFile, sig_path};
use crate::error::Error;
use crate::key::SecretKey;
use crate::trust::{Requirement, TrustRoot};

/// Signs the artifact at `path` with `key`, creating or extending `path.sig`. Returns the
/// signature file written. A `path.sig` over other content is refused
/// ([`Error::StaleSignature`]); [`sign_artifact_with`] can replace it.
pub fn sign_artifact(path: &Path, key: &SecretKey) -> Result<SignatureFile, Error> {
    sign_artifact_with(path, key, OnStale::Refuse).map(|s| s.file)
}

/// What signing does with an existing signature file over content the file no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStale {
    /// Refuse ([`Error::StaleSignature`]): its signatures were someone's approval of the old
    /// content, and nothing is discarded silently.
    Refuse,
    /// Discard its signatures and start a new file with this one.
    Replace,
}

/// A signature file just written.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signature file as written.
    pub file: SignatureFile,
    /// Signatures over older content that were discarded ([`OnStale::Replace`]).
    pub discarded: usize,
}

/// [`sign_artifact`], choosing what happens to a signature file over other content.
pub fn sign_artifact_with(
    path: &Path,
    key: &SecretKey,
    on_stale: OnStale,
) -> Result<Signed, Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let (sha256, size) = Sha256::of_reader(file).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let sig = sig_path(path);
    let (mut sf, discarded) = existing_or_new(
        path,
        &sig,
        PayloadKind::Artifact,
        sha256,
        size,
        Vec::new(),
        on_stale,
    )?;
    sf.sign(PayloadKind::Artifact, key);
    sf.save(&sig)?;
    Ok(Signed {
        file: sf,
        discarded,
    })
}

/// Loads the signature file `sig` if it exists and covers exactly this content, else starts a
/// new one. An existing file for other content is refused, since appending to it would mix
/// signatures over different bytes, unless `on_stale` says to replace it; the second value
/// is how many signatures were discarded.
pub(crate) fn existing_or_new(
    path: &Path,
    sig: &Path,
    kind: PayloadKind,
    sha256: Sha256,
    size: u64,
    files: Vec<crate::envelope::BundleFile>,
    on_stale: OnStale,
) -> Result<(SignatureFile, usize), Error> {
    if !sig.exists() {
        return Ok((SignatureFile::new(kind, sha256, size, files), 0));
    }
    let sf = SignatureFile::load(sig)?;
    sf.expect_kind(sig, kind)?;
    if sf.sha256 != sha256 || sf.size != size || sf.files != files {
        return match on_stale {
            OnStale::Refuse => Err(Error::StaleSignature {
                path: path.to_owned(),
                sig: sig.to_owned(),
                signatures: sf.signatures.len(),
            }),
            OnStale::Replace => Ok((
                SignatureFile::new(kind, sha256, size, files),
                sf.signatures.len(),
            )),
        };
    }
    Ok((sf, 0))
}

/// What a successful artifact check established.
#[derive(Debug, Clone)]
pub struct ArtifactReport {
    /// Digest of the artifact.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Names (in the trust root) of the keys whose signatures counted.
    pub signers: Vec<String>,
}

/// Verifies the artifact file at `path` against `path.sig`, streaming its bytes once.
pub fn verify_artifact_file(
    path: &Path,
    trust: &TrustRoot,
    req: &Requirement,
) -> Result<ArtifactReport, Error> {
    let sig = load_sig(path, PayloadKind::Artifact)?;
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let (sha256, size) =
        Sha256::of_reader(std::io::BufReader::new(file)).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    let signers = check(path, &sig, sha256, size, trust, req)?;
    Ok(ArtifactReport {
        sha256,
        size,
        signers,
    })
}

/// Component bytes whose signature has been checked: the only input a runtime should compile.
#[derive(Debug, Clone)]
pub struct VerifiedArtifact {
    path: PathBuf,
    bytes: Vec<u8>,
    report: ArtifactReport,
    signed: bool,
}

impl VerifiedArtifact {
    /// Checks `bytes` (read from `path`) against `path.sig`.
    pub fn verify(
        path: &Path,
        bytes: Vec<u8>,
        trust: &TrustRoot,
        req: &Requirement,
    ) -> Result<Self, Error> {
        let sig = load_sig(path, PayloadKind::Artifact)?;
        let sha256 = Sha256::of(&bytes);
        let size = bytes.len() as u64;
        let signers = check(path, &sig, sha256, size, trust, req)?;
        Ok(Self {
            path: path.to_owned(),
            bytes,
            report: ArtifactReport {
                sha256,
                size,
                signers,
            },
            signed: true,
        })
    }

    /// Where the artifact was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The verified bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Digest, size and signers.
    pub fn report(&self) -> &ArtifactReport {
        &self.report
    }

    /// False only for artifacts admitted by [`crate::danger::unverified_artifact`].
    pub fn is_signed(&self) -> bool {
        self.signed
    }

    pub(crate) fn unverified(path: &Path, bytes: Vec<u8>) -> Self {
        let sha256 = Sha256::of(&bytes);
        let size = bytes.len() as u64;
        Self {
            path: path.to_owned(),
            bytes,
            report: ArtifactReport {
                sha256,
                size,
                signers: Vec::new(),
            },
            signed: false,
        }
    }
}

pub(crate) fn load_sig(path: &Path, kind: PayloadKind) -> Result<SignatureFile, Error> {
    let sig_file = sig_path(path);
    let sig = match SignatureFile::load(&sig_file) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            // The signed file itself missing is the more useful report.
            if !path.exists() {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                });
            }
            return Err(Error::Unsigned {
                path: path.to_owned(),
                sig: sig_file,
                kind: match kind {
                    PayloadKind::Artifact => "artifact",
                    PayloadKind::Policy => "policy",
                },
            });
        }
        other => other?,
    };
    sig.expect_kind(&sig_file, kind)?;
    Ok(sig)
}

fn check(
    path: &Path,
    sig: &SignatureFile,
    sha256: Sha256,
    size: u64,
    trust: &TrustRoot,
    req: &Requirement,
) -> Result<Vec<String>, Error> {
    if sig.sha256 != sha256 || sig.size != size {
        return Err(Error::ContentMismatch {
            path: path.to_owned(),
            digests: Box::new(crate::error::Digests {
                expected: sig.sha256,
                expected_size: sig.size,
                found: sha256,
                found_size: size,
            }),
        });
    }
    trust.check(path, req, &sig.signed_message(PayloadKind::Artifact), sig)
}
