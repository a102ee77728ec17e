//! The virtual filesystem adapter: every path-taking `wasi:filesystem` call is decided by the
//! policy (grants and Cedar rules on `Path`) before wasmtime-wasi's own implementation, which
//! still confines each call beneath its preopen and enforces `read-only`, runs it.
//!
//! A rule about `/static/private/*` must hold however the guest spells the path, so each call
//! is decided twice when the spellings differ: on the path as written (normalised), and on
//! where it really leads, with every symlink inside the mount resolved beneath the directory
//! (the last component too, when the call follows it). A dangling symlink that a call would
//! follow is refused, since creating through it would land somewhere not decided. On Linux, a
//! directory descriptor's position is read back from the kernel (`/proc/self/fd`) at each
//! call, so a directory renamed after it was opened is judged where it is now; after an
//! `open-at`, the opened file's real path is decided once more, closing the window between the
//! check and the open against other writers.
//!
//! What it cannot hide: listing an allowed directory shows the names of denied entries in it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsError, FsResult};

use crate::authz::{Request, normalise};
use crate::gate::Gate;

use types::{ErrorCode, HostDescriptor};

mod paths;

#[cfg(target_os = "linux")]
use paths::rel_in;
use paths::{guest_path, normalise_rel, opens_for_write, resolve};

/// A directory descriptor the guest holds: which mount it is in, and (where the kernel cannot
/// be asked) where in it.
struct Tracked {
    file: Weak<File>,
    mount: String,
    /// Where it was when opened (used where the kernel cannot say where it is now).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    rel: PathBuf,
}

/// The per-store state of the adapter.
pub(crate) struct FsGuard {
    gate: Gate,
    /// Directory descriptors by resource index.
    dirs: HashMap<u32, Tracked>,
    /// Each mount's root, by guest path.
    roots: HashMap<String, Arc<File>>,
    /// Descriptors opened by `open-at` and not yet dropped (each holds a host descriptor).
    open: std::collections::HashSet<u32>,
    /// `limits.files`.
    max_open: usize,
}

impl FsGuard {
    pub(crate) fn new(gate: Gate, max_open: u32) -> Self {
        Self {
            gate,
            dirs: HashMap::new(),
            roots: HashMap::new(),
            open: std::collections::HashSet::new(),
            max_open: max_open as usize,
        }
    }
}

/// wasmtime-wasi's filesystem view, with the adapter in front of it.
pub(crate) struct GuardedFs<'a> {
    pub inner: WasiFilesystemCtxView<'a>,
    pub guard: &'a mut FsGuard,
}

/// Marker for the linker's `HasData`.
pub(crate) struct GuardedFsData;

impl HasData for GuardedFsData {
    type Data<'a> = GuardedFs<'a>;
}

/// A directory, where it is, and the path of a call relative to it.
struct At {
    dir: Arc<File>,
    mount: String,
    rel: PathBuf,
}

/// How a call treats the last component of its path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Follow,
    NoFollow,
}

fn follows(flags: types::PathFlags) -> Last {
    if flags.contains(types::PathFlags::SYMLINK_FOLLOW) {
        Last::Follow
    } else {
        Last::NoFollow
    }
}

fn denied() -> FsError {
    ErrorCode::Access.into()
}

