//! Rollback protection: the highest policy `version` this host has accepted, per policy name.
//!
//! The store is one small JSON file in a state directory, updated under an exclusive file lock
//! and replaced atomically, so concurrent capgate processes agree and a crash mid-write leaves
//! the old state. A state file that cannot be read is an error, never "no state": failing open
//! here would re-enable rollback.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Error;

const FILE: &str = "policy-versions.json";

/// Where copies of accepted policies are kept, one directory per policy name.
const ACCEPTED: &str = "accepted";

#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Versions {
    #[serde(rename = "capgate-state")]
    format: u32,
    versions: BTreeMap<String, u64>,
    /// The SHA-256 of the YAML of each name's highest accepted version (absent in state files
    /// written before digests were kept; the next accept records it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    digests: BTreeMap<String, String>,
}

/// Where accepted policy versions are remembered.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// A store in `dir` (created on first write).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default directory: `$XDG_STATE_HOME/capgate`, else `$HOME/.local/state/capgate`.
    pub fn default_dir() -> Option<PathBuf> {
        xdg_dir("XDG_STATE_HOME", ".local/state")
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The highest version accepted for `name`, if any.
    pub fn highest(&self, name: &str) -> Result<Option<u64>, Error> {
        Ok(self.read()?.versions.get(name).copied())
    }

    /// The digest the highest accepted version of `name` was accepted with, if known.
    pub fn highest_digest(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.read()?.digests.get(name).cloned())
    }

    /// Refuses `version` if it is lower than the highest accepted for `name`; otherwise records
    /// it. `policy` is only for the error message.
    pub fn accept(&self, policy: &Path, name: &str, version: u64) -> Result<(), Error> {
        self.accept_content(policy, name, version, None)
    }

    /// Like [`StateStore::accept`], binding the version to the policy's content: once version
    /// N of `name` is accepted with digest D, a policy with version N and another digest is
    /// refused ([`Error::VersionReused`]).
    pub fn accept_content(
        &self,
        policy: &Path,
        name: &str,
        version: u64,
        sha256: Option<&crate::Sha256>,
    ) -> Result<(), Error> {
        fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let mut state = self.read()?;
        if let Some(&highest) = state.versions.get(name) {
            if version < highest {
                return Err(Error::Rollback {
                    path: policy.to_owned(),
                    name: name.to_owned(),
                    version,
                    highest,
                });
            }
            if version == highest {
                match (state.digests.get(name), sha256) {
                    (Some(known), Some(d)) if *known != d.to_string() => {
                        return Err(Error::VersionReused {
                            path: policy.to_owned(),
                            name: name.to_owned(),
                            version,
                        });
                    }
                    (Some(_), _) | (None, None) => return Ok(()),
                    (None, Some(_)) => {}
                }
            }
        }
        state.format = 1;
        state.versions.insert(name.to_owned(), version);
        match sha256 {
            Some(d) => {
                state.digests.insert(name.to_owned(), d.to_string());
            }
            None => {
                state.digests.remove(name);
            }
        }
        // INVARIANT: a map of strings to integers serialises to JSON infallibly.
        #[allow(clippy::expect_used)]
        let text = serde_json::to_string_pretty(&state).expect("state serialises");
        crate::error::write_file(&self.path(), text.as_bytes())
        // The lock is released when `lock` drops.
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The directory a copy of policy `name` is kept in (its name hashed: policy names are
    /// not file names).
    fn kept_dir(&self, name: &str) -> PathBuf {
        let id = crate::Sha256::of(name.as_bytes()).to_string();
        self.dir.join(ACCEPTED).join(&id[..32])
    }

    /// Keeps a copy of `bundle` (its YAML and rules files) as the accepted version of its
    /// policy, replacing the copy of an earlier version, so a later version can be compared
    /// with what this host runs (`capgate sign policy` and `capgate policy diff` do). Nothing
    /// is written when the copy is already of this content. A bundle naming a file outside
    /// its own directory is not kept.
    pub fn keep(&self, bundle: &crate::PolicyBundle) -> Result<(), Error> {
        let dir = self.kept_dir(&bundle.header().name);
        let digest = bundle.sha256().to_string();
        if fs::read_to_string(dir.join("digest"))
            .is_ok_and(|d| d.lines().next() == Some(digest.as_str()))
        {
            return Ok(());
        }
        let inside = |name: &str| {
            let p = Path::new(name);
            p.is_relative()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
        };
        if !bundle.files().all(|(name, _)| inside(name)) {
            return Ok(());
        }
        let io = |e| self.io(e);
        fs::create_dir_all(&dir).map_err(io)?;
        // The marker goes first and last: a copy caught half-written has no valid marker.
        let _ = fs::remove_file(dir.join("digest"));
        for (name, bytes) in bundle.files() {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io)?;
            }
            crate::error::write_file(&path, bytes)?;
        }
        crate::error::write_file(&dir.join("policy.yaml"), bundle.yaml())?;
        // The marker: the YAML's digest, then each rules file's digest and name.
        let mut marker = digest;
        for (name, bytes) in bundle.files() {
            marker.push_str(&format!("\n{} {name}", crate::Sha256::of(bytes)));
        }
        crate::error::write_file(&dir.join("digest"), marker.as_bytes())
    }

    /// The kept copy of the accepted version of policy `name` (see [`StateStore::keep`]):
    /// the path of its YAML, beside its rules files.
    ///
    /// The copy is returned only if its YAML is the one recorded as accepted (the digest in
    /// the versions file) and each rules file still has the digest it was kept with.
    pub fn kept(&self, name: &str) -> Option<PathBuf> {
        let dir = self.kept_dir(name);
        let yaml = dir.join("policy.yaml");
        let marker = fs::read_to_string(dir.join("digest")).ok()?;
        let mut lines = marker.lines();
        let digest = lines.next()?;
        let accepted = self.highest_digest(name).ok()??;
        let bytes = fs::read(&yaml).ok()?;
        if crate::Sha256::of(&bytes).to_string() != digest || digest != accepted {
            return None;
        }
        for line in lines {
            let (hash, file) = line.split_once(' ')?;
            let bytes = fs::read(dir.join(file)).ok()?;
            if crate::Sha256::of(&bytes).to_string() != hash {
                return None;
            }
        }
        Some(yaml)
    }

    fn read(&self) -> Result<Versions, Error> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Versions::default()),
            Err(e) => return Err(self.io(e)),
        };
        serde_json::from_str(&text).map_err(|e| Error::State {
            path,
            message: format!("not a capgate state file: {e}"),
            hint: "restore it from a backup; deleting it forgets every accepted version",
        })
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::State {
            path: self.path(),
            message: e.to_string(),
            hint: "check the permissions of the state directory, or pass `--state-dir`",
        }
    }
}

