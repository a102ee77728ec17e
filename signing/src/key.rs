//! Ed25519 keys: generation, PEM files, and key ids.
//!
//! Private keys are PKCS#8 PEM written with mode 0600; public keys are SPKI PEM. Both are the
//! formats `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` produce. This module
//! never writes a private key anywhere but a new file only its owner can read.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::digest::{Sha256, parse_hex32};
use crate::error::{Error, clip};

/// A key id: the lowercase hex SHA-256 of the 32 raw public-key bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

impl KeyId {
    fn of(key: &VerifyingKey) -> Self {
        Self(*Sha256::of(key.as_bytes()).as_bytes())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Why a string is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{found}` is not a key id: expected 64 lowercase hex digits")]
pub struct ParseKeyIdError {
    found: String,
}

impl FromStr for KeyId {
    type Err = ParseKeyIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s)
            .map(Self)
            .ok_or_else(|| ParseKeyIdError { found: clip(s) })
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 public key with its key id.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    /// Parses an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| Error::KeyFormat {
            path: None,
            expected: "an Ed25519 public key in SPKI PEM (`-----BEGIN PUBLIC KEY-----`)",
            detail: e.to_string(),
        })?;
        Ok(Self::from_verifying_key(key))
    }

    /// Reads an SPKI PEM public key file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = crate::error::read_to_string(path)?;
        Self::from_pem(&text).map_err(|e| e.with_path(path))
    }

    /// The SPKI PEM text of this key.
    #[allow(clippy::expect_used)]
    pub fn to_pem(&self) -> String {
        // INVARIANT: encoding a valid 32-byte Ed25519 key as SPKI cannot fail.
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("ed25519 spki encoding")
    }

    /// This key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Checks `sig` over `message` with `verify_strict` (rejects small-order keys and
    /// non-canonical signatures).
    pub fn verify_strict(&self, message: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
            return false;
        };
        self.key.verify_strict(message, &sig).is_ok()
    }

    fn from_verifying_key(key: VerifyingKey) -> Self {
        let id = KeyId::of(&key);
        Self { key, id }
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// An Ed25519 private key. Its bytes are zeroised on drop and never printed.
pub struct SecretKey {
    key: SigningKey,
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Parses a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`), as written by
    /// `capgate keygen` or `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let key = SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| Error::KeyFormat {
            path: None,
            expected: "an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`)",
            detail: e.to_string(),
        })?;
        Ok(Self { key })
    }

    /// Reads a PKCS#8 PEM private key file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = zeroize::Zeroizing::new(crate::error::read_to_string(path)?);
        Self::from_pem(&text).map_err(|e| e.with_path(path))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::from_verifying_key(self.key.verifying_key())
    }

    /// Signs `message` (pure Ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Writes `NAME.key` (PKCS#8 PEM, mode 0600) and `NAME.pub` (SPKI PEM). Refuses to
    /// replace either file unless `overwrite` is set, so a key is never lost by accident.
    pub fn save_pair(&self, name: &Path, overwrite: bool) -> Result<(), Error> {
        let key_path = with_suffix(name, "key");
        let pub_path = with_suffix(name, "pub");
        if !overwrite {
            for p in [&key_path, &pub_path] {
                if p.exists() {
                    return Err(Error::WouldOverwrite { path: p.clone() });
                }
            }
        }
        // PKCS#8 v1 (no embedded public key), as `openssl genpkey` writes it: OpenSSL 3.0
        // refuses the v2 form.
        let v1 = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        let pem = v1
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::KeyFormat {
                path: Some(key_path.clone()),
                expected: "an encodable Ed25519 key",
                detail: e.to_string(),
            })?;
        write_private(&key_path, pem.as_bytes())?;
        crate::error::write_file(&pub_path, self.public().to_pem().as_bytes())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().id())
    }
}

fn with_suffix(name: &Path, ext: &str) -> std::path::PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    s.into()
}

/// Writes a private key so that no other user can read it, even for an instant: the file is
/// created with mode 0600 rather than chmod-ed after the write.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(path);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_sha256_of_raw_public_key() {
        let k = SecretKey::generate();
        let raw = k.public().key.to_bytes();
        assert_eq!(k.public().id().to_string(), Sha256::of(&raw).to_string());
    }

    #[test]
    fn pem_round_trip() {
        let k = SecretKey::generate();
        let pem = k.key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let back = SecretKey::from_pem(&pem).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            PublicKey::from_pem(&k.public().to_pem()).unwrap(),
            k.public()
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_key_file_is_owner_only_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("k");
        SecretKey::generate().save_pair(&name, false).unwrap();
        let mode = fs::metadata(dir.path().join("k.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = SecretKey::generate().save_pair(&name, false).unwrap_err();
        assert!(matches!(err, Error::WouldOverwrite { .. }), "{err}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = PublicKey::from_pem("hello").unwrap_err();
        assert!(err.to_string().contains("SPKI PEM"), "{err}");
    }
}
