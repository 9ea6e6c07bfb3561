//! State-server files: which ones (plan), and capturing them into `root.tar` without tearing.
//!
//! `root.tar` is compressed as it is captured, into a staging file of compressed members (the outer
//! tar needs root.tar's size before its bytes; only the compressed form is staged, and it is copied
//! into the archive as it is). A file is archived only when its size, mtime and ctime are the same
//! before and after the read and the read returned exactly that size: a small file
//! ([`SMALL_FILE`]) is read whole into memory and checked before it is written; a large one is
//! written as it is read into a compressed member of its own, cut back off the staging file and
//! read again if it changed.
//!
//! Equal stamps are not enough on their own: `write(2)` sets ctime when it *starts*, then copies
//! its bytes. A write still in flight when we take the "before" stamp finishes during our read
//! without changing the stamp, and the read is torn. So, like git's "racily clean" rule, a file
//! whose ctime is younger than [`SETTLE`] is not read yet: we wait until it is, then read it.
//!
//! The tree changes under us, so nothing seen while planning is trusted while capturing:
//! - A path that is gone by the time it is read (Juju writes `agent.conf` through temporary files
//!   in the same directory) is skipped with a warning, unless a `files.include` glob matched it
//!   itself: a required path that vanishes fails the backup.
//! - A regular file is opened with `O_NONBLOCK | O_NOFOLLOW | O_NOCTTY` and kept only if `fstat`
//!   of the open file shows a regular file (described by that `fstat`, not by the `lstat` before:
//!   a file renamed into place in between is simply the newer version). A FIFO, socket, device or
//!   symlink swapped in between `lstat` and `open` therefore never blocks the backup and is never
//!   read: the path is looked at again and archived as what it now is (a symlink), or skipped
//!   with a warning (FIFO, socket, device), or, for a required path, refused. (Under the unit,
//!   `DevicePolicy=closed` keeps even the non-blocking open of a device from happening.)
//! - An open file is read through that descriptor only, so a file replaced by `rename` while we
//!   wait for it to settle or read it is archived as the whole version we opened.
//! - juju-brd's own directories (`archive_dir`, `state_dir`) are never archived, wherever they sit
//!   in the tree and by whatever path they are reached (symlink, bind mount): they are recognised
//!   by device and inode, so an archive never contains the archives before it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::archive::manifest::{DigestAlgo, FileHasher};

use super::{io_err, SnapshotError};
use crate::archive::manifest::{Entry, Kind};

/// What will be captured. Paths are host-absolute (`/var/lib/juju/...`), read under `root`.
#[derive(Debug, Default)]
pub struct FilePlan {
    pub paths: BTreeSet<PathBuf>,
    /// The paths a `files.include` glob matched itself: these must be archived. Anything found
    /// below them, and everything `files.optional` brings in, may vanish before it is read.
    pub required: BTreeSet<PathBuf>,
    /// Bytes of regular files, for the free-space check and progress.
    pub bytes: u64,
    pub skipped_optional: Vec<String>,
    /// juju-brd's own directories found in the tree and left out (host paths).
    pub excluded_own: Vec<PathBuf>,
}

pub struct Captured {
    pub files: u64,
    pub bytes: u64,
}

/// Where each captured member's manifest entry goes, as it is captured.
pub type ManifestOut = crate::archive::manifest::ManifestWriter<io::BufWriter<File>>;

/// Expands one glob under `root`; returns host-absolute matches.
fn expand(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, SnapshotError> {
    let base = glob::Pattern::escape(&root.to_string_lossy());
    let full = format!(
        "{}/{}",
        base.trim_end_matches('/'),
        pattern.trim_start_matches('/')
    );
    let mut out = Vec::new();
    let opts = glob::MatchOptions {
        require_literal_leading_dot: false,
        ..Default::default()
    };
    for m in glob::glob_with(&full, opts).map_err(|e| SnapshotError::Config(e.to_string()))? {
        let m = match m {
            Ok(m) => m,
            // A directory removed while the glob read it matches nothing.
            Err(e) if e.error().kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                let p = e.path().to_path_buf();
                return Err(io_err("read directory", &p)(e.into()));
            }
        };
        let rel = m.strip_prefix(root).unwrap_or(&m);
        out.push(Path::new("/").join(rel));
    }
    Ok(out)
}

