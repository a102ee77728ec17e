//! The virtual filesystem adapter: every path-taking `wasi:filesystem` call is decided by the
//! policy (grants and Cedar rules on `Path`) before wasmtime-wasi's own implementation, which
//! still confines each call beneath its preopen and enforces `read-only`, runs it.
//!
//! Decisions are on what is reached, not on strings:
//!
//! - A rule about `/static/private/*` must hold however the guest spells the path, so each
//!   call is decided on the path as written (normalised) and on where it really leads, with
//!   every symlink inside the mount resolved beneath the directory (the last component too,
//!   when the call follows it, or when the path ends in `/` or `.`, which makes the kernel
//!   follow it).
//! - Each call is then run on the directory the decided path's parent is *now*, opened one
//!   component at a time beneath the mount without following any symlink ([`GuardedFs::pin`]):
//!   another writer of the host directory who swaps a symlink in between the decision and the
//!   call makes the call fail instead of reaching somewhere undecided.
//! - An open is decided for every access it grants (`read` and `write` for READ|WRITE;
//!   `write` for CREATE, TRUNCATE, WRITE or MUTATE_DIRECTORY; `read` for anything else). A
//!   call on the descriptor that needs an access its open was not decided for (setting the
//!   times of a file opened for reading) is decided for that access when it is made.
//! - Renaming a directory decides `fs.read` and `fs.write` on every entry below it, under its
//!   old and its new name, so a rule on a subtree holds when a directory above the file moves;
//!   a rename and a hard link decide both accesses on both names, since a new name for a file
//!   gives its contents to whoever may use the new name.
//!
//! On Linux, a directory descriptor's position is read back from the kernel (`/proc/self/fd`)
//! at each call, so a directory renamed after it was opened is judged where it is now; after an
//! `open-at`, the opened file's real path is decided once more.
//!
//! What it cannot hide: listing an allowed directory shows the names of denied entries in it.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Weak};

use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{FsError, FsResult};

use crate::authz::{Request, normalise};
use crate::gate::Gate;

use types::ErrorCode;

mod descriptor;
mod paths;

#[cfg(target_os = "linux")]
use paths::rel_in;
use paths::{Resolved, guest_path, normalise_rel, resolve, subtree};

/// Entries below a directory that a rename decides one by one before moving it; a larger
/// directory is not moved.
const MAX_SUBTREE: usize = 10_000;

/// What a call or an open reaches a file for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Access {
    read: bool,
    write: bool,
}

impl Access {
    const READ: Self = Self {
        read: true,
        write: false,
    };
    const WRITE: Self = Self {
        read: false,
        write: true,
    };
    const BOTH: Self = Self {
        read: true,
        write: true,
    };

    /// What an `open-at` with these flags gives access to.
    fn of_open(oflags: types::OpenFlags, flags: types::DescriptorFlags) -> Self {
        let write = oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE)
            || flags.intersects(
                types::DescriptorFlags::WRITE | types::DescriptorFlags::MUTATE_DIRECTORY,
            );
        let read = flags.contains(types::DescriptorFlags::READ) || !write;
        Self { read, write }
    }

    fn covers(self, need: Self) -> bool {
        (self.read || !need.read) && (self.write || !need.write)
    }
}

/// A directory descriptor the guest holds: which mount it is in, and (where the kernel cannot
/// be asked) where in it.
struct Tracked {
    file: Weak<File>,
    mount: String,
    /// Where it was when opened (used where the kernel cannot say where it is now).
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    rel: PathBuf,
}

/// A descriptor opened by `open-at`: what its open was decided for, in which mount and on
/// which path.
struct Opened {
    access: Access,
    mount: String,
    path: String,
}

/// The per-store state of the adapter.
pub(crate) struct FsGuard {
    gate: Gate,
    /// Directory descriptors by resource index.
    dirs: HashMap<u32, Tracked>,
    /// Each mount's root, by guest path.
    roots: HashMap<String, Arc<File>>,
    /// Descriptors opened by `open-at` and not yet dropped (each holds a host descriptor).
    opened: HashMap<u32, Opened>,
    /// `limits.files`.
    max_open: usize,
}

impl FsGuard {
    pub(crate) fn new(gate: Gate, max_open: u32) -> Self {
        Self {
            gate,
            dirs: HashMap::new(),
            roots: HashMap::new(),
            opened: HashMap::new(),
            max_open: max_open as usize,
        }
    }
}

/// wasmtime-wasi's filesystem view, with the adapter in front of it.
pub(crate) struct GuardedFs<'a> {
    pub(crate) inner: WasiFilesystemCtxView<'a>,
    pub(crate) guard: &'a mut FsGuard,
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
    /// Follows a symlink there.
    Follow,
    /// Does not, unless the path ends in `/` or `.`, which makes the kernel follow it.
    NoFollow,
    /// Acts on the entry itself (mkdir, rmdir, unlink, rename, link and symlink names): never
    /// follows it; a trailing `/` only asks that it be a directory.
    Entry,
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

