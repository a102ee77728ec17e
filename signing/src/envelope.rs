//! Detached signature files (`FILE.sig`) and what their signatures cover.
//!
//! A signature file names a payload type, the SHA-256 and size of the signed file, for a policy
//! the files its bundle covers, and a list of `{keyid, sig}`. Each `sig` is Ed25519 over the
//! DSSE pre-authentication encoding of a small JSON *statement* that capgate rebuilds from the
//! bytes it actually read, never from the signature file. That keeps verification of a large
//! artifact to one streaming SHA-256 plus one Ed25519 check over a few hundred bytes.
//!
//! This module never decides whom to trust; [`crate::trust`] does.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::digest::Sha256;
use crate::error::Error;
use crate::key::{KeyId, SecretKey};

/// The largest signature file capgate will read.
const MAX_SIG_BYTES: u64 = 1024 * 1024;

/// What a signature is for. Each kind has its own DSSE payload type, so a signature made for
/// one kind never verifies as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PayloadKind {
    /// A component artifact (`.wasm`).
    Artifact,
    /// A policy bundle: the policy YAML and every file it references.
    Policy,
}

impl PayloadKind {
    /// The DSSE payload type string.
    pub fn payload_type(self) -> &'static str {
        match self {
            Self::Artifact => "application/vnd.capgate.artifact.v1+json",
            Self::Policy => "application/vnd.capgate.policy.v1+json",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Artifact => "artifact",
            Self::Policy => "policy",
        }
    }

    fn described(s: &str) -> String {
        [Self::Artifact, Self::Policy]
            .into_iter()
            .find(|k| k.payload_type() == s)
            .map(|k| format!("an {}", k.word()).replace("an policy", "a policy"))
            .unwrap_or_else(|| format!("payload type `{}`", crate::error::clip(s)))
    }
}

/// A file covered by a policy bundle signature, beside the policy itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// The path as the policy names it, relative to the policy file's directory.
    pub path: String,
    /// SHA-256 of the file's bytes.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

/// One signature in a signature file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// Id of the key that signed.
    pub keyid: KeyId,
    /// Base64 of the 64-byte Ed25519 signature.
    pub sig: String,
}

impl SignatureEntry {
    /// `key`'s signature over `message`.
    pub fn sign(key: &SecretKey, message: &[u8]) -> Self {
        Self {
            keyid: key.public().id(),
            sig: B64.encode(key.sign(message)),
        }
    }
}

/// A detached signature file, as stored in JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Format version of the signature file; always 1.
    #[serde(rename = "capgate-signature")]
    pub format: u32,
    /// DSSE payload type.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// SHA-256 of the signed file.
    pub sha256: Sha256,
    /// Size of the signed file in bytes.
    pub size: u64,
    /// For a policy: every file its bundle covers besides the YAML itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<BundleFile>,
    /// The signatures, in the order they were added.
    pub signatures: Vec<SignatureEntry>,
}

/// The statement each signature covers, rebuilt by the verifier from what it read.
#[derive(serde::Serialize)]
struct Statement<'a> {
    #[serde(rename = "capgate-statement")]
    format: u32,
    kind: &'static str,
    sha256: &'a Sha256,
    size: u64,
    #[serde(skip_serializing_if = "<[BundleFile]>::is_empty")]
    files: &'a [BundleFile],
}

/// The signature file path beside `file`: `FILE.sig`.
pub fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    s.into()
}

/// DSSE's pre-authentication encoding: `"DSSEv1" SP len(type) SP type SP len(body) SP body`,
/// lengths in ASCII decimal.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + body.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

impl SignatureFile {
    /// An unsigned envelope for content of `kind` with this digest, size and bundle files.
    pub fn new(kind: PayloadKind, sha256: Sha256, size: u64, files: Vec<BundleFile>) -> Self {
        Self {
            format: 1,
            payload_type: kind.payload_type().to_owned(),
            sha256,
            size,
            files,
            signatures: Vec::new(),
        }
    }

    /// The exact bytes every signature in this file is over: PAE(type, statement).
    pub fn signed_message(&self, kind: PayloadKind) -> Vec<u8> {
        let statement = Statement {
            format: 1,
            kind: kind.word(),
            sha256: &self.sha256,
            size: self.size,
            files: &self.files,
        };
        // INVARIANT: serialising a struct of strings and integers to JSON cannot fail.
        #[allow(clippy::expect_used)]
        let body = serde_json::to_vec(&statement).expect("statement serialises");
        pae(kind.payload_type(), &body)
    }

