//! Extracting `root.tar` under the target root, with a journal that can undo it.
//!
//! Nothing on the host is deleted: a path the archive replaces is first renamed into the rollback
//! directory (same filesystem, same relative layout); every path created is recorded; existing
//! directories' mode, owner and mtime are recorded before they are touched. `rollback` undoes all of
//! it in reverse and removes the rollback directory, leaving the tree as it was.

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::archive::manifest::Entry as ManifestEntry;
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

    fn apply(&self, path: &Path) -> io::Result<()> {
        if nix::unistd::geteuid().is_root() {
            let _ = nix::unistd::chown(path, Some(self.uid.into()), Some(self.gid.into()));
        }
        fs::set_permissions(path, fs::Permissions::from_mode(self.mode))?;
        File::open(path)?.set_times(FileTimes::new().set_modified(self.mtime))
    }
}

pub struct Journal {
    root: PathBuf,
    pub rollback_dir: PathBuf,
    /// (original location, where it was moved)
    moved: Vec<(PathBuf, PathBuf)>,
    created: Vec<PathBuf>,
    dirs_before: BTreeMap<PathBuf, DirMeta>,
}

impl Journal {
    pub fn new(root: &Path) -> io::Result<Journal> {
        let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S%.3f");
        let rollback_dir = root.join(format!(".juju-brd-rollback-{stamp}"));
        let mut j = Journal {
            root: root.to_path_buf(),
            rollback_dir,
            moved: Vec::new(),
            created: Vec::new(),
            dirs_before: BTreeMap::new(),
        };
        // Creating the rollback directory changes the root's mtime; remember it first.
        j.remember_dir(root);
        fs::DirBuilder::new().mode_0700().create(&j.rollback_dir)?;
        Ok(j)
    }

    /// Records an existing directory's metadata once, before anything changes it.
    fn remember_dir(&mut self, dir: &Path) {
        if self.dirs_before.contains_key(dir) {
            return;
        }
        if let Ok(m) = fs::symlink_metadata(dir) {
            if m.is_dir() {
                self.dirs_before.insert(dir.to_path_buf(), DirMeta::of(&m));
            }
        }
    }

    /// Moves whatever is at `path` (not a directory) into the rollback directory.
    pub fn move_aside(&mut self, path: &Path) -> io::Result<()> {
        let Ok(m) = fs::symlink_metadata(path) else {
            return Ok(());
        };
        if m.is_dir() {
            return Err(io::Error::other(format!(
                "{} is a directory on this host but not in the archive; refusing to replace it",
                path.display()
            )));
        }
        if self.created.iter().any(|c| c == path) {
            // Written by this run, not the host's: replace it, and keep the host's original
            // (already in the rollback directory under this name) safe.
            return fs::remove_file(path);
        }
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let saved = self.rollback_dir.join(rel);
        if fs::symlink_metadata(&saved).is_ok() {
            return Err(io::Error::other(format!(
                "{} was already moved aside once in this restore",
                path.display()
            )));
        }
        if let Some(p) = saved.parent() {
            fs::create_dir_all(p)?;
        }
        if let Some(parent) = path.parent() {
            self.remember_dir(parent);
        }
        fs::rename(path, &saved)?;
        self.moved.push((path.to_path_buf(), saved));
        Ok(())
    }

    /// Creates missing directories up to and including `dir`, recording each one created.
    pub fn create_dirs(&mut self, dir: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        for a in dir.ancestors() {
            if a == self.root || fs::symlink_metadata(a).is_ok() {
                break;
            }
            missing.push(a.to_path_buf());
        }
        for d in missing.into_iter().rev() {
            if let Some(parent) = d.parent() {
                self.remember_dir(parent);
            }
            fs::DirBuilder::new().mode_0700().create(&d)?;
            self.created.push(d);
        }
        Ok(())
    }

    fn created_file(&mut self, path: &Path) {
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
        for p in self.created.iter().rev() {
            let r = match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => fs::remove_dir(p),
                Ok(_) => fs::remove_file(p),
                Err(_) => Ok(()),
            };
            note(r);
        }
        for (orig, saved) in self.moved.iter().rev() {
            note(fs::rename(saved, orig));
        }
        // Deepest first, so a parent's mtime is set after its children stop changing it.
        for (dir, meta) in self.dirs_before.iter().rev() {
            if fs::symlink_metadata(dir).is_ok() {
                note(meta.apply(dir));
            }
        }
        note(fs::remove_dir_all(&self.rollback_dir));
        if let Some(meta) = self.dirs_before.get(&self.root) {
            note(meta.apply(&self.root));
        }
        first_err.map_or(Ok(()), Err)
    }
}

trait DirBuilderExt0700 {
    fn mode_0700(&mut self) -> &mut Self;
}
impl DirBuilderExt0700 for fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

#[derive(Debug, Default)]
pub struct Extracted {
    pub files: u64,
    pub bytes: u64,
}

/// Progress callback: (files done, bytes done).
pub type OnProgress<'a> = &'a mut dyn FnMut(u64, u64);