/// A path-taking call, decided.
struct Checked {
    /// Where the call leads, relative to the mount.
    rel: PathBuf,
    /// Where the call leads, relative to the call's directory, symlinks resolved; `None` if
    /// its parent does not exist (the call then fails by itself).
    resolved: Option<PathBuf>,
    /// The call follows a dangling symlink without creating anything: it fails by itself
    /// with `no-entry`, as under wasmtime.
    dangling: bool,
}

/// A temporary descriptor for the directory a decided path's parent is now, and the final
/// name to use with it; see [`GuardedFs::pin`].
struct Pinned {
    dir: Resource<Descriptor>,
    name: String,
}

impl Pinned {
    fn dir(&self) -> Resource<Descriptor> {
        Resource::new_borrow(self.dir.rep())
    }
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

    /// Decides `path` (relative to `at`) for `access`: as written, and as resolved.
    /// `creates`: the call may create the last component (through a dangling symlink, which
    /// is refused).
    async fn check(
        &mut self,
        at: &At,
        path: &str,
        access: Access,
        last: Last,
        creates: bool,
    ) -> FsResult<Checked> {
        // A trailing `/` or a final `.` makes the kernel follow the last component, except
        // for the calls that act on the entry itself.
        let slash = last == Last::Entry && path.ends_with('/');
        let last = match last {
            Last::Entry => Last::NoFollow,
            _ if path.ends_with('/') || path.rsplit('/').next() == Some(".") => Last::Follow,
            other => other,
        };
        let lexical = guest_path(&at.mount, &at.rel, Path::new(path));
        let resolved = resolve(&at.dir, path, last, creates).map_err(FsError::from)?;
        let mut paths = vec![lexical];
        let (resolved, dangling) = match resolved {
            Resolved::Missing => (None, false),
            Resolved::At(r) => (Some(r), false),
            Resolved::Dangling(r) => (Some(r), true),
        };
        // A call on an entry itself with a trailing `/` needs a directory there, and does not
        // follow a symlink: the kernel answers `not-directory` for anything else.
        if slash
            && let Some(r) = &resolved
            && let Ok(m) =
                cap_primitives::fs::stat(&at.dir, r, cap_primitives::fs::FollowSymlinks::No)
            && !m.is_dir()
        {
            return Err(ErrorCode::NotDirectory.into());
        }
        if let Some(r) = &resolved {
            let full = guest_path(&at.mount, &at.rel.join(r), Path::new(""));
            if full != paths[0] {
                paths.push(full);
            }
        }
        for p in paths {
            self.decide_access(&p, access).await?;
        }
        Ok(Checked {
            rel: resolved
                .as_ref()
                .map_or_else(|| at.rel.join(path), |r| at.rel.join(r)),
            resolved,
            dangling,
        })
    }

