//! Extracting `root.tar` under the target root, with a journal that can undo it.
//!
//! Every change goes through [`Beneath`]: nothing is written, renamed or removed outside the
//! target root, whatever symlinks the archive planted or the host has. Nothing on the host is
//! deleted: a path the archive replaces is first renamed into the rollback directory (same
//! filesystem, same relative layout); every path created is recorded; existing directories' mode,
//! owner and mtime are recorded before they are touched. `rollback` undoes all of it in reverse
//! and removes the rollback directory, leaving the tree as it was.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, FileTimes};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::time::SystemTime;

use super::beneath::Beneath;
use crate::archive::manifest::{DigestAlgo, Entry as ManifestEntry, FileHasher, Manifest};
use crate::archive::member::{self, Attrs};
use crate::archive::paths::safe_relative;

#[derive(Debug, Clone)]
struct DirMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

impl DirMeta {
    fn of(m: &fs::Metadata) -> Self {
        DirMeta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    fn apply(&self, fs: &Beneath, path: &Path) -> io::Result<()> {
        let dir = File::from(fs.open_dir(path)?);
        if nix::unistd::geteuid().is_root() {
            let _ = std::os::unix::fs::fchown(&dir, Some(self.uid), Some(self.gid));
        }
        dir.set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(|e| in_path("chmod", path, e))?;
        dir.set_times(FileTimes::new().set_modified(self.mtime))
            .map_err(|e| in_path("set the mtime of", path, e))
    }
}

/// An I/O error that says what was being done to which path.
fn in_path(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

pub struct Journal {
    pub fs: Beneath,
    root: PathBuf,
    pub rollback_dir: PathBuf,
    /// (original location, where it was moved)
    moved: Vec<(PathBuf, PathBuf)>,
    created: Vec<PathBuf>,
    /// Directories moved in whole from the staging directory (removed whole on rollback).
    pub created_trees: Vec<PathBuf>,
    dirs_before: BTreeMap<PathBuf, DirMeta>,
}

impl Journal {
    pub fn new(root: &Path) -> io::Result<Journal> {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S%.3f");
        let rollback_dir = root.join(format!(".juju-brd-rollback-{stamp}"));
        let mut j = Journal {
            fs: Beneath::open(root)?,
            root: root.to_path_buf(),
            rollback_dir,
            moved: Vec::new(),
            created: Vec::new(),
            created_trees: Vec::new(),
            dirs_before: BTreeMap::new(),
        };
        // Creating the rollback directory changes the root's mtime; remember it first.
        j.remember_dir(root);
        j.fs.mkdir(&j.rollback_dir, 0o700)?;
        Ok(j)
    }

    /// Records an existing directory's metadata once, before anything changes it.
    pub fn remember_dir(&mut self, dir: &Path) {
        if self.dirs_before.contains_key(dir) {
            return;
        }
        let meta = if dir == self.root {
            fs::metadata(dir).ok()
        } else {
            self.fs.metadata(dir).ok().flatten()
        };
        if let Some(m) = meta.filter(|m| m.is_dir()) {
            self.dirs_before.insert(dir.to_path_buf(), DirMeta::of(&m));
        }
    }

    /// Moves whatever is at `path` (not a directory) into the rollback directory.
    pub fn move_aside(&mut self, path: &Path) -> io::Result<()> {
        let Some(kind) = self.fs.kind(path)? else {
            return Ok(());
        };
        if kind == rustix::fs::FileType::Directory {
            return Err(io::Error::other(format!(
                "{} is a directory on this host but not in the archive; refusing to replace it",
                path.display()
            )));
        }
        if self.created.iter().any(|c| c == path) {
            // Written by this run, not the host's: replace it, and keep the host's original
            // (already in the rollback directory under this name) safe.
            return self.fs.remove_file(path);
        }
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let saved = self.rollback_dir.join(rel);
        if self.fs.kind(&saved)?.is_some() {
            return Err(io::Error::other(format!(
                "{} was already moved aside once in this restore",
                path.display()
            )));
        }
        if let Some(p) = saved.parent() {
            self.create_dirs_untracked(p)?;
        }
        if let Some(parent) = path.parent() {
            self.remember_dir(parent);
        }
        self.fs.rename(path, &saved)?;
        self.moved.push((path.to_path_buf(), saved));
        Ok(())
    }

    /// The directories under `dir` that do not exist yet, outermost first.
    fn missing_dirs(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        for a in dir.ancestors() {
            if a == self.root || self.fs.kind(a)?.is_some() {
                break;
            }
            missing.push(a.to_path_buf());
        }
        missing.reverse();
        Ok(missing)
    }

    /// Directories inside the rollback directory: removed with it, so not journaled.
    fn create_dirs_untracked(&mut self, dir: &Path) -> io::Result<()> {
        for d in self.missing_dirs(dir)? {
            self.fs.mkdir(&d, 0o700)?;
        }
        Ok(())
    }

    /// Creates missing directories up to and including `dir`, recording each one created. They
    /// get 0755, as on a Juju host (root.tar need not list parents; those it lists get their
    /// archived mode at the end of the extraction).
    pub fn create_dirs(&mut self, dir: &Path) -> io::Result<()> {
        for d in self.missing_dirs(dir)? {
            if let Some(parent) = d.parent() {
                self.remember_dir(parent);
            }
            self.fs.mkdir(&d, 0o700)?;
            self.created.push(d.clone());
            File::from(self.fs.open_dir(&d)?)
                .set_permissions(fs::Permissions::from_mode(0o755))
                .map_err(|e| in_path("chmod", &d, e))?;
        }
        Ok(())
    }

    pub fn created_file(&mut self, path: &Path) {
        if let Some(parent) = path.parent() {
            self.remember_dir(parent);
        }
        self.created.push(path.to_path_buf());
    }

    /// Undoes everything, newest first, and removes the rollback directory.
    pub fn rollback(self) -> io::Result<()> {
        let mut first_err = None;
        let mut note = |r: io::Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        for p in self.created_trees.iter().rev() {
            note(self.fs.remove_tree(p));
        }
        for p in self.created.iter().rev() {
            let r = match self.fs.kind(p) {
                Ok(Some(rustix::fs::FileType::Directory)) => self.fs.remove_dir(p),
                Ok(Some(_)) => self.fs.remove_file(p),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            note(r);
        }
        for (orig, saved) in self.moved.iter().rev() {
            note(self.fs.rename(saved, orig));
        }
        // Deepest first, so a parent's mtime is set after its children stop changing it.
        for (dir, meta) in self.dirs_before.iter().rev() {
            if *dir != self.root && matches!(self.fs.kind(dir), Ok(Some(_))) {
                note(meta.apply(&self.fs, dir));
            }
        }
        note(self.fs.remove_tree(&self.rollback_dir));
        if let Some(meta) = self.dirs_before.get(&self.root) {
            note(apply_root(meta, &self.root));
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The target root itself is the operator's directory: opened by its path.
fn apply_root(meta: &DirMeta, root: &Path) -> io::Result<()> {
    let dir = File::open(root)?;
    dir.set_permissions(fs::Permissions::from_mode(meta.mode))?;
    dir.set_times(FileTimes::new().set_modified(meta.mtime))
}

#[derive(Debug, Default)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
}

/// Progress callback: (files done, bytes done).
pub type OnProgress<'a> = &'a mut dyn FnMut(u64, u64);

/// The owner to restore: the archived user and group by name where this host has them (uids
/// differ between hosts), else the archived numbers. Each name is looked up once: the lookup
/// reads /etc/passwd or /etc/group, which for 100k files cost restore almost a second.
#[derive(Default)]
struct Owners {
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl Owners {
    fn of(&mut self, a: &Attrs) -> (u32, u32) {
        let uid = a.user.as_deref().and_then(|n| {
            *self.users.entry(n.to_string()).or_insert_with(|| {
                nix::unistd::User::from_name(n)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            })
        });
        let gid = a.group.as_deref().and_then(|n| {
            *self.groups.entry(n.to_string()).or_insert_with(|| {
                nix::unistd::Group::from_name(n)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            })
        });
        (uid.unwrap_or(a.uid), gid.unwrap_or(a.gid))
    }
}

/// What extraction may restore beyond plain files.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtractOptions {
    /// Keep setuid/setgid bits and `security.capability` (otherwise stripped, as the plan says).
    pub keep_privileges: bool,
}

/// Extracts every member of `root_tar` under the journal's root. Each member passes the same
/// checks as in `verify` (path, type, mode, owner, time); with a manifest, each file's digest and
/// size are checked as it is written, and every member must be listed.
pub fn extract<R: Read>(
    root_tar: R,
    journal: &mut Journal,
    manifest: Option<&Manifest>,
    opts: ExtractOptions,
    progress: OnProgress<'_>,
) -> io::Result<Extracted> {
    let root = journal.root.clone();
    let is_root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(root_tar);
    let mut dirs: Vec<(PathBuf, DirMeta)> = Vec::new();
    let mut done = Extracted::default();
    let mut owners = Owners::default();
    // Symlinks this extraction created. Nothing is written through one (verify's rule too): the
    // write would land inside the root, but not where the journal records it, and rollback
    // could not find it (the restore_extract fuzz target's first timed run found that).
    let mut links: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = safe_relative(&entry.path_bytes()).map_err(io::Error::other)?;
        let key = rel.display().to_string();
        if let Some(link) = rel.ancestors().skip(1).find(|a| links.contains(*a)) {
            return Err(io::Error::other(format!(
                "{key} would be written through symlink {}",
                link.display()
            )));
        }
        let dest = root.join(&rel);
        let mut attrs = member::attrs(&mut entry, &key).map_err(io::Error::other)?;
        if !opts.keep_privileges {
            attrs = attrs.without_privileges();
        }
        let (uid, gid) = owners.of(&attrs);
        let want = match manifest {
            Some(m) => Some(m.root.get(&key).ok_or_else(|| {
                io::Error::other(format!(
                    "{key} is not in the verified manifest; the archive changed after it was verified"
                ))
            })?),
            None => None,
        };
        if let Some(parent) = dest.parent() {
            journal.create_dirs(parent)?;
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match journal.fs.kind(&dest)? {
                    Some(rustix::fs::FileType::Directory) => journal.remember_dir(&dest),
                    Some(_) => {
                        journal.move_aside(&dest)?;
                        journal.create_dirs(&dest)?;
                    }
                    None => journal.create_dirs(&dest)?,
                }
                dirs.push((
                    dest,
                    DirMeta {
                        mode: attrs.mode,
                        uid,
                        gid,
                        mtime: attrs.mtime,
                    },
                ));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                journal.move_aside(&dest)?;
                let mut f = journal.fs.create_file(&dest, 0o600)?;
                journal.created_file(&dest);
                let mut h = manifest.map_or(DigestAlgo::WRITTEN, |m| m.algo()).hasher();
                let n = io::copy(
                    &mut Tee {
                        inner: &mut entry,
                        hash: &mut h,
                    },
                    &mut f,
                )
                .map_err(|e| in_path("write", &dest, e))?;
                if let Some(want) = want {
                    let got = h.finalize_hex();
                    if !want.digest_matches(&got) || want.size != n {
                        return Err(io::Error::other(format!(
                            "{key} does not match the manifest; the archive changed after it was verified"
                        )));
                    }
                }
                if is_root {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                        .map_err(|e| in_path("chown", &dest, e))?;
                }
                f.set_permissions(fs::Permissions::from_mode(attrs.mode))
                    .map_err(|e| in_path("chmod", &dest, e))?;
                for (k, v) in &attrs.xattrs {
                    if let Err(e) = xattr::FileExt::set_xattr(&f, k, v) {
                        tracing::warn!(path = %dest.display(), xattr = %k, error = %e, "extended attribute not restored");
                    }
                }
                f.set_times(FileTimes::new().set_modified(attrs.mtime))
                    .map_err(|e| in_path("set the mtime of", &dest, e))?;
                done.files += 1;
                done.bytes += n;
                progress(done.files, done.bytes);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other(format!("symlink {key} has no target")))?;
                journal.move_aside(&dest)?;
                journal.fs.symlink(&target, &dest)?;
                journal.created_file(&dest);
                links.insert(rel.clone());
                if is_root {
                    journal.fs.lchown(&dest, uid, gid)?;
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other(format!("hardlink {key} has no target")))?;
                let target = root.join(
                    safe_relative(target.as_os_str().as_encoded_bytes())
                        .map_err(io::Error::other)?,
                );
                journal.move_aside(&dest)?;
                journal.fs.hard_link(&target, &dest)?;
                journal.created_file(&dest);
            }
            other => {
                return Err(io::Error::other(format!(
                    "{key}: member type {other:?} is not restored"
                )))
            }
        }
    }
    // Directory metadata last: creating children changes a directory's mtime.
    for (dir, meta) in dirs.iter().rev() {
        meta.apply(&journal.fs, dir)?;
    }
    // Every restored file and directory durable at once: one syncfs on the target filesystem does
    // what an fsync per file would, without 100k round trips to the disk.
    journal.fs.sync()?;
    Ok(done)
}

struct Tee<'a, R> {
    inner: &'a mut R,
    hash: &'a mut FileHasher,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Replaces `dest` with `src` (staged beneath the root, same filesystem) atomically, moving the
/// old file aside first. The directory keeps its mtime: it was set from the archive, and swapping
/// one file's content in place is not a change to the directory the operator should see.
pub fn replace_file(journal: &mut Journal, src: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("/")).to_path_buf();
    // Creating missing directories changes the nearest existing one; keep its mtime too.
    let missing = journal.missing_dirs(&parent)?;
    let existing = missing
        .first()
        .and_then(|d| d.parent())
        .map_or(parent.clone(), Path::to_path_buf);
    let mtime_of = |j: &Journal, d: &Path| -> io::Result<SystemTime> {
        let m = if d == j.root {
            fs::metadata(d)?
        } else {
            File::from(j.fs.open_dir(d)?).metadata()?
        };
        m.modified()
    };
    let existing_mtime = mtime_of(journal, &existing)?;
    journal.create_dirs(&parent)?;
    let set_mtime = |j: &Journal, d: &Path, t: SystemTime| -> io::Result<()> {
        let dir = if d == j.root {
            File::open(d)?
        } else {
            File::from(j.fs.open_dir(d)?)
        };
        dir.set_times(FileTimes::new().set_modified(t))?;
        dir.sync_all()
    };
    if existing != parent {
        set_mtime(journal, &existing, existing_mtime)?;
    }
    let mtime = mtime_of(journal, &parent)?;
    journal.move_aside(dest)?;
    journal.fs.rename(src, dest)?;
    journal.created_file(dest);
    set_mtime(journal, &parent, mtime)
}

/// Database engines change target files through the journal, so rollback covers them too.
impl crate::db::TargetFiles for Journal {
    fn move_aside(&mut self, path: &Path) -> io::Result<()> {
        Journal::move_aside(self, path)
    }