/// capgate's default cache directory: `$XDG_CACHE_HOME/capgate`, else `$HOME/.cache/capgate`
/// (compiled components; what is pulled from OCI registries is cached beside it, in
/// `capgate-oci`). Only an absolute directory is returned.
pub fn default_cache_dir() -> Option<PathBuf> {
    xdg_dir("XDG_CACHE_HOME", ".cache").filter(|p| p.is_absolute())
}

/// `$VAR/capgate`, else `$HOME/UNDER_HOME/capgate`.
fn xdg_dir(var: &str, under_home: &str) -> Option<PathBuf> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from(var)
        .map(|d| d.join("capgate"))
        .or_else(|| from("HOME").map(|h| h.join(under_home).join("capgate")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_highest_and_refuses_lower() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::at(dir.path().join("state"));
        let p = Path::new("p.yaml");
        assert_eq!(s.highest("a").unwrap(), None);
        s.accept(p, "a", 3).unwrap();
        s.accept(p, "a", 3).unwrap();
        assert!(matches!(
            s.accept(p, "a", 2),
            Err(Error::Rollback { highest: 3, .. })
        ));
        s.accept(p, "b", 1).unwrap();
        s.accept(p, "a", 5).unwrap();
        assert_eq!(s.highest("a").unwrap(), Some(5));
        assert_eq!(s.highest("b").unwrap(), Some(1));
    }

    #[test]
    fn a_corrupt_state_file_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "not json").unwrap();
        let s = StateStore::at(dir.path());
        assert!(matches!(
            s.accept(Path::new("p"), "a", 9),
            Err(Error::State { .. })
        ));
    }
}
