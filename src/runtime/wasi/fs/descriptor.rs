//! `wasi:filesystem/types.descriptor`: each path-taking call decided ([`GuardedFs::check`]),
//! then run on its pinned parent directory ([`GuardedFs::pin`]); each call on an open
//! descriptor that needs an access its open was not decided for is decided then
//! ([`GuardedFs::within`]).

use wasmtime::component::Resource;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p2::bindings::filesystem::types::{self, ErrorCode, HostDescriptor};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, FsResult};

use super::{Access, GuardedFs, Last, Opened, Pinned, follows, guest_path};

/// The flags of a call run on its pinned parent: the last component was resolved when it was
/// decided, so the call follows nothing more.
fn unfollowed(flags: types::PathFlags) -> types::PathFlags {
    flags & !types::PathFlags::SYMLINK_FOLLOW
}

impl GuardedFs<'_> {
    /// Decides a one-path call on `fd` and pins its parent: the descriptor and name to run
    /// the call with, and the pin to drop afterwards (`None`: run it as the guest made it).
    async fn prepare(
        &mut self,
        fd: &Resource<Descriptor>,
        path: &str,
        access: Access,
        last: Last,
    ) -> FsResult<Option<Pinned>> {
        let Some(at) = self.at(fd)? else {
            return Ok(None);
        };
        let c = self.check(&at, path, access, last, false).await?;
        self.pin(fd, &at, &c)
    }
}