    fn replace_file(&mut self, staged: &Path, dest: &Path) -> io::Result<()> {
        replace_file(self, staged, dest)
    }

    fn existing_file(&mut self, path: &Path) -> io::Result<Option<(u32, u32, u32)>> {
        Ok(self
            .fs
            .metadata(path)?
            .filter(|m| m.is_file())
            .map(|m| (m.mode() & 0o777, m.uid(), m.gid())))
    }
}

/// Restore's single pass: the archive is verified and extracted at once into a private staging
/// directory on the target filesystem (`.juju-brd-staging-*` under the target root), and nothing
/// else is touched until every check has passed. [`install`] then moves the staged tree into place
/// through the journal (renames only), so a refused archive changed nothing outside the staging
/// directory, which is removed, and the target root's mtime is put back.
pub struct Staging {
    fs: Beneath,
    /// Beneath `files/`: whatever links the archive holds, nothing staged lands outside it.
    tree: Beneath,
    root: PathBuf,
    /// The staging directory; `files/` holds root.tar's tree, `dump/` the dump files.
    pub dir: PathBuf,
    root_before: Option<DirMeta>,
    keep_privileges: bool,
    is_root: bool,
    /// Directories known to exist under `files/`.
    made: std::collections::HashSet<PathBuf>,
    owners: Owners,
    /// The staging directory, open for `syncfs` since before the first file was written.
    sync_fd: std::sync::Arc<std::os::fd::OwnedFd>,
    /// A `syncfs` started in the background while staging goes on (see [`Staging::EARLY_SYNC`]).
    early_sync: Option<std::thread::JoinHandle<io::Result<()>>>,
    /// Bytes staged since the last `syncfs` started.
    since_sync: u64,
    /// Sets staged files' owner, mode, attributes and mtime and closes them.
    finisher: Option<Finisher>,
    /// The directory the last file was created in, resolved beneath `files/` once for all of
    /// its files (tar lists a directory's files together).
    last_dir: Option<(PathBuf, std::os::fd::OwnedFd)>,
    /// The file being written: unbuffered, as content arrives in large chunks (`offload`).
    current: Option<(PathBuf, Writing)>,
    /// Directories' metadata to set once everything is in place: as archived, or for one root.tar
    /// does not list, 0755 (as on a Juju host), owned by this process.
    dirs: Vec<(PathBuf, DirMeta)>,
    pub files: u64,
    pub bytes: u64,
    installed: bool,
}

impl Staging {
    pub fn new(root: &Path, keep_privileges: bool) -> io::Result<Staging> {
        let root_before = fs::metadata(root).ok().map(|m| DirMeta::of(&m));
        let fs = Beneath::open(root)?;
        let dir = root.join(format!(
            ".juju-brd-staging-{}",
            uuid::Uuid::new_v4().simple()
        ));
        fs.mkdir(&dir, 0o700)?;
        fs.mkdir(&dir.join("files"), 0o700)?;
        fs.mkdir(&dir.join("dump"), 0o700)?;
        let tree = Beneath::open(&dir.join("files"))?;
        // Opened before anything is staged: syncfs reports a writeback error only to
        // descriptors opened before it happened, and writeback starts early here.
        let sync_fd = std::sync::Arc::new(fs.open_dir(&dir)?);
        let s = Staging {
            sync_fd,
            early_sync: None,
            since_sync: 0,
            fs,
            tree,
            root: root.to_path_buf(),
            dir: dir.clone(),
            root_before,
            keep_privileges,
            is_root: nix::unistd::geteuid().is_root(),
            made: std::collections::HashSet::new(),
            owners: Owners::default(),
            finisher: None,
            last_dir: None,
            current: None,
            dirs: Vec::new(),
            files: 0,
            bytes: 0,
            installed: false,
        };
        Ok(s)
    }