    /// Adds (or replaces) the signature of `key`.
    pub fn sign(&mut self, kind: PayloadKind, key: &SecretKey) {
        let entry = SignatureEntry::sign(key, &self.signed_message(kind));
        let keyid = entry.keyid;
        match self.signatures.iter_mut().find(|s| s.keyid == keyid) {
            Some(existing) => *existing = entry,
            None => self.signatures.push(entry),
        }
    }

    /// Reads and parses a signature file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = crate::error::read_bounded(path, MAX_SIG_BYTES)?;
        Self::parse(path, &bytes)
    }

    /// Parses signature-file bytes; `path` is used in error messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let sf: Self = serde_json::from_slice(bytes).map_err(|e| Error::Syntax {
            path: path.to_owned(),
            line: e.line() as u64,
            column: e.column() as u64,
            message: format!(
                "not a capgate signature file: {}",
                strip_position(&e.to_string())
            ),
            hint: None,
        })?;
        if sf.format != 1 {
            return Err(Error::Syntax {
                path: path.to_owned(),
                line: 0,
                column: 0,
                message: format!(
                    "unsupported `capgate-signature` version {}, expected 1",
                    sf.format
                ),
                hint: Some("upgrade capgate".into()),
            });
        }
        Ok(sf)
    }

    /// Checks that this file is for `kind`.
    pub fn expect_kind(&self, path: &Path, kind: PayloadKind) -> Result<(), Error> {
        if self.payload_type == kind.payload_type() {
            return Ok(());
        }
        Err(Error::WrongPayloadType {
            path: path.to_owned(),
            expected: match kind {
                PayloadKind::Artifact => "an artifact",
                PayloadKind::Policy => "a policy",
            },
            found: PayloadKind::described(&self.payload_type),
            expected_cmd: kind.word(),
        })
    }

    /// Writes this file as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        // INVARIANT: this type serialises to JSON infallibly (strings, integers, vectors).
        #[allow(clippy::expect_used)]
        let mut text = serde_json::to_string_pretty(self).expect("signature file serialises");
        text.push('\n');
        crate::error::write_file(path, text.as_bytes())
    }

    /// The raw signature bytes of an entry, if its base64 is well-formed.
    pub(crate) fn decode(entry: &SignatureEntry) -> Option<Vec<u8>> {
        B64.decode(entry.sig.as_bytes()).ok()
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_definition() {
        assert_eq!(pae("t", b"hello"), b"DSSEv1 1 t 5 hello".to_vec());
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn kinds_sign_different_messages() {
        let f = SignatureFile::new(PayloadKind::Artifact, Sha256::of(b""), 0, vec![]);
        assert_ne!(
            f.signed_message(PayloadKind::Artifact),
            f.signed_message(PayloadKind::Policy)
        );
    }

    #[test]
    fn statement_is_stable() {
        let f = SignatureFile::new(PayloadKind::Artifact, Sha256::of(b"abc"), 3, vec![]);
        let msg = String::from_utf8(f.signed_message(PayloadKind::Artifact)).unwrap();
        assert_eq!(
            msg,
            "DSSEv1 40 application/vnd.capgate.artifact.v1+json 126 \
             {\"capgate-statement\":1,\"kind\":\"artifact\",\"sha256\":\
             \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"size\":3}"
        );
    }

    #[test]
    fn re_signing_with_the_same_key_replaces_its_entry() {
        let k = SecretKey::generate();
        let mut f = SignatureFile::new(PayloadKind::Artifact, Sha256::of(b"abc"), 3, vec![]);
        f.sign(PayloadKind::Artifact, &k);
        f.sign(PayloadKind::Artifact, &k);
        assert_eq!(f.signatures.len(), 1);
        f.sign(PayloadKind::Artifact, &SecretKey::generate());
        assert_eq!(f.signatures.len(), 2);
    }

    #[test]
    fn malformed_json_is_located() {
        let err = SignatureFile::parse(
            Path::new("x.sig"),
            b"{\n  \"capgate-signature\": 1,\n  oops",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("x.sig:3:3: not a capgate signature file"),
            "{err}"
        );
    }
}
