//! Paths as the filesystem adapter decides them: the guest's absolute path for a call, the
//! path a call really reaches (resolved on the directory handle, symlinks followed as the
//! call will follow them), and where an open descriptor is now.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::Last;
use crate::authz::normalise;

/// The guest's absolute path for `rel` then `path` under `mount`, normalised.
pub(super) fn guest_path(mount: &str, rel: &Path, path: &Path) -> String {
    normalise(&format!(
        "{mount}/{}/{}",
        rel.to_string_lossy(),
        path.to_string_lossy()
    ))
}

pub(super) fn normalise_rel(p: &Path) -> String {
    normalise(&format!("/{}", p.to_string_lossy()))
}

/// Where `file` is relative to `root`, as the kernel reports both now.
#[cfg(target_os = "linux")]
pub(super) fn rel_in(root: &File, file: &File) -> Option<PathBuf> {
    use std::os::fd::AsRawFd as _;
    let at = |f: &File| std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok();
    let (root, path) = (at(root)?, at(file)?);
    if path.to_string_lossy().ends_with(" (deleted)") {
        return None;
    }
    path.strip_prefix(&root).ok().map(Path::to_owned)
}

/// Where a path leads, resolved beneath its directory.
pub(super) enum Resolved {
    /// Its parent does not exist: the call fails by itself.
    Missing,
    /// This path, relative to the directory, every symlink the call follows resolved.
    At(PathBuf),
    /// The call follows a symlink whose target does not exist, and creates nothing: it fails
    /// by itself with `no-entry`, as under wasmtime. The path is the link's own.
    Dangling(PathBuf),
}

/// Resolves `path` beneath `dir`, following every symlink (the last one only with
/// [`Last::Follow`]). Following a dangling symlink is refused when the call would create
/// something through it (`creates`), since what it creates would land somewhere not decided.
pub(super) fn resolve(
    dir: &File,
    path: &str,
    last: Last,
    creates: bool,
) -> std::io::Result<Resolved> {
    use cap_primitives::fs::{FollowSymlinks, canonicalize, stat};
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
        None => (".", trimmed),
    };
    let whole = |p: &str| match canonicalize(dir, Path::new(if p.is_empty() { "." } else { p })) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Ok(whole(trimmed)?.map_or(Resolved::Missing, Resolved::At));
    }
    let Some(parent) = whole(parent)? else {
        return Ok(Resolved::Missing);
    };
    let joined = parent.join(name);
    if last == Last::NoFollow {
        return Ok(Resolved::At(joined));
    }
    match canonicalize(dir, Path::new(trimmed)) {
        Ok(r) => Ok(Resolved::At(r)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Missing: fine to create, unless it is a symlink to something missing.
            match stat(dir, &joined, FollowSymlinks::No) {
                Ok(m) if m.file_type().is_symlink() && creates => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "a dangling symlink is not followed to create",
                )),
                Ok(m) if m.file_type().is_symlink() => Ok(Resolved::Dangling(joined)),
                _ => Ok(Resolved::At(joined)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Every entry below directory `rel` of `dir` (relative to `rel`), symlinks not followed.
/// `None` if `rel` is not a directory; `Some(Err(()))` past `limit` entries.
#[allow(clippy::type_complexity)]
pub(super) fn subtree(
    dir: &File,
    rel: &Path,
    limit: usize,
) -> std::io::Result<Option<Result<Vec<PathBuf>, ()>>> {
    let base = cap_std::fs::Dir::from_std_file(dir.try_clone()?);
    let meta = match base.symlink_metadata(if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    }) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(None);
    }
    let top = if rel.as_os_str().is_empty() {
        base
    } else {
        let mut d = dir.try_clone()?;
        for part in rel.components() {
            d = cap_primitives::fs::open_dir_nofollow(&d, Path::new(part.as_os_str()))?;
        }
        // Opened without following symlinks, maybe for lookups only: reopened to be listed.
        cap_std::fs::Dir::from_std_file(d).open_dir(".")?
    };
    let mut out = Vec::new();
    let mut todo = vec![(top, PathBuf::new())];
    while let Some((d, at)) = todo.pop() {
        for entry in d.entries()? {
            let entry = entry?;
            let path = at.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                todo.push((entry.open_dir()?, path.clone()));
            }
            out.push(path);
            if out.len() > limit {
                return Ok(Some(Err(())));
            }
        }
    }
    Ok(Some(Ok(out)))
}