    pub fn dump_dir(&self) -> PathBuf {
        self.dir.join("dump")
    }

    fn staged(&self, rel: &Path) -> PathBuf {
        self.dir.join("files").join(rel)
    }

    /// Creates the staged directory `rel` and its parents (0700 while staging).
    fn make_dirs(&mut self, rel: &Path) -> io::Result<()> {
        if rel.as_os_str().is_empty() || self.made.contains(rel) {
            return Ok(());
        }
        let path = self.staged(rel);
        self.tree.create_dir_all(&path, 0o700)?;
        let mut new = Vec::new();
        for a in rel.ancestors() {
            if a.as_os_str().is_empty() || !self.made.insert(a.to_path_buf()) {
                break;
            }
            new.push(a.to_path_buf());
        }
        for d in new.into_iter().rev() {
            self.dirs.push((
                d,
                DirMeta {
                    mode: 0o755,
                    uid: nix::unistd::geteuid().as_raw(),
                    gid: nix::unistd::getegid().as_raw(),
                    mtime: SystemTime::now(),
                },
            ));
        }
        Ok(())
    }

    /// Hands the file just written to the finishing thread.
    fn finish_file(&mut self, attrs: &Attrs) -> io::Result<()> {
        let Some((path, Writing { file, .. })) = self.current.take() else {
            return Ok(());
        };
        let owner = self.is_root.then(|| self.owners.of(attrs));
        let job = Finish {
            path,
            file,
            owner,
            mode: attrs.mode,
            xattrs: attrs.xattrs.clone(),
            mtime: attrs.mtime,
        };
        // Queued jobs stay small: the rare file with large extended attributes (the archive's to
        // choose) is finished here and now instead.
        let xattr_bytes: usize = job.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        if xattr_bytes > Finisher::MAX_QUEUED_XATTRS {
            return job.apply();
        }
        self.finisher.get_or_insert_with(Finisher::start).send(job)
    }