/// Device and inode of each of `dirs` that exists (following symlinks).
fn identities(dirs: &[&Path]) -> HashSet<(u64, u64)> {
    dirs.iter()
        .filter_map(|d| std::fs::metadata(d).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// Whether `real` is one of `own`, or lies inside one (checked by identity, so a path through a
/// symlink or a bind mount is recognised too).
fn inside_own(real: &Path, own: &HashSet<(u64, u64)>) -> bool {
    if own.is_empty() {
        return false;
    }
    let Ok(canonical) = real.canonicalize() else {
        return false;
    };
    canonical
        .ancestors()
        .filter_map(|a| std::fs::metadata(a).ok())
        .any(|m| own.contains(&(m.dev(), m.ino())))
}

/// What to capture from `set`. `own_dirs` (the archive and state directories) are never part of
/// it, wherever the globs reach them.
pub fn plan(set: &FileSet, own_dirs: &[&Path]) -> Result<FilePlan, SnapshotError> {
    let own = identities(own_dirs);
    let mut excludes = globset::GlobSetBuilder::new();
    for g in &set.exclude {
        excludes.add(globset::Glob::new(g).map_err(|e| SnapshotError::Config(e.to_string()))?);
    }
    let excludes = excludes
        .build()
        .map_err(|e| SnapshotError::Config(e.to_string()))?;
    let mut plan = FilePlan::default();
    let mut excluded_own = Vec::new();
    // Matches inside juju-brd's own directories are dropped here, before anything is walked.
    let mut not_own = |matches: Vec<PathBuf>| -> Vec<PathBuf> {
        let (own_matches, rest): (Vec<PathBuf>, Vec<PathBuf>) = matches
            .into_iter()
            .partition(|h| inside_own(&real_path(&set.root, h), &own));
        excluded_own.extend(own_matches);
        rest
    };
    let mut roots: Vec<PathBuf> = Vec::new();
    for entry in &set.include {
        let alternatives: Vec<&String> = match entry {
            IncludeEntry::One(g) => vec![g],
            IncludeEntry::FirstOf(v) => v.iter().collect(),
        };
        let mut found = None;
        for g in &alternatives {
            let m = expand(&set.root, g)?;
            if !m.is_empty() {
                found = Some((g, m));
                break;
            }
        }
        match found {
            Some((g, m)) => {
                let m = not_own(m);
                if m.is_empty() {
                    return Err(SnapshotError::Config(format!(
                        "files.include `{g}` matches only juju-brd's own archive or state \
                         directory, which is never archived (an archive must not contain archives)"
                    )));
                }
                plan.required.extend(m.iter().cloned());
                roots.extend(m)
            }
            None => {
                return Err(SnapshotError::MissingRequired(
                    alternatives
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" or "),
                ))
            }
        }
    }
    for g in &set.optional {
        let m = expand(&set.root, g)?;
        if m.is_empty() {
            tracing::debug!(path = %g, "optional path not present; skipped");
            plan.skipped_optional.push(g.clone());
        }
        roots.extend(not_own(m));
    }
    for host in roots {
        let real = real_path(&set.root, &host);
        // Ancestors first, so restore recreates directories with their modes and owners.
        for anc in host.ancestors().skip(1) {
            if anc != Path::new("/") && !excludes.is_match(anc) {
                plan.paths.insert(anc.to_path_buf());
            }
        }
        let walker = walkdir::WalkDir::new(&real)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                let h = host_path(&set.root, e.path());
                if excludes.is_match(&h) {
                    return false;
                }
                if !own.is_empty() && e.file_type().is_dir() {
                    if let Ok(m) = e.metadata() {
                        if own.contains(&(m.dev(), m.ino())) {
                            excluded_own.push(h);
                            return false;
                        }
                    }
                }
                true
            });
        for e in walker {
            let e = match e {
                Ok(e) => e,
                Err(err)
                    if err.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound) =>
                {
                    let p = err.path().map(Path::to_path_buf).unwrap_or_default();
                    let h = host_path(&set.root, &p);
                    if plan.required.contains(&h) {
                        return Err(SnapshotError::MissingRequired(h.display().to_string()));
                    }
                    tracing::warn!(path = %h.display(), "removed while the tree was read; skipped");
                    plan.paths.remove(&h);
                    continue;
                }
                Err(err) => {
                    let p = err.path().map(Path::to_path_buf).unwrap_or_default();
                    return Err(io_err("walk", &p)(err.into()));
                }
            };
            let h = host_path(&set.root, e.path());
            if plan.paths.insert(h.clone()) {
                match e.metadata() {
                    Ok(md) if md.is_file() => plan.bytes += md.len(),
                    Ok(_) => {}
                    Err(err)
                        if err.io_error().map(io::Error::kind) == Some(io::ErrorKind::NotFound)
                            && !plan.required.contains(&h) =>
                    {
                        tracing::warn!(path = %h.display(), "removed while the tree was read; skipped");
                        plan.paths.remove(&h);
                    }
                    Err(err) => return Err(io_err("stat", e.path())(err.into())),
                }
            }
        }
    }
    for h in &excluded_own {
        tracing::warn!(path = %h.display(), "juju-brd's own archive or state directory is inside the backed-up tree; left out of the archive");
    }
    plan.excluded_own = excluded_own;
    Ok(plan)
}