fn owner_ids<R: Read>(entry: &tar::Entry<R>) -> (u32, u32) {
    let h = entry.header();
    let uid = h
        .username()
        .ok()
        .flatten()
        .and_then(|n| nix::unistd::User::from_name(n).ok().flatten())
        .map(|u| u.uid.as_raw())
        .or_else(|| h.uid().ok().map(|u| u as u32))
        .unwrap_or(0);
    let gid = h
        .groupname()
        .ok()
        .flatten()
        .and_then(|n| nix::unistd::Group::from_name(n).ok().flatten())
        .map(|g| g.gid.as_raw())
        .or_else(|| h.gid().ok().map(|g| g as u32))
        .unwrap_or(0);
    (uid, gid)
}

/// Extracts every member of `root_tar` under the journal's root. With a manifest, each file's
/// SHA-256 is checked as it is written (the archive could have changed since it was verified).
pub fn extract<R: Read>(
    root_tar: R,
    journal: &mut Journal,
    manifest: Option<&BTreeMap<String, ManifestEntry>>,
    progress: OnProgress<'_>,
) -> io::Result<Extracted> {
    let root = journal.root.clone();
    let is_root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(root_tar);
    let mut dirs: Vec<(PathBuf, DirMeta)> = Vec::new();
    let mut done = Extracted::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let rel = safe_relative(&entry.path_bytes()).map_err(io::Error::other)?;
        let key = rel.display().to_string();
        let dest = root.join(&rel);
        let (uid, gid) = owner_ids(&entry);
        let mode = entry.header().mode()? & 0o7777;
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(entry.header().mtime()?);
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions()? {
            Some(exts) => exts
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let k = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
                    Some((k, e.value_bytes().to_vec()))
                })
                .collect(),
            None => Vec::new(),
        };
        if let Some(parent) = dest.parent() {
            journal.create_dirs(parent)?;
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.is_dir() => journal.remember_dir(&dest),
                    Ok(_) => {
                        journal.move_aside(&dest)?;
                        journal.create_dirs(&dest)?;
                    }
                    Err(_) => journal.create_dirs(&dest)?,
                }
                dirs.push((
                    dest,
                    DirMeta {
                        mode,
                        uid,
                        gid,
                        mtime,
                    },
                ));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                journal.move_aside(&dest)?;
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)?;
                journal.created_file(&dest);
                let mut h = Sha256::new();
                let n = io::copy(
                    &mut Tee {
                        inner: &mut entry,
                        hash: &mut h,
                    },
                    &mut f,
                )?;
                if let Some(want) = manifest.and_then(|m| m.get(&key)) {
                    let got = hex::encode(h.finalize());
                    if want.sha256 != got || want.size != n {
                        return Err(io::Error::other(format!(
                            "{key} does not match the manifest; the archive changed after it was verified"
                        )));
                    }
                }
                if is_root {
                    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
                }
                f.set_permissions(fs::Permissions::from_mode(mode))?;
                for (k, v) in &xattrs {
                    if let Err(e) = xattr::set(&dest, k, v) {
                        tracing::warn!(path = %dest.display(), xattr = %k, error = %e, "extended attribute not restored");
                    }
                }
                f.set_times(FileTimes::new().set_modified(mtime))?;
                done.files += 1;
                done.bytes += n;
                progress(done.files, done.bytes);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .ok_or_else(|| io::Error::other(format!("symlink {key} has no target")))?;
                journal.move_aside(&dest)?;
                std::os::unix::fs::symlink(&target, &dest)?;
                journal.created_file(&dest);
                if is_root {
                    std::os::unix::fs::lchown(&dest, Some(uid), Some(gid))?;
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
                fs::hard_link(&target, &dest)?;
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
        meta.apply(dir)?;
    }
    // Every restored file and directory durable at once: one syncfs on the target filesystem does
    // what an fsync per file would, without 100k round trips to the disk.
    let target = File::open(&root)?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&target)).map_err(io::Error::from)?;
    Ok(done)
}

struct Tee<'a, R> {
    inner: &'a mut R,
    hash: &'a mut Sha256,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Replaces `dest` with `src` atomically (same filesystem), moving the old file aside first.
/// The directory keeps its mtime: it was set from the archive, and swapping one file's content
/// in place is not a change to the directory the operator should see.
pub fn replace_file(journal: &mut Journal, src: &Path, dest: &Path) -> io::Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    // Creating missing directories changes the nearest existing one; keep its mtime too.
    let existing = parent
        .ancestors()
        .find(|a| fs::symlink_metadata(a).is_ok())
        .unwrap_or(Path::new("/"));
    let existing_mtime = fs::metadata(existing)?.modified()?;
    journal.create_dirs(parent)?;
    if existing != parent {
        File::open(existing)?.set_times(FileTimes::new().set_modified(existing_mtime))?;
    }
    let mtime = fs::metadata(parent)?.modified()?;
    journal.move_aside(dest)?;
    fs::rename(src, dest)?;
    journal.created_file(dest);
    let dir = File::open(parent)?;
    dir.set_times(FileTimes::new().set_modified(mtime))?;
    dir.sync_all()
}

/// Database engines change target files through the journal, so rollback covers them too.
impl crate::db::TargetFiles for Journal {
    fn move_aside(&mut self, path: &Path) -> io::Result<()> {
        Journal::move_aside(self, path)
    }

    fn replace_file(&mut self, staged: &Path, dest: &Path) -> io::Result<()> {
        replace_file(self, staged, dest)
    }
}