    /// Waits for every staged file's last steps and any background `syncfs`; the first that
    /// failed fails this.
    pub fn settle(&mut self) -> io::Result<()> {
        let finished = match self.finisher.take() {
            Some(f) => f.settle(),
            None => Ok(()),
        };
        let synced = self.join_early_sync();
        finished.and(synced)
    }

    fn join_early_sync(&mut self) -> io::Result<()> {
        match self.early_sync.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the background syncfs panicked"))),
            None => Ok(()),
        }
    }

    /// Once this many bytes are staged, a `syncfs` starts in the background (one at a time), so
    /// the small files' data and inodes, which get no writeback hint of their own, are mostly on
    /// disk before the pass ends and its `syncfs` waits for less.
    const EARLY_SYNC: u64 = 128 << 20;

    fn count_staged(&mut self, bytes: u64) -> io::Result<()> {
        self.since_sync += bytes;
        if self.since_sync < Self::EARLY_SYNC
            || self.early_sync.as_ref().is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        // A failed earlier one is reported now: the descriptor will not report it again.
        self.join_early_sync()?;
        self.since_sync = 0;
        let fd = self.sync_fd.clone();
        self.early_sync = Some(std::thread::spawn(move || {
            rustix::fs::syncfs(&*fd).map_err(io::Error::from)
        }));
        Ok(())
    }