fn real_path(root: &Path, host: &Path) -> PathBuf {
    root.join(host.strip_prefix("/").unwrap_or(host))
}

fn host_path(root: &Path, real: &Path) -> PathBuf {
    Path::new("/").join(real.strip_prefix(root).unwrap_or(real))
}

/// Where root.tar goes as it is captured: compressed members in a staging file, so a torn large
/// file can be cut back off (see [`crate::archive::segment`]).
pub type Spool = crate::archive::segment::MemberFile;

/// Files up to this size are read whole into memory and checked for change before a byte of
/// them is written; larger ones are written as they are read, into a compressed member of their
/// own that is cut off the staging file again if the read turns out torn.
pub const SMALL_FILE: u64 = 4 << 20;

/// How long a file must have been left alone before a read of it can be trusted (see the module
/// doc). Far longer than a page-cache write of any sane size takes, and a few kernel clock ticks.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

/// How much longer to wait before reading a file last changed at `ctime`, if at all.
///
/// A ctime far in the future (a clock stepped back) cannot be waited out; a write during the read
/// would still move ctime to the present, which the stamp comparison sees.
fn unsettled(ctime: SystemTime, now: SystemTime) -> Option<Duration> {
    match now.duration_since(ctime) {
        Ok(age) if age < SETTLE => Some(SETTLE - age),
        Ok(_) => None,
        Err(ahead) if ahead.duration() < SETTLE => Some(SETTLE),
        Err(_) => None,
    }
}

/// Identity and change markers of a file: equal before and after a read means the read is whole.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp {
            size: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn ctime(&self) -> SystemTime {
        let (secs, nanos) = self.ctime;
        let since_epoch =
            Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64);
        if secs >= 0 {
            UNIX_EPOCH + since_epoch
        } else {
            UNIX_EPOCH - since_epoch
        }
    }
}

pub struct CaptureContext<'a> {
    pub root: &'a Path,
    pub retries: u32,
    pub cancel: &'a AtomicBool,
    pub progress: &'a AtomicU64,
}

struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
    fn group(&mut self, gid: u32) -> Option<String> {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(gid.into())
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

pub fn capture(
    plan: &FilePlan,
    ctx: &CaptureContext<'_>,
    spool: Spool,
    manifest: &mut ManifestOut,
) -> Result<(Captured, Spool), SnapshotError> {
    let mut tar = tar::Builder::new(spool);
    tar.follow_symlinks(false);
    let mut names = Names {
        users: HashMap::new(),
        groups: HashMap::new(),
    };
    let mut out = Captured { files: 0, bytes: 0 };
    let mut buf = Vec::new();
    let manifest_err =
        |e: io::Error| io_err("write staging manifest", Path::new("manifest.json"))(e);
    for host in &plan.paths {
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(SnapshotError::Cancelled);
        }
        let mut member = Member {
            host,
            real: real_path(ctx.root, host),
            name: host.strip_prefix("/").unwrap_or(host).to_path_buf(),
            required: plan.required.contains(host),
        };
        // Between two entries a compressed member may end.
        tar.get_mut()
            .seal_if_long()
            .map_err(io_err("write staging archive", &member.real))?;
        let Some(entry) = member.capture(&mut tar, ctx, &mut names, &mut buf)? else {
            continue;
        };
        if entry.kind == Kind::File {
            out.files += 1;
            out.bytes += entry.size;
        }
        manifest
            .root(&member.name.display().to_string(), &entry)
            .map_err(manifest_err)?;
    }
    let spool = tar
        .into_inner()
        .map_err(io_err("finish staging archive", Path::new("root.tar")))?;
    Ok((out, spool))
}

/// One path of the plan, as it is captured.
struct Member<'a> {
    host: &'a Path,
    real: PathBuf,
    /// The name in root.tar: the host path without its leading `/`.
    name: PathBuf,
    /// Matched by a `files.include` glob itself: may not vanish or be skipped.
    required: bool,
}

/// What opening a path that `lstat` showed as a regular file gave.
enum Opened {
    /// A regular file, with what `fstat` said of it.
    File(File, std::fs::Metadata),
    /// The path is gone.
    Gone,
    /// Something else is there now (another file, a FIFO, a socket, a device, a symlink).
    Changed,
}

/// Opens `real` for reading without following a symlink, without blocking on a FIFO or a device
/// and without acquiring a terminal, and keeps it only if `fstat` shows a regular file. That may
/// be another regular file than the one `seen` described (replaced by `rename` in between, as
/// Juju writes its files): it is what the path holds now, and its own metadata describes it.
fn open_regular(real: &Path, seen: &std::fs::Metadata) -> Result<Opened, SnapshotError> {
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(real);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Gone),
        Err(e) => {
            // ELOOP (a symlink now), ENXIO (a socket), EPERM (a device the unit's DevicePolicy
            // denies)...: if the path is no longer that file, look again; otherwise it is a real
            // error on the file we meant.
            return match std::fs::symlink_metadata(real) {
                Err(e2) if e2.kind() == io::ErrorKind::NotFound => Ok(Opened::Gone),
                Ok(now) if now.is_file() && same_inode(&now, seen) => Err(io_err("open", real)(e)),
                _ => Ok(Opened::Changed),
            };
        }
    };
    let md = file.metadata().map_err(io_err("stat", real))?;
    if md.is_file() {
        Ok(Opened::File(file, md))
    } else {
        Ok(Opened::Changed)
    }
}

fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "of an unknown type"
    }
}

