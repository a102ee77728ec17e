//! The content-addressed cache of what was pulled, and its layout as local files.
//!
//! ```text
//! CACHE/blobs/sha256/HEX        every manifest and blob, by digest (checked when read)
//! CACHE/tags/HEX                the digest a tag last resolved to (HEX: of the reference)
//! CACHE/files/HEX/...           the files of manifest HEX: component.wasm or policy.yaml
//!                               and its rules, each main file with its `.sig`
//! ```
//!
//! A laid-out directory is used again only after its manifest blob hashes to the digest that
//! names it and every file in it hashes to the digest the manifest gives: editing the cache
//! cannot substitute content for a pinned reference.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use capgate_signing::Sha256;
use oci_client::Reference;

use super::registry::{Descriptor, Manifest, digest_of, pinned, plan, signed_only};
use super::{Expect, Fetched, OciError};

pub(super) struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache at `root`, created private to this user (mode 0700) if it does not exist.
    /// An existing one that others may write to is refused: whoever can write there can
    /// make this user's pulls write where they point.
    pub(super) fn at(root: PathBuf) -> Result<Self, OciError> {
        let io = |e| OciError::Io {
            what: "OCI cache",
            path: root.clone(),
            source: e,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(io)?;
            use std::os::unix::fs::MetadataExt as _;
            let meta = std::fs::metadata(&root).map_err(io)?;
            let mode = meta.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(io(std::io::Error::other(format!(
                    "its mode is {:o}: others may write to it (run `chmod 700` on it)",
                    mode & 0o777
                ))));
            }
            // Owned by this user: a file this process creates there says who that is.
            let probe = root.join(format!(".owner-{}", std::process::id()));
            let mine = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&probe)
                .and_then(|f| f.metadata())
                .map(|m| m.uid());
            let _ = std::fs::remove_file(&probe);
            if mine.map_err(io)? != meta.uid() {
                return Err(io(std::io::Error::other(
                    "it belongs to another user, who could change what this user's pulls lay out",
                )));
            }
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(&root).map_err(io)?;
        Ok(Self { root })
    }

    fn io(&self, what: &'static str, path: &Path) -> impl Fn(std::io::Error) -> OciError {
        let path = path.to_owned();
        move |source| OciError::Io {
            what,
            path: path.clone(),
            source,
        }
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.root.join("blobs/sha256").join(hex))
    }

    /// The blob `digest`, if cached and intact.
    pub(super) fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, OciError> {
        let Some(path) = self.blob_path(digest) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(b) if digest_of(&b) == digest => Ok(Some(b)),
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("OCI cache", &path)(e)),
        }
    }

    /// Stores `bytes` (already checked to hash to `digest`).
    pub(super) fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), OciError> {
        let Some(path) = self.blob_path(digest) else {
            return Ok(());
        };
        write_atomic(&path, bytes).map_err(self.io("OCI cache", &path))
    }

    fn tag_path(&self, r: &Reference) -> PathBuf {
        let key = Sha256::of(
            format!(
                "{}/{}:{}",
                r.registry(),
                r.repository(),
                r.tag().unwrap_or("")
            )
            .as_bytes(),
        );
        self.root.join("tags").join(key.to_string())
    }

    /// Remembers the digest a tag resolved to (best effort).
    pub(super) fn remember_tag(&self, r: &Reference, digest: &str) {
        let _ = write_atomic(&self.tag_path(r), digest.as_bytes());
    }

    /// The digest `r`'s tag last resolved to.
    pub(super) fn tag(&self, r: &Reference) -> Option<String> {
        let d = std::fs::read_to_string(self.tag_path(r)).ok()?;
        self.blob_path(d.trim()).map(|_| d.trim().to_owned())
    }

    /// The laid-out files of manifest `digest`, if they are complete, intact and signed.
    pub(super) fn laid_out(
        &self,
        r: &Reference,
        digest: &str,
        expect: Expect,
        trusted: Option<super::Trusted<'_>>,
    ) -> Result<Option<Fetched>, OciError> {
        let Some(bytes) = self.blob(digest)? else {
            return Ok(None);
        };
        let text = pinned(r, digest);
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
            return Ok(None);
        };
        let mut files = plan(&text, &manifest, expect)?;
        let dir = self.files_dir(digest);
        let main = dir.join(&files[0].0);
        let sig_path = capgate_signing::sig_path(&main);
        // A signature file that does not parse is pulled again rather than kept.
        let Some(sig) = std::fs::read(&sig_path)
            .ok()
            .and_then(|b| capgate_signing::SignatureFile::parse(&sig_path, &b).ok())
        else {
            return Ok(None);
        };
        // A signature the trust root does not accept (any more) is pulled again.
        if trusted.is_some_and(|t| t(&sig).is_err()) {
            return Ok(None);
        }
        signed_only(&mut files, &sig);
        if !intact(&dir, &files) {
            return Ok(None);
        }
        Ok(Some(Fetched {
            content: content(&files[0].1.digest),
            path: main,
            pinned: text,
            signed: true,
        }))
    }

    /// Where the files of manifest `digest` are laid out: signed layouts under `files/`,
    /// unsigned ones (`--allow-unsigned`, every layer) apart under `unsigned/`, so a later
    /// signed pull of the same manifest never finds an unsigned file beside the signed ones.
    fn files_dir(&self, digest: &str) -> PathBuf {
        self.layout_dir(digest, true)
    }

    fn layout_dir(&self, digest: &str, signed: bool) -> PathBuf {
        self.root
            .join(if signed { "files" } else { "unsigned" })
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    /// Lays out the files of manifest `digest` from cached blobs, with the signature file
    /// `sig` beside the main one, replacing an earlier layout.
    pub(super) fn lay_out(
        &self,
        r: &Reference,
        digest: &str,
        files: &[(PathBuf, Descriptor)],
        sig: Option<&[u8]>,
    ) -> Result<Fetched, OciError> {
        let dir = self.layout_dir(digest, sig.is_some());
        let text = pinned(r, digest);
        // An intact layout is kept (only its signature file brought up to date): a policy's
        // directory is never pulled from under a host using it.
        if intact(&dir, files) {
            let main = dir.join(&files[0].0);
            let sig_path = capgate_signing::sig_path(&main);
            if let Some(sig) = sig
                && std::fs::read(&sig_path).ok().as_deref() != Some(sig)
            {
                write_atomic(&sig_path, sig).map_err(self.io("OCI cache", &sig_path))?;
            }
            return Ok(Fetched {
                content: content(&files[0].1.digest),
                signed: sig_path.is_file(),
                path: main,
                pinned: text,
            });
        }
        let parent = dir.parent().unwrap_or(&self.root).to_owned();
        let tmp = parent.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            Sha256::of(format!("{digest}{:?}", std::time::SystemTime::now()).as_bytes())
        ));
        let io = self.io("OCI cache", &tmp);
        std::fs::create_dir_all(&parent).map_err(&io)?;
        std::fs::create_dir(&tmp).map_err(&io)?;
        for (name, d) in files {
            let bytes = self.blob(&d.digest)?.ok_or_else(|| OciError::Io {
                what: "OCI cache",
                path: self.blob_path(&d.digest).unwrap_or_default(),
                source: std::io::Error::other("a blob just pulled is missing from the cache"),
            })?;
            let path = tmp.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(&io)?;
            }
            std::fs::write(&path, bytes).map_err(&io)?;
        }
        let main = &files[0].0;
        if let Some(sig) = sig {
            std::fs::write(capgate_signing::sig_path(&tmp.join(main)), sig).map_err(&io)?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process laid out the same manifest at the same time: use that.
            if !dir.is_dir() {
                return Err(self.io("OCI cache", &dir)(e));
            }
        }
        Ok(Fetched {
            path: dir.join(main),
            pinned: text,
            content: content(&files[0].1.digest),
            signed: sig.is_some(),
        })
    }
}

/// Whether every file of `files` is in `dir` with the digest its descriptor gives.
fn intact(dir: &Path, files: &[(PathBuf, Descriptor)]) -> bool {
    files
        .iter()
        .all(|(name, d)| std::fs::read(dir.join(name)).is_ok_and(|b| digest_of(&b) == d.digest))
}

fn content(digest: &str) -> Sha256 {
    digest
        .strip_prefix("sha256:")
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| Sha256::of(b""))
}

/// Writes `bytes` to `path` through a temporary file and a rename. The temporary file is
/// new (never one planted there, nor a symlink followed) and has an unpredictable name.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let mut nonce = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let tmp = parent.join(format!(".tmp-{}", &Sha256::of(&nonce).to_string()[..32]));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}