    /// Makes everything staged durable (one `syncfs` on the descriptor opened before staging
    /// began), once every file is finished.
    pub fn sync(&mut self) -> io::Result<()> {
        self.settle()?;
        rustix::fs::syncfs(&*self.sync_fd).map_err(|e| in_path("syncfs", &self.dir, e.into()))
    }

    /// Moves the staged tree into place under the target root through `journal` (so rollback
    /// covers it): a directory the target lacks moves in whole with everything below it, any
    /// other member by itself, replacing what was there (moved aside). Then the archived
    /// directories' metadata, and one `syncfs`.
    pub fn install(
        &mut self,
        journal: &mut Journal,
        progress: OnProgress<'_>,
    ) -> io::Result<Extracted> {
        self.install_dir(journal, Path::new(""))?;
        // Children are all in place: set the directories' metadata (later entries win).
        for (rel, meta) in &self.dirs {
            meta.apply(&journal.fs, &self.root.join(rel))?;
        }
        journal.fs.sync()?;
        self.installed = true;
        progress(self.files, self.bytes);
        Ok(Extracted {
            files: self.files,
            bytes: self.bytes,
        })
    }

    /// Moves what is staged under `rel` into place, recursing only into directories the target
    /// already has.
    fn install_dir(&self, journal: &mut Journal, rel: &Path) -> io::Result<()> {
        let mut names = self.tree.read_dir(&self.staged(rel))?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let src = self.staged(&rel);
            let dest = self.root.join(&rel);
            if self.tree.kind(&src)? == Some(rustix::fs::FileType::Directory) {
                match journal.fs.kind(&dest)? {
                    Some(rustix::fs::FileType::Directory) => {
                        journal.remember_dir(&dest);
                        self.install_dir(journal, &rel)?;
                        continue;
                    }
                    Some(_) => journal.move_aside(&dest)?,
                    None => {}
                }
                if let Some(parent) = dest.parent() {
                    journal.remember_dir(parent);
                }
                journal.fs.rename(&src, &dest)?;
                journal.created_trees.push(dest);
                continue;
            }
            journal.move_aside(&dest)?;
            journal.fs.rename(&src, &dest)?;
            journal.created_file(&dest);
        }
        Ok(())
    }
}