impl Member<'_> {
    /// A path that is gone: skipped, unless it is required.
    fn vanished(&self) -> Result<Option<Entry>, SnapshotError> {
        if self.required {
            return Err(SnapshotError::MissingRequired(
                self.host.display().to_string(),
            ));
        }
        tracing::warn!(path = %self.host.display(), "removed before it could be read; skipped");
        Ok(None)
    }

    /// Appends this path to the tar as whatever it is when it is read, and returns its manifest
    /// entry; `None` when it is skipped (gone, or neither file, directory nor symlink).
    fn capture(
        &mut self,
        tar: &mut tar::Builder<Spool>,
        ctx: &CaptureContext<'_>,
        names: &mut Names,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Entry>, SnapshotError> {
        let real = self.real.clone();
        let attempts = ctx.retries + 1;
        for attempt in 1..=attempts {
            let md = match std::fs::symlink_metadata(&real) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return self.vanished(),
                Err(e) => return Err(io_err("stat", &real)(e)),
            };
            let mut header = header_for(&md, names);
            let ft = md.file_type();
            if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                append_xattrs(tar, &real, None)?;
                tar.append_data(&mut header, &self.name, io::empty())
                    .map_err(io_err("write staging archive", &real))?;
                return Ok(Some(Entry {
                    kind: Kind::Dir,
                    size: 0,
                    digest: String::new(),
                    link: None,
                }));
            }
            if ft.is_symlink() {
                let target = match std::fs::read_link(&real) {
                    Ok(t) => t,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return self.vanished(),
                    // EINVAL: no longer a symlink; look again.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
                    Err(e) => return Err(io_err("readlink", &real)(e)),
                };
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &self.name, &target)
                    .map_err(io_err("write staging archive", &real))?;
                return Ok(Some(Entry {
                    kind: Kind::Symlink,
                    size: 0,
                    digest: String::new(),
                    link: Some(target.display().to_string()),
                }));
            }
            if !ft.is_file() {
                let what = kind_of(ft);
                if self.required {
                    return Err(io_err("archive", &real)(io::Error::other(format!(
                        "required by files.include, but it is {what}: only regular files, \
                         directories and symlinks are archived"
                    ))));
                }
                tracing::warn!(path = %self.host.display(), "{what}, not a regular file, directory or symlink; skipped");
                return Ok(None);
            }
            let (file, opened) = match open_regular(&real, &md)? {
                Opened::File(f, md) => (f, md),
                Opened::Gone => return self.vanished(),
                Opened::Changed => {
                    tracing::info!(path = %self.host.display(), attempt, "replaced between stat and open; looking at it again");
                    continue;
                }
            };
            // A file with other hard links is stored whole each time, as Juju's own backups do:
            // Juju's extractor (juju/utils tar.UntarFiles) drops hardlink entries.
            return capture_file(tar, &file, opened, &real, &self.name, ctx, names, buf).map(Some);
        }
        // Never the same thing twice in a row: nothing whole can be archived under this name.
        if self.required {
            return Err(SnapshotError::Unstable {
                path: real,
                attempts,
            });
        }
        tracing::warn!(path = %self.host.display(), attempts, "kept being replaced between stat and open; skipped");
        Ok(None)
    }
}

fn header_for(md: &std::fs::Metadata, names: &mut Names) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
    if let Some(u) = names.user(md.uid()) {
        let _ = h.set_username(&u);
    }
    if let Some(g) = names.group(md.gid()) {
        let _ = h.set_groupname(&g);
    }
    h
}