impl GuardedFs<'_> {
    /// The tracked directory behind `fd`. `None` for a file descriptor (wasmtime-wasi answers
    /// path calls on files with `not-directory`); a directory this adapter never saw is
    /// refused.
    fn at(&self, fd: &Resource<Descriptor>) -> FsResult<Option<At>> {
        let d = match self.inner.table.get(fd)? {
            Descriptor::File(_) => return Ok(None),
            Descriptor::Dir(d) => d,
        };
        let t = self
            .guard
            .dirs
            .get(&fd.rep())
            .filter(|t| std::ptr::eq(t.file.as_ptr(), Arc::as_ptr(&d.dir)))
            .ok_or_else(denied)?;
        let rel = self.where_now(&d.dir, t).ok_or_else(denied)?;
        Ok(Some(At {
            dir: d.dir.clone(),
            mount: t.mount.clone(),
            rel,
        }))
    }

    /// Where directory `dir` is inside its mount now.
    fn where_now(&self, dir: &File, t: &Tracked) -> Option<PathBuf> {
        #[cfg(target_os = "linux")]
        {
            let root = self.guard.roots.get(&t.mount)?;
            rel_in(root, dir)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = dir;
            Some(t.rel.clone())
        }
    }

    /// Decides `path` (relative to `at`) for `write`: as written, and as resolved. Returns
    /// the resolved path relative to the mount.
    async fn check(&mut self, at: &At, path: &str, write: bool, last: Last) -> FsResult<PathBuf> {
        let lexical = guest_path(&at.mount, &at.rel, Path::new(path));
        let resolved = resolve(&at.dir, path, last).map_err(FsError::from)?;
        let mut paths = vec![lexical];
        if let Some(r) = &resolved {
            let full = guest_path(&at.mount, &at.rel.join(r), Path::new(""));
            if full != paths[0] {
                paths.push(full);
            }
        }
        for p in paths {
            self.decide(p, write).await?;
        }
        Ok(resolved.map_or_else(|| at.rel.join(path), |r| at.rel.join(r)))
    }

    /// [`GuardedFs::check`] for a path relative to descriptor `fd`; nothing to decide for a
    /// file descriptor (wasmtime-wasi answers path calls on files with `not-directory`).
    async fn check_at(
        &mut self,
        fd: &Resource<Descriptor>,
        path: &str,
        write: bool,
        last: Last,
    ) -> FsResult<()> {
        if let Some(at) = self.at(fd)? {
            self.check(&at, path, write, last).await?;
        }
        Ok(())
    }

    /// One decision on a guest path; a deny is `not-permitted` when no grant matched (as
    /// wasmtime-wasi answers for a read-only mount) and `access` when a rule or a failure
    /// denied it.
    async fn decide(&mut self, path: String, write: bool) -> FsResult<()> {
        let request = Request::File { write, path };
        let decision = self.guard.gate.decide(&request).await;
        if decision.allowed {
            Ok(())
        } else if decision.reasons.is_empty() && decision.errors.is_empty() {
            Err(ErrorCode::NotPermitted.into())
        } else {
            Err(denied())
        }
    }

    /// Starts tracking a directory descriptor the guest now holds.
    fn track(&mut self, fd: &Resource<Descriptor>, mount: String, rel: PathBuf) {
        if let Ok(Descriptor::Dir(d)) = self.inner.table.get(fd) {
            self.guard.dirs.insert(
                fd.rep(),
                Tracked {
                    file: Arc::downgrade(&d.dir),
                    mount,
                    rel,
                },
            );
        }
    }

    /// After an open: decides the real path of what was opened, if the kernel can tell it
    /// and it differs from what was decided.
    #[cfg(target_os = "linux")]
    async fn recheck(
        &mut self,
        at: &At,
        opened: &Resource<Descriptor>,
        decided: &Path,
        write: bool,
    ) -> FsResult<()> {
        let file = match self.inner.table.get(opened)? {
            Descriptor::File(f) => f.file.clone(),
            Descriptor::Dir(d) => d.dir.clone(),
        };
        let Some(root) = self.guard.roots.get(&at.mount).cloned() else {
            return Err(denied());
        };
        match rel_in(&root, &file) {
            Some(now) if normalise_rel(&now) == normalise_rel(decided) => Ok(()),
            Some(now) => {
                self.decide(guest_path(&at.mount, &now, Path::new("")), write)
                    .await
            }
            // Not beneath the mount any more, or unknown: refuse.
            None => Err(denied()),
        }
    }
}

impl preopens::Host for GuardedFs<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.inner)?;
        for (fd, guest) in &dirs {
            let mount = normalise(guest);
            if let Ok(Descriptor::Dir(d)) = self.inner.table.get(fd) {
                self.guard
                    .roots
                    .entry(mount.clone())
                    .or_insert_with(|| d.dir.clone());
            }
            self.track(fd, mount, PathBuf::new());
        }
        Ok(dirs)
    }
}