/// The last steps of a staged file, all through its descriptor: owner, mode, extended
/// attributes, mtime, close. They took a fifth of the staging thread's time, so a thread of
/// their own does them while the next files are created; at most `Finisher::DEPTH` files wait.
struct Finisher {
    tx: SyncSender<Finish>,
    done: std::thread::JoinHandle<Result<(), String>>,
}

struct Finish {
    path: PathBuf,
    file: File,
    /// Set only when running as root (chown needs it).
    owner: Option<(u32, u32)>,
    mode: u32,
    xattrs: Vec<(String, Vec<u8>)>,
    mtime: SystemTime,
}

impl Finish {
    fn apply(self) -> io::Result<()> {
        let Finish {
            path,
            file: f,
            owner,
            mode,
            xattrs,
            mtime,
        } = self;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| in_path("chown", &path, e))?;
        }
        // After chown, which clears setuid and setgid bits.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| in_path("chmod", &path, e))?;
        for (k, v) in &xattrs {
            if let Err(e) = xattr::FileExt::set_xattr(&f, k, v) {
                tracing::warn!(path = %path.display(), xattr = %k, error = %e, "extended attribute not restored");
            }
        }
        f.set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| in_path("set the mtime of", &path, e))
    }
}

impl Finisher {
    const DEPTH: usize = 256;
    /// Largest extended attributes (names and values) a queued job may hold: with `DEPTH`,
    /// at most 1 MiB waits. Capabilities and SELinux labels are tens of bytes.
    const MAX_QUEUED_XATTRS: usize = 4 << 10;