/// Extended attributes as PAX `SCHILY.xattr.*` records (what GNU tar and the tar crate read):
/// of the open `file` when there is one (what is read is what is described), else of the path
/// itself (never following a symlink).
fn append_xattrs(
    tar: &mut tar::Builder<Spool>,
    real: &Path,
    file: Option<&File>,
) -> Result<(), SnapshotError> {
    use xattr::FileExt;
    let listed = match file {
        Some(f) => f.list_xattr(),
        None => xattr::list(real),
    };
    let names = match listed {
        Ok(n) => n,
        // Filesystems without xattr support simply have none.
        Err(_) => return Ok(()),
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for name in names {
        let Some(n) = name.to_str() else { continue };
        let value = match file {
            Some(f) => f.get_xattr(n),
            None => xattr::get(real, n),
        };
        if let Ok(Some(v)) = value {
            records.push((format!("SCHILY.xattr.{n}"), v));
        }
    }
    if !records.is_empty() {
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .map_err(io_err("write staging archive", real))?;
    }
    Ok(())
}

/// Reads the open regular `file` into the tar until a read is whole (see the module doc). Every
/// attempt reads the same descriptor: a file replaced by `rename` meanwhile stays the version
/// that was opened, and is archived whole. `opened` is what `fstat` said as it was opened: the
/// first attempt starts from it (nothing happened to the descriptor since), each later one
/// from a fresh `fstat` and the start of the file.
#[allow(clippy::too_many_arguments)]
fn capture_file(
    tar: &mut tar::Builder<Spool>,
    file: &File,
    opened: std::fs::Metadata,
    real: &Path,
    member: &Path,
    ctx: &CaptureContext<'_>,
    names: &mut Names,
    buf: &mut Vec<u8>,
) -> Result<Entry, SnapshotError> {
    let attempts = ctx.retries + 1;
    let mut first = Some(opened);
    for attempt in 1..=attempts {
        let before = match first.take() {
            Some(md) => md,
            None => {
                let mut f = file;
                f.seek(SeekFrom::Start(0)).map_err(io_err("seek", real))?;
                file.metadata().map_err(io_err("stat", real))?
            }
        };
        let stamp = Stamp::of(&before);
        if let Some(wait) = unsettled(stamp.ctime(), SystemTime::now()) {
            tracing::debug!(path = %real.display(), attempt, "changed a moment ago; letting it settle");
            std::thread::sleep(wait);
            // Unchanged across the wait: any write that had started is done, read it now.
            if Stamp::of(&file.metadata().map_err(io_err("stat", real))?) != stamp {
                continue;
            }
        }
        let whole = if stamp.size <= SMALL_FILE {
            read_small(tar, file, real, member, ctx, names, &before, buf)?
        } else {
            read_large(tar, file, real, member, ctx, names, &before)?
        };
        if let Some(e) = whole {
            return Ok(e);
        }
        tracing::info!(path = %real.display(), attempt, "changed while being read; reading it again");
        std::thread::sleep(Duration::from_millis((20 * u64::from(attempt)).min(200)));
    }
    Err(SnapshotError::Unstable {
        path: real.to_path_buf(),
        attempts,
    })
}

/// Whether the read that just ended was whole: nothing left of the size recorded before, nothing
/// more to read, and the same stamps after as before.
fn read_was_whole(
    f: &mut &File,
    real: &Path,
    left: u64,
    stamp: Stamp,
) -> Result<bool, SnapshotError> {
    let after = f.metadata().map_err(io_err("stat", real))?;
    // One more byte readable means the file grew past the size we recorded.
    let grew = f.read(&mut [0u8; 1]).map_err(io_err("read", real))? > 0;
    Ok(left == 0 && !grew && Stamp::of(&after) == stamp)
}

/// The manifest entry of a regular file read whole.
fn file_entry(size: u64, hash: FileHasher) -> Entry {
    Entry {
        kind: Kind::File,
        size,
        digest: crate::archive::manifest::file_digest(&hash.finalize_hex()),
        link: None,
    }
}

/// One read of a small `file` into memory; only a whole read reaches the tar. `None` if it
/// changed meanwhile.
#[allow(clippy::too_many_arguments)]
fn read_small(
    tar: &mut tar::Builder<Spool>,
    file: &File,
    real: &Path,
    member: &Path,
    ctx: &CaptureContext<'_>,
    names: &mut Names,
    before: &std::fs::Metadata,
    buf: &mut Vec<u8>,
) -> Result<Option<Entry>, SnapshotError> {
    let stamp = Stamp::of(before);
    let mut f = file;
    let mut reader = CountingHash {
        inner: f,
        left: stamp.size,
        hash: DigestAlgo::WRITTEN.hasher(),
        progress: ctx.progress,
    };
    buf.clear();
    reader.read_to_end(buf).map_err(io_err("read", real))?;
    let (left, hash) = (reader.left, reader.hash);
    if !read_was_whole(&mut f, real, left, stamp)? {
        ctx.progress.fetch_sub(stamp.size - left, Ordering::Relaxed);
        return Ok(None);
    }
    let mut header = header_for(before, names);
    append_xattrs(tar, real, Some(file))?;
    tar.append_data(&mut header, member, &buf[..])
        .map_err(io_err("write staging archive", real))?;
    Ok(Some(file_entry(stamp.size, hash)))
}

/// One read of a large `file` straight into the tar, in a compressed member of its own; `None`
/// if it changed meanwhile (the member is cut back off the staging file).
fn read_large(
    tar: &mut tar::Builder<Spool>,
    file: &File,
    real: &Path,
    member: &Path,
    ctx: &CaptureContext<'_>,
    names: &mut Names,
    before: &std::fs::Metadata,
) -> Result<Option<Entry>, SnapshotError> {
    let stamp = Stamp::of(before);
    let staging = |e| io_err("write staging archive", real)(e);
    tar.get_mut().seal().map_err(staging)?;
    let mut f = file;
    let mut header = header_for(before, names);
    append_xattrs(tar, real, Some(file))?;
    let mut reader = CountingHash {
        inner: f,
        left: stamp.size,
        hash: DigestAlgo::WRITTEN.hasher(),
        progress: ctx.progress,
    };
    tar.append_data(&mut header, member, &mut reader)
        .map_err(io_err("read", real))?;
    let (left, hash) = (reader.left, reader.hash);
    if read_was_whole(&mut f, real, left, stamp)? {
        tar.get_mut().seal().map_err(staging)?;
        return Ok(Some(file_entry(stamp.size, hash)));
    }
    tar.get_mut().rollback().map_err(staging)?;
    ctx.progress.fetch_sub(stamp.size - left, Ordering::Relaxed);
    Ok(None)
}

/// Reads at most `left` bytes, hashing them; `left > 0` afterwards means the file shrank.
struct CountingHash<'a, R> {
    inner: R,
    left: u64,
    hash: FileHasher,
    progress: &'a AtomicU64,
}

