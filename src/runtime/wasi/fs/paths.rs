//! Paths as the filesystem adapter decides them: the guest's absolute path for a call, the
//! path a call really reaches (resolved on the directory handle, symlinks followed as the
//! call will follow them), and where an open descriptor is now.

use std::fs::File;
use std::path::{Path, PathBuf};

use wasmtime_wasi::p2::bindings::filesystem::types;

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

/// Resolves `path` beneath `dir`, following every symlink (the last one only with
/// [`Last::Follow`]). `None` when its parent does not exist, so the call itself will fail.
pub(super) fn resolve(dir: &File, path: &str, last: Last) -> std::io::Result<Option<PathBuf>> {
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
        return whole(trimmed);
    }
    let Some(parent) = whole(parent)? else {
        return Ok(None);
    };
    let joined = parent.join(name);
    if last == Last::NoFollow {
        return Ok(Some(joined));
    }
    match canonicalize(dir, Path::new(trimmed)) {
        Ok(r) => Ok(Some(r)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Missing: fine to create, unless it is a symlink to something missing.
            match stat(dir, &joined, FollowSymlinks::No) {
                Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "a dangling symlink is not followed",
                )),
                _ => Ok(Some(joined)),
            }
        }
        Err(e) => Err(e),
    }
}

pub(super) fn opens_for_write(oflags: types::OpenFlags, flags: types::DescriptorFlags) -> bool {
    oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE)
        || flags
            .intersects(types::DescriptorFlags::WRITE | types::DescriptorFlags::MUTATE_DIRECTORY)
}