impl types::Host for GuardedFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl types::HostDirectoryEntryStream for GuardedFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        types::HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        types::HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

impl HostDescriptor for GuardedFs<'_> {
    async fn open_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        flags: types::DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        // `limits.files`: each open descriptor holds a descriptor of the host process.
        if self.guard.open.len() >= self.guard.max_open {
            return Err(ErrorCode::Quota.into());
        }
        let Some(at) = self.at(&fd)? else {
            return self
                .inner
                .open_at(fd, path_flags, path, oflags, flags)
                .await;
        };
        let write = opens_for_write(oflags, flags);
        let decided = self.check(&at, &path, write, follows(path_flags)).await?;
        let opened = self
            .inner
            .open_at(fd, path_flags, path, oflags, flags)
            .await?;
        #[cfg(target_os = "linux")]
        if let Err(e) = self.recheck(&at, &opened, &decided, write).await {
            self.inner.table.delete(opened)?;
            return Err(e);
        }
        self.track(&opened, at.mount, decided);
        self.guard.open.insert(opened.rep());
        Ok(opened)
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        self.check_at(&fd, &path, false, follows(path_flags))
            .await?;
        self.inner.stat_at(fd, path_flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.check_at(&fd, &path, true, follows(path_flags)).await?;
        self.inner
            .set_times_at(fd, path_flags, path, atim, mtim)
            .await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        self.check_at(&fd, &path, false, follows(path_flags))
            .await?;
        self.inner.metadata_hash_at(fd, path_flags, path).await
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        self.check_at(&fd, &path, false, Last::NoFollow).await?;
        self.inner.readlink_at(fd, path).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.check_at(&fd, &path, true, Last::NoFollow).await?;
        self.inner.create_directory_at(fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        self.check_at(&fd, &path, true, Last::NoFollow).await?;
        self.inner.remove_directory_at(fd, path).await
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.check_at(&fd, &path, true, Last::NoFollow).await?;
        self.inner.unlink_file_at(fd, path).await
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.check_at(&fd, &old_path, true, Last::NoFollow).await?;
        self.check_at(&new_fd, &new_path, true, Last::NoFollow)
            .await?;
        self.inner.rename_at(fd, old_path, new_fd, new_path).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // A new name for a file gives whoever may read the new name its contents: the old
        // name must be writable as well as the new one.
        self.check_at(&fd, &old_path, true, follows(old_path_flags))
            .await?;
        self.check_at(&new_fd, &new_path, true, Last::NoFollow)
            .await?;
        self.inner
            .link_at(fd, old_path_flags, old_path, new_fd, new_path)
            .await
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        if let Some(at) = self.at(&fd)? {
            self.check(&at, &dest_path, true, Last::NoFollow).await?;
            // Where the link points, read from the link's directory: following it later is
            // decided again, this refuses pointing into denied places to begin with.
            let link_dir = Path::new(&dest_path)
                .parent()
                .map(Path::to_owned)
                .unwrap_or_default();
            let target = guest_path(&at.mount, &at.rel.join(link_dir), Path::new(&src_path));
            self.decide(target, false).await?;
        }
        self.inner.symlink_at(fd, src_path, dest_path).await
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.guard.dirs.remove(&fd.rep());
        self.guard.open.remove(&fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    // Calls on a descriptor already opened (and decided) pass straight through.

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.inner.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.inner.write_via_stream(fd, offset)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.inner.append_via_stream(fd)
    }

    async fn advise(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
        len: types::Filesize,
        advice: types::Advice,
    ) -> FsResult<()> {
        self.inner.advise(fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.inner.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.inner.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.inner.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        self.inner.set_size(fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.inner.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        self.inner.write(fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.inner.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.inner.sync(fd).await
    }

    async fn stat(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorStat> {
        self.inner.stat(fd).await
    }

    async fn is_same_object(
        &mut self,
        a: Resource<Descriptor>,
        b: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        self.inner.is_same_object(a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        self.inner.metadata_hash(fd).await
    }
}
