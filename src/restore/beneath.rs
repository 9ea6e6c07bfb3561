//! Every change restore makes on the host, made beneath the target root and nowhere else.
//!
//! Paths are resolved by the kernel relative to a descriptor of the target root with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, as if the root were `/` of a chroot: an
//! absolute symlink is read from the root (that is what an archived `/var/lib/...` link means on
//! the restored host), and `..` stops at the root, so no chain of links (`up -> ../../..`,
//! `esc -> up/..`) and no `..` can lead a write out. The last component of a path is never
//! followed: files are created with `O_EXCL | O_NOFOLLOW`, and renames, links and unlinks act on
//! the name inside its resolved parent. Whatever the archive planted and whatever the host's tree
//! holds, a write lands under the root.
//!
//! Under `/` that is the host's own layout (`/var/lib/juju -> /data/juju` is followed). Under
//! another target root, a host link that points out of it would be resolved inside the root
//! instead; [`Beneath::escapes`] finds such links while planning, so restore refuses before it
//! changes anything rather than write somewhere the operator did not mean.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// The target root, open.
#[derive(Debug)]
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Beneath {
    /// Opens the root directory (the operator's `--target-root`, followed if it is a symlink).
    pub fn open(root: &Path) -> io::Result<Beneath> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Beneath {
            root: fd,
            path: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.path
    }

    /// `path` relative to the root: it must be under the root lexically and hold no `..`.
    fn relative<'a>(&self, path: &'a Path) -> io::Result<&'a Path> {
        let rel = path.strip_prefix(&self.path).map_err(|_| {
            io::Error::other(format!(
                "{} is not under the restore target {}",
                path.display(),
                self.path.display()
            ))
        })?;
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(io::Error::other(format!(
                "{} leaves the restore target (`..`)",
                path.display()
            )));
        }
        Ok(rel)
    }

    /// Explains EXDEV/ELOOP as what they mean here.
    fn refused(&self, path: &Path, e: io::Error) -> io::Error {
        match e.raw_os_error() {
            Some(libc::EXDEV) | Some(libc::ELOOP) => io::Error::other(format!(
                "{} resolves outside the restore target {} (through a symlink or `..`); refused",
                path.display(),
                self.path.display()
            )),
            _ => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        }
    }

    /// Opens `rel` (relative, may be empty for the root itself) beneath the root.
    fn open_rel(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(errno)
    }

    /// The directory holding `path`, resolved beneath the root, and `path`'s last name.
    fn parent(&self, path: &Path) -> io::Result<(OwnedFd, OsString)> {
        let rel = self.relative(path)?;
        let name = rel
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?
            .to_os_string();
        let dir = rel.parent().unwrap_or(Path::new(""));
        let fd = self
            .open_rel(dir, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.refused(path, e))?;
        Ok((fd, name))
    }

    /// What is at `path` (not following a final symlink), or `None`.
    pub fn kind(&self, path: &Path) -> io::Result<Option<FileType>> {
        let (dir, name) = match self.parent(path) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(self.refused(path, errno(e))),
        }
    }

    /// Metadata of `path` (not following a final symlink), or `None` when nothing is there.
    pub fn metadata(&self, path: &Path) -> io::Result<Option<std::fs::Metadata>> {
        match self.kind(path)? {
            Some(FileType::Directory) => Ok(Some(File::from(self.open_dir(path)?).metadata()?)),
            Some(_) => {
                let (dir, name) = self.parent(path)?;
                let fd = rustix::fs::openat(
                    &dir,
                    &name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.refused(path, errno(e)))?;
                Ok(Some(File::from(fd).metadata()?))
            }
            None => Ok(None),
        }
    }

    /// Creates a new regular file (never replacing or following anything) for writing.
    pub fn create_file(&self, path: &Path, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(path)?;
        self.create_file_in(&dir, &name, path, mode)
    }

    /// The directory `dir`, resolved beneath the root, as a handle to create several files in
    /// with [`Beneath::create_file_in`]. It stays the directory it was resolved to, wherever
    /// that is renamed, so it is for a tree nothing else changes meanwhile (restore's staging).
    pub fn dir_handle(&self, dir: &Path) -> io::Result<OwnedFd> {
        let rel = self.relative(dir)?;
        self.open_rel(rel, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| self.refused(dir, e))
    }

    /// Creates the new regular file `name` (a single name) in `dir`, a handle from
    /// [`Beneath::dir_handle`]; `path` is only for messages.
    pub fn create_file_in(
        &self,
        dir: &OwnedFd,
        name: &std::ffi::OsStr,
        path: &Path,
        mode: u32,
    ) -> io::Result<File> {
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/')
        {
            return Err(io::Error::other(format!(
                "{} names no file",
                path.display()
            )));
        }
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| self.refused(path, errno(e)))?;
        Ok(File::from(fd))
    }

    /// Opens an existing regular file for reading; a symlink at `path` is refused.
    pub fn open_read(&self, path: &Path) -> io::Result<File> {
        let rel = self.relative(path)?;
        let fd = self
            .open_rel(rel, OFlags::RDONLY | OFlags::NOFOLLOW)
            .map_err(|e| self.refused(path, e))?;
        Ok(File::from(fd))
    }

    /// Opens an existing directory (to read or set its metadata); a symlink is refused.
    pub fn open_dir(&self, path: &Path) -> io::Result<OwnedFd> {
        let rel = self.relative(path)?;
        self.open_rel(rel, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW)
            .map_err(|e| self.refused(path, e))
    }

    pub fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(mode))
            .map_err(|e| self.refused(path, errno(e)))
    }

    /// Creates `dir` and its missing parents (each with `mode`), beneath the root.
    pub fn create_dir_all(&self, dir: &Path, mode: u32) -> io::Result<()> {
        let rel = self.relative(dir)?;
        let mut prefix = self.path.clone();
        for c in rel.components() {
            prefix.push(c);
            match self.kind(&prefix)? {
                Some(FileType::Directory) => {}
                Some(_) => {
                    return Err(io::Error::other(format!(
                        "{} is not a directory",
                        prefix.display()
                    )))
                }
                None => self.mkdir(&prefix, mode)?,
            }
        }
        Ok(())
    }

    /// Renames `from` to `to` (both beneath the root); a symlink is moved, never followed.
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (fd, fname) = self.parent(from)?;
        let (td, tname) = self.parent(to)?;
        rustix::fs::renameat(&fd, &fname, &td, &tname).map_err(|e| self.refused(to, errno(e)))
    }

    pub fn symlink(&self, target: &Path, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::symlinkat(target, &dir, &name).map_err(|e| self.refused(path, errno(e)))
    }

    /// A hard link at `path` to the existing `existing` (a final symlink is not followed).
    pub fn hard_link(&self, existing: &Path, path: &Path) -> io::Result<()> {
        let (ed, ename) = self.parent(existing)?;
        let (dir, name) = self.parent(path)?;
        rustix::fs::linkat(&ed, &ename, &dir, &name, AtFlags::empty())
            .map_err(|e| self.refused(path, errno(e)))
    }

    /// Changes the owner of `path` itself (a symlink is not followed).
    pub fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::chownat(
            &dir,
            &name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.refused(path, errno(e)))
    }

    /// The names in directory `path` (not `.` and `..`); a symlink is refused.
    pub fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let dir = File::from(self.open_dir(path)?);
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.push(name.to_os_string());
            }
        }
        Ok(names)
    }

    pub fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&dir, &name, AtFlags::empty())
            .map_err(|e| self.refused(path, errno(e)))
    }

    pub fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::unlinkat(&dir, &name, AtFlags::REMOVEDIR)
            .map_err(|e| self.refused(path, errno(e)))
    }

    /// Removes a directory tree that this restore created (its rollback directory).
    pub fn remove_tree(&self, path: &Path) -> io::Result<()> {
        match self.kind(path)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                for n in self.read_dir(path)? {
                    self.remove_tree(&path.join(n))?;
                }
                self.remove_dir(path)
            }
            Some(_) => self.remove_file(path),
        }
    }

    /// The first existing component of `path` (walking down from the root) that is a symlink
    /// leading outside the root (absolute, or climbing above it), which writes would not follow
    /// as the host does. Always `None` under `/`, where nothing leads outside.
    pub fn escapes(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        let rel = self.relative(path)?;
        if self.path == Path::new("/") {
            return Ok(None);
        }
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            prefix.push(c);
            let beneath = rustix::fs::openat2(
                &self.root,
                &prefix,
                OFlags::PATH | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(errno);
            match beneath {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ELOOP)) => {
                    return Ok(Some(self.path.join(&prefix)));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Flushes the target filesystem once (all restored files durable together).
    pub fn sync(&self) -> io::Result<()> {
        // syncfs needs a descriptor that is open for reading, not the O_PATH one.
        let root = self.open_rel(Path::new(""), OFlags::RDONLY | OFlags::DIRECTORY)?;
        rustix::fs::syncfs(&root).map_err(|e| self.refused(&self.path, errno(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fixture() -> (tempfile::TempDir, PathBuf, Beneath) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let b = Beneath::open(&root).unwrap();
        (dir, root, b)
    }

    #[test]
    fn writes_stay_beneath_whatever_the_links() {
        let (dir, root, b) = fixture();
        // An absolute link, a relative one that climbs out, and a chain that escapes only
        // when resolved as the kernel does: each lands inside the root, never outside.
        symlink("/", root.join("var/abs")).unwrap();
        symlink("../../../outside", root.join("var/lib/climb")).unwrap();
        symlink("../../../..", root.join("var/lib/up")).unwrap();
        symlink("up/..", root.join("var/lib/esc")).unwrap();
        for (i, bad) in ["var/abs", "var/lib/climb", "var/lib/up", "var/lib/esc"]
            .iter()
            .enumerate()
        {
            let p = root.join(bad).join(format!("x{i}"));
            // Created or refused (`climb` leads to a root/outside that does not exist)...
            let _ = b.create_file(&p, 0o600);
            let _ = b.mkdir(&root.join(bad).join(format!("d{i}")), 0o700);
            // ...and found by the planner as a link leading out of the root.
            assert!(b.escapes(&p).unwrap().is_some(), "{bad}");
        }
        // Nothing outside the root was touched.
        assert!(std::fs::read_dir(dir.path().join("outside"))
            .unwrap()
            .next()
            .is_none());
        let siblings: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(siblings.len(), 2, "{siblings:?}");
        // What `/` and `..` meant inside the root is where the files went.
        assert!(root.join("x0").is_file());
        assert!(root.join("x2").is_file() && root.join("x3").is_file());
        // `..` in the path itself is refused before the kernel sees it.
        assert!(b.create_file(&root.join("var/../../x"), 0o600).is_err());
        // A link that stays inside is the host's layout, followed and not reported.
        symlink("lib", root.join("var/inner")).unwrap();
        b.create_file(&root.join("var/inner/ok"), 0o600).unwrap();
        assert!(root.join("var/lib/ok").is_file());
        assert_eq!(b.escapes(&root.join("var/inner/ok")).unwrap(), None);
    }

    #[test]
    fn under_slash_nothing_leads_out() {
        let b = Beneath::open(Path::new("/")).unwrap();
        assert_eq!(b.escapes(Path::new("/var/run/x")).unwrap(), None);
    }

    #[test]
    fn the_last_component_is_never_followed() {
        let (dir, root, b) = fixture();
        let victim = dir.path().join("outside/victim");
        std::fs::write(&victim, b"keep").unwrap();
        symlink(&victim, root.join("var/lib/link")).unwrap();
        assert!(b.create_file(&root.join("var/lib/link"), 0o600).is_err());
        assert!(b.open_read(&root.join("var/lib/link")).is_err());
        // Renaming and removing act on the link itself.
        b.rename(&root.join("var/lib/link"), &root.join("var/lib/moved"))
            .unwrap();
        b.remove_file(&root.join("var/lib/moved")).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