/// Runs `$call(dir, name, flags)` on the pinned parent if there is one, else with the guest's
/// own descriptor, path and flags; drops the pin either way.
macro_rules! run {
    ($self:ident, $pin:expr, $fd:ident, $path:ident, $flags:expr, |$d:ident, $n:ident, $f:ident| $call:expr) => {{
        match $pin {
            Some(p) => {
                let ($d, $n, $f) = (p.dir(), p.name.clone(), unfollowed($flags));
                let r = $call;
                $self.unpin(p);
                r
            }
            None => {
                let ($d, $n, $f) = ($fd, $path, $flags);
                $call
            }
        }
    }};
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
        if self.guard.opened.len() >= self.guard.max_open {
            return Err(ErrorCode::Quota.into());
        }
        let Some(at) = self.at(&fd)? else {
            return self
                .inner
                .open_at(fd, path_flags, path, oflags, flags)
                .await;
        };
        let access = Access::of_open(oflags, flags);
        let creates = oflags.contains(types::OpenFlags::CREATE);
        let c = self
            .check(&at, &path, access, follows(path_flags), creates)
            .await?;
        let pin = self.pin(&fd, &at, &c)?;
        let opened = run!(self, pin, fd, path, path_flags, |d, n, f| self
            .inner
            .open_at(d, f, n, oflags, flags)
            .await)?;
        #[cfg(target_os = "linux")]
        if let Err(e) = self.recheck(&at, &opened, &c.rel, access).await {
            self.inner.table.delete(opened)?;
            return Err(e);
        }
        let decided = guest_path(&at.mount, &c.rel, std::path::Path::new(""));
        self.guard.opened.insert(
            opened.rep(),
            Opened {
                access,
                mount: at.mount.clone(),
                path: decided,
            },
        );
        self.track(&opened, at.mount, c.rel);
        Ok(opened)
    }

    async fn stat_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        let pin = self
            .prepare(&fd, &path, Access::READ, follows(path_flags))
            .await?;
        run!(self, pin, fd, path, path_flags, |d, n, f| self
            .inner
            .stat_at(d, f, n)
            .await)
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        let pin = self
            .prepare(&fd, &path, Access::WRITE, follows(path_flags))
            .await?;
        run!(self, pin, fd, path, path_flags, |d, n, f| self
            .inner
            .set_times_at(d, f, n, atim, mtim)
            .await)
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<Descriptor>,
        path_flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        let pin = self
            .prepare(&fd, &path, Access::READ, follows(path_flags))
            .await?;
        run!(self, pin, fd, path, path_flags, |d, n, f| self
            .inner
            .metadata_hash_at(d, f, n)
            .await)
    }

    async fn readlink_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<String> {
        let pin = self
            .prepare(&fd, &path, Access::READ, Last::NoFollow)
            .await?;
        run!(
            self,
            pin,
            fd,
            path,
            types::PathFlags::empty(),
            |d, n, _f| self.inner.readlink_at(d, n).await
        )
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let pin = self.prepare(&fd, &path, Access::WRITE, Last::Entry).await?;
        run!(
            self,
            pin,
            fd,
            path,
            types::PathFlags::empty(),
            |d, n, _f| self.inner.create_directory_at(d, n).await
        )
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let pin = self.prepare(&fd, &path, Access::WRITE, Last::Entry).await?;
        run!(
            self,
            pin,
            fd,
            path,
            types::PathFlags::empty(),
            |d, n, _f| self.inner.remove_directory_at(d, n).await
        )
    }

    async fn unlink_file_at(&mut self, fd: Resource<Descriptor>, path: String) -> FsResult<()> {
        let pin = self.prepare(&fd, &path, Access::WRITE, Last::Entry).await?;
        run!(
            self,
            pin,
            fd,
            path,
            types::PathFlags::empty(),
            |d, n, _f| self.inner.unlink_file_at(d, n).await
        )
    }

    async fn rename_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let (Some(at), Some(new_at)) = (self.at(&fd)?, self.at(&new_fd)?) else {
            return self.inner.rename_at(fd, old_path, new_fd, new_path).await;
        };
        // A new name gives the contents to whoever may use it, and the old name's rules
        // stop applying: both names are decided for both accesses, and so is every entry
        // below a directory, under its old and its new name.
        let old = self
            .check(&at, &old_path, Access::BOTH, Last::Entry, false)
            .await?;
        let new = self
            .check(&new_at, &new_path, Access::BOTH, Last::Entry, false)
            .await?;
        self.check_subtree(&at, &old, &new_at.mount, &new).await?;
        let from = self.pin(&fd, &at, &old)?;
        let to = match self.pin(&new_fd, &new_at, &new) {
            Ok(p) => p,
            Err(e) => {
                if let Some(p) = from {
                    self.unpin(p);
                }
                return Err(e);
            }
        };
        match (from, to) {
            (Some(from), Some(to)) => {
                let r = self
                    .inner
                    .rename_at(from.dir(), from.name.clone(), to.dir(), to.name.clone())
                    .await;
                self.unpin(from);
                self.unpin(to);
                r
            }
            (from, to) => {
                for p in [from, to].into_iter().flatten() {
                    self.unpin(p);
                }
                self.inner.rename_at(fd, old_path, new_fd, new_path).await
            }
        }
    }

    async fn link_at(
        &mut self,
        fd: Resource<Descriptor>,
        old_path_flags: types::PathFlags,
        old_path: String,
        new_fd: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        // What wasmtime answers for a link that would follow a symlink.
        if old_path_flags.contains(types::PathFlags::SYMLINK_FOLLOW) {
            return Err(ErrorCode::Invalid.into());
        }
        let (Some(at), Some(new_at)) = (self.at(&fd)?, self.at(&new_fd)?) else {
            return self
                .inner
                .link_at(fd, old_path_flags, old_path, new_fd, new_path)
                .await;
        };
        // A new name for a file gives whoever may use the new name its contents: both names
        // are decided for reading and writing.
        let old = self
            .check(&at, &old_path, Access::BOTH, follows(old_path_flags), false)
            .await?;
        let new = self
            .check(&new_at, &new_path, Access::BOTH, Last::Entry, false)
            .await?;
        let from = self.pin(&fd, &at, &old)?;
        let to = match self.pin(&new_fd, &new_at, &new) {
            Ok(p) => p,
            Err(e) => {
                if let Some(p) = from {
                    self.unpin(p);
                }
                return Err(e);
            }
        };
        match (from, to) {
            (Some(from), Some(to)) => {
                let r = self
                    .inner
                    .link_at(
                        from.dir(),
                        unfollowed(old_path_flags),
                        from.name.clone(),
                        to.dir(),
                        to.name.clone(),
                    )
                    .await;
                self.unpin(from);
                self.unpin(to);
                r
            }
            (from, to) => {
                for p in [from, to].into_iter().flatten() {
                    self.unpin(p);
                }
                self.inner
                    .link_at(fd, old_path_flags, old_path, new_fd, new_path)
                    .await
            }
        }
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<Descriptor>,
        src_path: String,
        dest_path: String,
    ) -> FsResult<()> {
        let Some(at) = self.at(&fd)? else {
            return self.inner.symlink_at(fd, src_path, dest_path).await;
        };
        let c = self
            .check(&at, &dest_path, Access::WRITE, Last::Entry, false)
            .await?;
        // Where the link points, read from the link's directory: following it later is
        // decided again; this refuses pointing into denied places to begin with.
        let link_dir = std::path::Path::new(&dest_path)
            .parent()
            .map(std::path::Path::to_owned)
            .unwrap_or_default();
        let target = guest_path(
            &at.mount,
            &at.rel.join(link_dir),
            std::path::Path::new(&src_path),
        );
        self.decide(target, false).await?;
        let pin = self.pin(&fd, &at, &c)?;
        let path = dest_path;
        run!(
            self,
            pin,
            fd,
            path,
            types::PathFlags::empty(),
            |d, n, _f| self.inner.symlink_at(d, src_path, n).await
        )
    }

    fn drop(&mut self, fd: Resource<Descriptor>) -> wasmtime::Result<()> {
        self.guard.dirs.remove(&fd.rep());
        self.guard.opened.remove(&fd.rep());
        HostDescriptor::drop(&mut self.inner, fd)
    }

    // Calls on an open descriptor: held to what its open was decided for.

    fn read_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynInputStream>> {
        self.within_now(&fd, Access::READ)?;
        self.inner.read_via_stream(fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
        offset: types::Filesize,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.within_now(&fd, Access::WRITE)?;
        self.inner.write_via_stream(fd, offset)
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.within_now(&fd, Access::WRITE)?;
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
        self.within(&fd, Access::WRITE).await?;
        self.inner.sync_data(fd).await
    }

    async fn get_flags(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorFlags> {
        self.inner.get_flags(fd).await
    }

    async fn get_type(&mut self, fd: Resource<Descriptor>) -> FsResult<types::DescriptorType> {
        self.inner.get_type(fd).await
    }

    async fn set_size(&mut self, fd: Resource<Descriptor>, size: types::Filesize) -> FsResult<()> {
        self.within(&fd, Access::WRITE).await?;
        self.inner.set_size(fd, size).await
    }

    async fn set_times(
        &mut self,
        fd: Resource<Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        self.within(&fd, Access::WRITE).await?;
        self.inner.set_times(fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<Descriptor>,
        len: types::Filesize,
        offset: types::Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        self.within(&fd, Access::READ).await?;
        self.inner.read(fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<Descriptor>,
        buf: Vec<u8>,
        offset: types::Filesize,
    ) -> FsResult<types::Filesize> {
        self.within(&fd, Access::WRITE).await?;
        self.inner.write(fd, buf, offset).await
    }

    async fn read_directory(
        &mut self,
        fd: Resource<Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        self.within(&fd, Access::READ).await?;
        self.inner.read_directory(fd).await
    }

    async fn sync(&mut self, fd: Resource<Descriptor>) -> FsResult<()> {
        self.within(&fd, Access::WRITE).await?;
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