    fn start() -> Finisher {
        let (tx, rx) = sync_channel::<Finish>(Self::DEPTH);
        let done = std::thread::spawn(move || {
            let mut first = None;
            for job in rx {
                // After a failure the rest are only closed, so the sender never blocks.
                if first.is_none() {
                    if let Err(e) = job.apply() {
                        first = Some(e.to_string());
                    }
                }
            }
            first.map_or(Ok(()), Err)
        });
        Finisher { tx, done }
    }

    fn send(&mut self, job: Finish) -> io::Result<()> {
        self.tx
            .send(job)
            .map_err(|_| io::Error::other("the thread finishing staged files stopped"))
    }

    fn settle(self) -> io::Result<()> {
        drop(self.tx);
        match self.done.join() {
            Ok(r) => r.map_err(io::Error::other),
            Err(_) => Err(io::Error::other(
                "the thread finishing staged files panicked",
            )),
        }
    }
}

/// A staged file being written. Every [`Writing::KICK`] bytes, what was just written is handed
/// to the disk without waiting, so the large files are mostly on disk by the time the pass ends
/// and its `syncfs` waits for little. The hint is `POSIX_FADV_DONTNEED` on the range just
/// written: Linux starts writeback of its dirty pages (`WB_SYNC_NONE`, as
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` does, which has no safe binding) and drops only pages
/// already clean, which these are not yet, so they stay cached for the dump's check.
struct Writing {
    file: File,
    written: u64,
    kicked: u64,
}

impl Writing {
    const KICK: u64 = 8 << 20;

    fn new(file: File) -> Writing {
        Writing {
            file,
            written: 0,
            kicked: 0,
        }
    }
}

impl io::Write for Writing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.kicked >= Self::KICK {
            // Only a hint: its failure changes nothing but when the data reaches the disk.
            let _ = nix::fcntl::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                self.kicked as i64,
                (self.written - self.kicked) as i64,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.kicked = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl crate::archive::verify::Stage for Staging {
    fn file(&mut self, path: &Path) -> Result<&mut dyn io::Write, String> {
        let rel = path.to_path_buf();
        if let Some(parent) = rel.parent() {
            self.make_dirs(parent).map_err(|e| e.to_string())?;
        }
        let dest = self.staged(&rel);
        let create = |s: &mut Self| -> io::Result<File> {
            let parent = dest.parent().unwrap_or(&s.dir);
            let name = dest
                .file_name()
                .ok_or_else(|| io::Error::other("names no file"))?;
            if s.last_dir.as_ref().is_none_or(|(d, _)| d != parent) {
                s.last_dir = Some((parent.to_path_buf(), s.tree.dir_handle(parent)?));
            }
            let (_, dir) = s.last_dir.as_ref().expect("just set");
            s.tree.create_file_in(dir, name, &dest, 0o600)
        };
        let f = create(self).map_err(|e| in_path("create", &dest, e).to_string())?;
        self.current = Some((dest, Writing::new(f)));
        Ok(&mut self.current.as_mut().expect("just set").1)
    }

    fn member(&mut self, path: &Path, entry: &ManifestEntry, attrs: &Attrs) -> Result<(), String> {
        use crate::archive::manifest::Kind;
        let mut attrs = attrs.clone();
        if !self.keep_privileges {
            attrs = attrs.without_privileges();
        }
        let rel = path.to_path_buf();
        let dest = self.staged(&rel);
        let err = |e: io::Error| e.to_string();
        if let Some(parent) = rel.parent() {
            self.make_dirs(parent).map_err(err)?;
        }
        match entry.kind {
            Kind::File => {
                self.finish_file(&attrs).map_err(err)?;
                self.files += 1;
                self.bytes += entry.size;
                // Inodes count too: a small file costs its block.
                self.count_staged(entry.size.max(4096)).map_err(err)?;
            }
            Kind::Dir => {
                self.make_dirs(&rel).map_err(err)?;
                let (uid, gid) = self.owners.of(&attrs);
                self.dirs.push((
                    rel.clone(),
                    DirMeta {
                        mode: attrs.mode,
                        uid,
                        gid,
                        mtime: attrs.mtime,
                    },
                ));
            }
            Kind::Symlink => {
                let target = PathBuf::from(entry.link.clone().unwrap_or_default());
                self.tree.symlink(&target, &dest).map_err(err)?;
                if self.is_root {
                    let (uid, gid) = self.owners.of(&attrs);
                    self.tree.lchown(&dest, uid, gid).map_err(err)?;
                }
            }
            Kind::Hardlink => {
                let target = self.staged(Path::new(&entry.link.clone().unwrap_or_default()));
                self.tree.hard_link(&target, &dest).map_err(err)?;
            }
        }
        Ok(())
    }

    fn dump(&mut self, rel: &str) -> Result<(&mut dyn io::Write, PathBuf), String> {
        let dest = self.dump_dir().join(rel);
        if let Some(p) = dest.parent() {
            self.fs
                .create_dir_all(p, 0o700)
                .map_err(|e| e.to_string())?;
        }
        let f = self
            .fs
            .create_file(&dest, 0o600)
            .map_err(|e| in_path("create", &dest, e).to_string())?;
        self.current = Some((dest.clone(), Writing::new(f)));
        Ok((&mut self.current.as_mut().expect("just set").1, dest))
    }

    fn dump_done(&mut self) -> Result<(), String> {
        // Unbuffered: every write has already reached the file (and failed there if it could).
        self.current = None;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.current = None;
        // No descriptor of the tree stays open, and no thread works on it, once it is removed.
        let _ = self.settle();
        let _ = self.fs.remove_tree(&self.dir);
        if !self.installed {
            // Nothing of this restore remains: the target root as it was.
            if let Some(meta) = &self.root_before {
                let _ = apply_root(meta, &self.root);
            }
        }
    }
}