    /// Decides `access` on guest path `path`: `fs.read` and `fs.write`, each decided (and
    /// recorded) even when the other is denied; the first denial is the error.
    async fn decide_access(&mut self, path: &str, access: Access) -> FsResult<()> {
        let read = match access.read {
            true => self.decide(path.to_owned(), false).await,
            false => Ok(()),
        };
        let write = match access.write {
            true => self.decide(path.to_owned(), true).await,
            false => Ok(()),
        };
        read.and(write)
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

    /// Records a refusal the adapter reached itself, and returns the error to give the guest.
    fn refuse(&self, path: String, write: bool, why: &str) -> FsError {
        self.guard
            .gate
            .refuse(&Request::File { write, path }, why, Vec::new);
        denied()
    }

    /// The directory the decided path's parent is now, opened beneath `at` one component at a
    /// time without following any symlink, as a temporary descriptor with `fd`'s permissions
    /// (drop it with [`GuardedFs::unpin`]). `None` when the call is on the directory itself,
    /// which needs no pin. A path whose parent did not exist, or that follows a dangling
    /// symlink, is answered `no-entry` here, as the call would have been, rather than run
    /// on a path that another writer could complete in the meantime. A symlink that appeared
    /// on the way since the decision refuses the call.
    fn pin(&mut self, fd: &Resource<Descriptor>, at: &At, c: &Checked) -> FsResult<Option<Pinned>> {
        let Some(r) = c.resolved.as_ref().filter(|_| !c.dangling) else {
            return Err(ErrorCode::NoEntry.into());
        };
        let (perms, mode) = match self.inner.table.get(fd)? {
            Descriptor::Dir(d) => (d.perms, d.open_mode),
            Descriptor::File(_) => return Ok(None),
        };
        // The call's own directory (`x/..` resolves to it): run on a handle to it, as `.`.
        if r.as_os_str().is_empty() {
            let dir = at.dir.try_clone().map_err(FsError::from)?;
            let pinned = wasmtime_wasi::filesystem::Dir::new(dir, perms, mode, false);
            let dir = self.inner.table.push(Descriptor::Dir(pinned))?;
            return Ok(Some(Pinned {
                dir,
                name: ".".into(),
            }));
        }
        let (Some(parent), Some(name)) = (r.parent(), r.file_name()) else {
            return Ok(None);
        };
        // Decisions are on text; a name that is not UTF-8 could not be decided as it is.
        let Some(name) = name.to_str() else {
            return Err(denied());
        };
        let changed = |this: &Self| {
            this.refuse(
                guest_path(&at.mount, &c.rel, Path::new("")),
                false,
                "the path changed while the call was decided (another writer put a symlink or a file in its way)",
            )
        };
        let mut dir = at.dir.try_clone().map_err(FsError::from)?;
        for part in parent.components() {
            match part {
                Component::Normal(n) => {
                    dir = cap_primitives::fs::open_dir_nofollow(&dir, Path::new(n))
                        .map_err(|_| changed(self))?;
                }
                Component::CurDir => {}
                _ => return Err(changed(self)),
            }
        }
        let pinned = wasmtime_wasi::filesystem::Dir::new(dir, perms, mode, false);
        let dir = self.inner.table.push(Descriptor::Dir(pinned))?;
        // A trailing `/` was decided as followed, and `name` is what it led to: kept without
        // the slash, so nothing swapped in since is followed. (Calls on an entry itself checked
        // theirs in `check`.)
        Ok(Some(Pinned {
            dir,
            name: name.to_owned(),
        }))
    }

    fn unpin(&mut self, p: Pinned) {
        let _ = self.inner.table.delete(p.dir);
    }

    /// Before moving directory `old` (resolved, relative to `at`'s directory) to `new_mount`
    /// and `new_rel`: decides `fs.read` and `fs.write` on every entry below it, under its old
    /// and its new name.
    async fn check_subtree(
        &mut self,
        at: &At,
        old: &Checked,
        new_mount: &str,
        new: &Checked,
    ) -> FsResult<()> {
        let Some(r) = &old.resolved else {
            return Ok(());
        };
        let entries = match subtree(&at.dir, r, MAX_SUBTREE).map_err(FsError::from)? {
            None => return Ok(()),
            Some(Ok(entries)) => entries,
            Some(Err(())) => {
                return Err(self.refuse(
                    guest_path(&at.mount, &old.rel, Path::new("")),
                    true,
                    &format!(
                        "the directory has more than {MAX_SUBTREE} entries below it; each is decided before it is moved"
                    ),
                ));
            }
        };
        for e in entries {
            let from = guest_path(&at.mount, &old.rel.join(&e), Path::new(""));
            let to = guest_path(new_mount, &new.rel.join(&e), Path::new(""));
            self.decide_access(&from, Access::BOTH).await?;
            self.decide_access(&to, Access::BOTH).await?;
        }
        Ok(())
    }

    /// A call on an open descriptor that needs an access its open was not decided for (times
    /// set on a file opened for reading) is decided for that access now, on the path the
    /// descriptor has now (Linux) or had when opened. A preopened directory itself is decided
    /// on its mount path; a descriptor this adapter never saw is refused.
    async fn within(&mut self, fd: &Resource<Descriptor>, need: Access) -> FsResult<()> {
        match self.undecided(fd, need)? {
            None => Ok(()),
            Some((path, missing)) => self.decide_access(&path, missing).await,
        }
    }

    /// [`GuardedFs::within`] for the synchronous stream calls.
    fn within_now(&mut self, fd: &Resource<Descriptor>, need: Access) -> FsResult<()> {
        let Some((path, missing)) = self.undecided(fd, need)? else {
            return Ok(());
        };
        for write in [false, true] {
            if (write && missing.write) || (!write && missing.read) {
                let request = Request::File {
                    write,
                    path: path.clone(),
                };
                let decision = self.guard.gate.decide_blocking(&request);
                if !decision.allowed {
                    return Err(
                        if decision.reasons.is_empty() && decision.errors.is_empty() {
                            ErrorCode::NotPermitted.into()
                        } else {
                            denied()
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// What of `need` the open of `fd` was not decided for, and the path to decide it on;
    /// `None` if nothing is left to decide.
    fn undecided(
        &self,
        fd: &Resource<Descriptor>,
        need: Access,
    ) -> FsResult<Option<(String, Access)>> {
        let Some(o) = self.guard.opened.get(&fd.rep()) else {
            return match self.at(fd)? {
                Some(at) => Ok(Some((guest_path(&at.mount, &at.rel, Path::new("")), need))),
                None => Err(denied()),
            };
        };
        if o.access.covers(need) {
            return Ok(None);
        }
        let missing = Access {
            read: need.read && !o.access.read,
            write: need.write && !o.access.write,
        };
        Ok(Some((
            self.now_at(fd, o).unwrap_or_else(|| o.path.clone()),
            missing,
        )))
    }

    /// Where the descriptor opened as `o` is now, if the kernel can tell.
    fn now_at(&self, fd: &Resource<Descriptor>, o: &Opened) -> Option<String> {
        #[cfg(target_os = "linux")]
        {
            let file = match self.inner.table.get(fd).ok()? {
                Descriptor::File(f) => f.file.clone(),
                Descriptor::Dir(d) => d.dir.clone(),
            };
            let root = self.guard.roots.get(&o.mount)?;
            let rel = rel_in(root, &file)?;
            Some(guest_path(&o.mount, &rel, Path::new("")))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (fd, o);
            None
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
        access: Access,
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
                let path = guest_path(&at.mount, &now, Path::new(""));
                self.decide_access(&path, access).await
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