impl<R: Read> Read for CountingHash<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let cap = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..cap])?;
        self.hash.update(&buf[..n]);
        self.left -= n as u64;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

// The `[files]` config section, owned here; `config` composes the sections and validates them.
/// An include entry: one glob, or a list of alternatives of which the first that exists is taken
/// (Juju keeps the shared secret in one of two places depending on how juju-db is installed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum IncludeEntry {
    One(String),
    FirstOf(Vec<String>),
}

impl<'de> serde::Deserialize<'de> for IncludeEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            FirstOf(Vec<String>),
        }
        match <Raw as serde::Deserialize>::deserialize(d) {
            Ok(Raw::One(s)) => Ok(IncludeEntry::One(s)),
            Ok(Raw::FirstOf(v)) => Ok(IncludeEntry::FirstOf(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a path glob (\"/var/lib/juju/x\") or a list of alternative globs",
            )),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSet {
    /// The host root the absolute paths below are read from: `/` in production, a directory in tests.
    #[serde(default = "default_root")]
    pub root: std::path::PathBuf,
    /// Required: a glob that matches nothing fails the backup.
    #[serde(default = "default_include")]
    pub include: Vec<IncludeEntry>,
    /// Optional: missing entries are logged and skipped.
    #[serde(default = "default_optional")]
    pub optional: Vec<String>,
    /// Globs (on the absolute host path) that are never archived.
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn default_include() -> Vec<IncludeEntry> {
    vec![
        IncludeEntry::One("/var/lib/juju/agents/machine-*".into()),
        IncludeEntry::One("/var/lib/juju/tools".into()),
        IncludeEntry::One("/var/lib/juju/system-identity".into()),
        IncludeEntry::One("/var/lib/juju/server.pem".into()),
        IncludeEntry::FirstOf(vec![
            "/var/lib/juju/shared-secret".into(),
            "/var/snap/juju-db/common/shared-secret".into(),
        ]),
    ]
}

fn default_optional() -> Vec<String> {
    [
        "/var/lib/juju/init/*",
        "/var/lib/juju/nonce.txt",
        "/home/ubuntu/.ssh/authorized_keys",
        "/etc/systemd/system/jujud-machine-*.service",
        "/etc/systemd/system/juju-db.service",
        "/etc/init/jujud-machine-*.conf",
        "/etc/init/juju-db.conf",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn default_root() -> std::path::PathBuf {
    "/".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_changed_within_the_settle_time_waits_out_the_rest() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(unsettled(now, now), Some(SETTLE));
        let ms = Duration::from_millis;
        assert_eq!(unsettled(now - ms(5), now), Some(SETTLE - ms(5)));
        assert_eq!(unsettled(now - SETTLE, now), None);
        assert_eq!(unsettled(now - Duration::from_secs(3600), now), None);
        // A little ahead of our clock (fine-grained file time vs. the clock we read): wait.
        assert_eq!(unsettled(now + ms(1), now), Some(SETTLE));
        // Far ahead (clock stepped back): waiting would never end.
        assert_eq!(unsettled(now + Duration::from_secs(60), now), None);
    }

    #[test]
    fn stamp_ctime_converts_seconds_and_nanoseconds() {
        let s = Stamp {
            size: 0,
            mtime: (0, 0),
            ctime: (1_700_000_000, 250_000_000),
        };
        assert_eq!(
            s.ctime(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(250)
        );
    }
}
