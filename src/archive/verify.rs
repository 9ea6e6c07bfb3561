//! `verify`: proves an archive is whole and safe in one streaming pass, naming the first problem.
//!
//! Checks, in the order the bytes arrive: compression framing and checksums, the outer tar's shape
//! (only `juju-backup/...` regular files and directories, no duplicates), metadata.json, the manifest,
//! every member of root.tar (safe path, allowed type, size and digest against the manifest), every
//! dump file (hash; SQLite dumps also pass `PRAGMA integrity_check`), then the sidecar checksum of the
//! whole file. It writes nothing but a private temporary copy of an SQLite dump, removed on return.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::encryption::Identities;
use super::manifest::{
    DigestAlgo, Entry, FileHasher, Kind, Manifest, SharedManifest, MAX_MANIFEST_BYTES,
};
use super::metadata::{Metadata, MAX_METADATA_BYTES};
use super::paths::{safe_relative, symlink_stays_inside};
use super::reader;
use super::{DUMP_DIR, MANIFEST, METADATA, ROOT_TAR, SHARED_MANIFEST, TOP};
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct VerifyError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarStatus {
    Match,
    Missing,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub metadata: Metadata,
    pub has_manifest: bool,
    pub compression: &'static str,
    pub encrypted: bool,
    pub sha256: String,
    pub sidecar: SidecarStatus,
    pub root_members: u64,
    pub root_bytes: u64,
    pub dump_files: Vec<String>,
    /// root.tar members with setuid/setgid bits or file capabilities.
    pub privileged: Vec<String>,
    /// Every directory root.tar writes into (members' parents, relative), for restore's checks
    /// of the host's layout.
    pub root_dirs: BTreeSet<String>,
    /// The verified manifest, so restore can hold what it extracts to exactly this.
    pub manifest: Option<Manifest>,
    /// State-server addresses in root.tar's machine `agent.conf` files (what restore probes
    /// when the archive records none of its own, as Juju's archives do not).
    pub agent_addresses: Vec<String>,
}

/// What `check_root_tar` learns beyond its verdict.
#[derive(Debug, Default)]
pub struct RootTarFacts {
    pub members: u64,
    pub bytes: u64,
    pub privileged: Vec<String>,
    pub dirs: BTreeSet<String>,
    /// Symlink members (relative paths).
    pub symlinks: BTreeSet<PathBuf>,
    /// State-server addresses in the machine agents' `agent.conf` files.
    pub agent_addresses: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub max_ratio: u64,
    /// Run the engine's own integrity check on the dump (SQLite `PRAGMA integrity_check`).
    pub check_database: bool,
    /// Where a temporary copy of an SQLite dump may be made; the system temp dir if `None`.
    pub scratch_dir: Option<PathBuf>,
    /// Needed to read an encrypted archive (`--identity`).
    pub identities: Option<std::sync::Arc<Identities>>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            max_ratio: reader::DEFAULT_MAX_RATIO,
            check_database: true,
            scratch_dir: None,
            identities: None,
        }
    }
}

/// Where a verifying pass may also put what it reads (restore's single pass: extraction into a
/// private staging directory). Each call comes only after every check that needs no content has
/// passed; content that later fails its hash is the stage's to throw away (the whole pass fails).
pub trait Stage {
    /// A regular root.tar member's content is about to be read: where to write it.
    fn file(&mut self, path: &Path) -> Result<&mut dyn Write, String>;
    /// A root.tar member that passed every check (a file's content has been written by then).
    fn member(
        &mut self,
        path: &Path,
        entry: &Entry,
        attrs: &super::member::Attrs,
    ) -> Result<(), String>;
    /// A dump file (path relative to `dump/`) is about to be read: where to write it, and the
    /// path the engine's check may read it from afterwards.
    fn dump(&mut self, rel: &str) -> Result<(&mut dyn Write, PathBuf), String>;
    /// The dump file just written is complete.
    fn dump_done(&mut self) -> Result<(), String>;
}

/// A shorter-lived `Option<&mut dyn Stage>` from a longer one (for each call that takes it).
fn reborrow<'a>(stage: &'a mut Option<&mut dyn Stage>) -> Option<&'a mut dyn Stage> {
    match stage {
        Some(s) => Some(&mut **s),
        None => None,
    }
}

/// Size of the buffer [`copy_hashing`] reads through.
const COPY_BUF: usize = 256 << 10;

/// Copies `from` into `h` (and `out`) through `buf` (one buffer for a whole pass: a fresh zeroed
/// one per member cost restore more than the copying of 100k small files), in large reads:
/// restore's whole archive goes through here.
fn copy_hashing<R: Read>(
    from: &mut R,
    h: &mut FileHasher,
    mut out: Option<&mut dyn Write>,
    buf: &mut [u8],
) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let k = match from.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        if let Some(o) = out.as_mut() {
            o.write_all(&buf[..k])?;
        }
        n += k as u64;
    }
}

/// What an inner root.tar member looked like, for comparison with the manifest.
/// A machine agent's config in root.tar: small, and read for the state-server addresses.
fn is_agent_conf(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.starts_with("var/lib/juju/agents/machine-")
        && s.ends_with("/agent.conf")
        && path.components().count() == 6
}

/// Largest agent.conf kept in memory to read its addresses.
const MAX_AGENT_CONF: u64 = 1 << 20;

fn describe_member<R: Read>(
    entry: &mut tar::Entry<R>,
    stage: Option<&mut dyn Stage>,
    algo: DigestAlgo,
    buf: &mut [u8],
) -> Result<(PathBuf, Entry, Option<Vec<u8>>), String> {
    let raw_path = entry.path_bytes().into_owned();
    let path = safe_relative(&raw_path)?;
    let kind = entry.header().entry_type();
    let shown = path.display().to_string();
    let link = || -> Result<PathBuf, String> {
        let l = entry
            .link_name_bytes()
            .ok_or_else(|| format!("link `{shown}` has no target"))?;
        Ok(PathBuf::from(std::str::from_utf8(&l).map_err(|_| {
            format!("link target of `{shown}` is not UTF-8")
        })?))
    };
    let mut content = None;
    let e = match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let mut h = algo.hasher();
            let out = match stage {
                Some(s) => Some(s.file(&path)?),
                None => None,
            };
            let size = if is_agent_conf(&path) && entry.size() <= MAX_AGENT_CONF {
                let mut buf = Vec::new();
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("reading `{shown}`: {e}"))?;
                h.update(&buf);
                if let Some(o) = out {
                    o.write_all(&buf)
                        .map_err(|e| format!("staging `{shown}`: {e}"))?;
                }
                let n = buf.len() as u64;
                content = Some(buf);
                n
            } else {
                copy_hashing(entry, &mut h, out, buf)
                    .map_err(|e| format!("reading `{shown}`: {e}"))?
            };
            Entry {
                kind: Kind::File,
                size,
                digest: h.finalize_hex(),
                link: None,
            }
        }
        tar::EntryType::Directory => Entry {
            kind: Kind::Dir,
            size: 0,
            digest: String::new(),
            link: None,
        },
        tar::EntryType::Symlink => {
            let target = link()?;
            if !symlink_stays_inside(&path, &target) {
                return Err(format!(
                    "symlink `{shown}` -> `{}` escapes the root",
                    target.display()
                ));
            }
            Entry {
                kind: Kind::Symlink,
                size: 0,
                digest: String::new(),
                link: Some(target.display().to_string()),
            }
        }
        tar::EntryType::Link => {
            let target = safe_relative(link()?.as_os_str().as_encoded_bytes())
                .map_err(|e| format!("hardlink `{shown}` escapes the root: {e}"))?;
            Entry {
                kind: Kind::Hardlink,
                size: 0,
                digest: String::new(),
                link: Some(target.display().to_string()),
            }
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            return Err(format!("device node `{shown}` is not allowed"))
        }
        tar::EntryType::Fifo => return Err(format!("FIFO `{shown}` is not allowed")),
        other => return Err(format!("member `{shown}` has unsupported type {other:?}")),
    };
    Ok((path, e, content))
}

/// Checks an inner root.tar stream: safe members, no duplicates, links resolve to earlier members,
/// nothing is written through a symlinked directory. With a manifest, each member is compared with
/// its entry as it arrives and the entry removed, so what is left afterwards is missing.
/// Returns (members, bytes of files).
pub fn check_root_tar<R: Read>(
    inner: R,
    manifest: Option<&Manifest>,
) -> Result<RootTarFacts, String> {
    check_root_tar_staged(inner, manifest, None)
}

/// As [`check_root_tar`], handing each member to `stage` once it has passed its checks.
pub fn check_root_tar_staged<'m, R: Read>(
    inner: R,
    manifest: Option<&'m Manifest>,
    mut stage: Option<&mut dyn Stage>,
) -> Result<RootTarFacts, String> {
    // Without a manifest nothing is compared: the cheaper hash.
    let algo = manifest.map_or(DigestAlgo::Blake3, |m| m.algo());
    let manifest = manifest.map(|m| &m.root);
    let mut archive = tar::Archive::new(inner);
    // Members seen so far; with a manifest every member is one of its keys, borrowed rather
    // than copied (100k paths: a tenth of restore's memory).
    let mut seen: HashMap<std::borrow::Cow<'m, str>, Kind> = HashMap::new();
    let mut symlinks: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut facts = RootTarFacts::default();
    let mut buf = vec![0u8; COPY_BUF];
    for entry in archive
        .entries()
        .map_err(|e| format!("root.tar is not a tar: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("root.tar is damaged: {e}"))?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let attrs =
            super::member::attrs(&mut entry, &shown).map_err(|m| format!("root.tar: {m}"))?;
        // Where it goes and whether it may, before a byte of content is read (or staged).
        let early = safe_relative(&entry.path_bytes()).map_err(|m| format!("root.tar: {m}"))?;
        if let Some(parent) = early
            .ancestors()
            .skip(1)
            .find(|a| symlinks.contains_key(*a))
        {
            return Err(format!(
                "root.tar: `{}` would be written through symlink `{}`",
                early.display(),
                parent.display()
            ));
        }
        if seen.contains_key(early.display().to_string().as_str()) {
            return Err(format!("root.tar: duplicate member `{}`", early.display()));
        }
        let (path, e, content) = describe_member(&mut entry, reborrow(&mut stage), algo, &mut buf)
            .map_err(|m| format!("root.tar: {m}"))?;
        if let Some(text) = content.as_deref().and_then(|c| std::str::from_utf8(c).ok()) {
            // Unreadable YAML is the restored agent's problem, not the archive's soundness.
            if let Ok(conf) = crate::agent_conf::AgentConf::parse(text) {
                for a in conf.addresses() {
                    if !facts.agent_addresses.contains(&a) {
                        facts.agent_addresses.push(a);
                    }
                }
            }
        }
        if let Some(parent) = path.ancestors().skip(1).find(|a| symlinks.contains_key(*a)) {
            return Err(format!(
                "root.tar: `{}` would be written through symlink `{}`",
                path.display(),
                parent.display()
            ));
        }
        let key = path.display().to_string();
        if e.kind == Kind::Hardlink {
            let target = e.link.as_deref().unwrap_or_default();
            if seen.get(target) != Some(&Kind::File) {
                return Err(format!(
                    "root.tar: hardlink `{key}` -> `{target}` does not point to an earlier file"
                ));
            }
        }
        if e.kind == Kind::Symlink {
            symlinks.insert(
                path.clone(),
                PathBuf::from(e.link.clone().unwrap_or_default()),
            );
        }
        let listed = match manifest {
            Some(m) => match m.get_key_value(&key) {
                None => return Err(format!("root.tar member `{key}` is not in the manifest")),
                Some((_, want)) if !want.matches(&e) => {
                    return Err(mismatch("root.tar", &key, &e, want))
                }
                Some((k, _)) => std::borrow::Cow::Borrowed(k.as_str()),
            },
            None => std::borrow::Cow::Owned(key.clone()),
        };
        if seen.insert(listed, e.kind).is_some() {
            return Err(format!("root.tar: duplicate member `{key}`"));
        }
        if let Some(s) = reborrow(&mut stage) {
            s.member(&path, &e, &attrs)
                .map_err(|m| format!("root.tar: {m}"))?;
        }
        if attrs.privileged() {
            facts.privileged.push(key.clone());
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            facts.dirs.insert(parent.display().to_string());
        }
        facts.bytes += e.size;
    }
    if let Some(missing) = manifest.and_then(|m| m.keys().find(|k| !seen.contains_key(k.as_str())))
    {
        return Err(format!(
            "root.tar member `{missing}` listed in the manifest is missing"
        ));
    }
    // Every symlink resolved through the others, as the kernel will on the restored tree.
    for (member, target) in &symlinks {
        super::paths::resolve_symlink(&symlinks, member, target)
            .map_err(|m| format!("root.tar: {m}"))?;
    }
    facts.members = seen.len() as u64;
    facts.symlinks = symlinks.into_keys().collect();
    Ok(facts)
}

/// Holds Juju 4's manifest to the archive as Juju does (juju/juju `internal/recovery/archive.go`
/// `checkManifest`): every listed path present with its size and SHA-256, each listed once, and
/// every regular file listed.
fn check_juju_manifest(
    m: &super::manifest::JujuManifest,
    files: &BTreeMap<String, (u64, String)>,
) -> Result<(), String> {
    let mut listed = HashSet::new();
    for f in &m.files {
        let path = f.path.trim_start_matches("./");
        if !listed.insert(path.to_string()) {
            return Err(format!("{SHARED_MANIFEST} lists `{path}` twice"));
        }
        match files.get(path) {
            None => return Err(format!("{SHARED_MANIFEST} lists `{path}`, which is not in the archive")),
            Some((size, sha)) if *size != f.size || !sha.eq_ignore_ascii_case(&f.sha256) => {
                return Err(format!(
                    "`{path}` does not match {SHARED_MANIFEST} (size {size} vs {}, sha256 {} vs {})",
                    f.size,
                    short(sha),
                    short(&f.sha256)
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = files.keys().find(|k| !listed.contains(*k)) {
        return Err(format!("`{extra}` is not listed in {SHARED_MANIFEST}"));
    }
    Ok(())
}

/// Counts (and hashes, given a hasher) what is read through it.
struct HashingReader<'a, R> {
    inner: R,
    hash: Option<&'a mut Sha256>,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hash.as_mut() {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

fn mismatch(section: &str, path: &str, got: &Entry, want: &Entry) -> String {
    format!(
        "{section} member `{path}` does not match the manifest (size {} vs {}, digest {} vs {})",
        got.size,
        want.size,
        short(&got.digest),
        short(&want.digest)
    )
}

fn compare(
    section: &str,
    manifest: &BTreeMap<String, Entry>,
    found: &BTreeMap<String, Entry>,
) -> Result<(), String> {
    for (path, want) in manifest {
        match found.get(path) {
            None => {
                return Err(format!(
                    "{section} member `{path}` listed in the manifest is missing"
                ))
            }
            Some(got) if !want.matches(got) => return Err(mismatch(section, path, got, want)),
            Some(_) => {}
        }
    }
    if let Some(extra) = found.keys().find(|k| !manifest.contains_key(*k)) {
        return Err(format!("{section} member `{extra}` is not in the manifest"));
    }
    Ok(())
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn read_small<R: Read>(r: R, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading {what}: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!("{what} is larger than {limit} bytes"));
    }
    Ok(buf)
}

pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let file = std::fs::File::open(path).map_err(|e| VerifyError {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    verify_open(file, path, opts)
}

/// As [`verify`], reading the already open `file` (from its current offset); `path` names it
/// and locates its sidecar. Restore holds the file it verified and extracts from it.
pub fn verify_open(
    file: std::fs::File,
    path: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    verify_open_staged(file, path, opts, None)
}

/// As [`verify_open`], in the same single pass handing every root.tar member and dump file to
/// `stage` as it is checked (restore extracts into its staging directory this way). The dump's
/// engine check then reads the staged copy.
pub fn verify_open_staged(
    file: std::fs::File,
    path: &Path,
    opts: &VerifyOptions,
    mut stage: Option<&mut dyn Stage>,
) -> Result<VerifyReport, VerifyError> {
    let fail = |message: String| VerifyError {
        path: path.to_path_buf(),
        message,
    };
    let opened = reader::open_file(file, opts.max_ratio, opts.identities.as_deref())
        .map_err(|e| fail(e.to_string()))?;
    let mut outer = tar::Archive::new(opened.reader);
    let mut names = HashSet::new();
    let mut metadata: Option<Metadata> = None;
    let mut manifest: Option<Manifest> = None;
    let mut metadata_sha256 = String::new();
    // Juju 4's own manifest, and every regular file's (size, sha256) to hold it against.
    let mut juju_manifest: Option<super::manifest::JujuManifest> = None;
    let mut outer_files: BTreeMap<String, (u64, String)> = BTreeMap::new();
    // What root.tar holds, once it has been checked.
    let mut root: Option<RootTarFacts> = None;
    let mut dump: BTreeMap<String, Entry> = BTreeMap::new();
    let scratch = tempfile::Builder::new()
        .prefix("juju-brd-verify-")
        .tempdir_in(opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir))
        .map_err(|e| fail(format!("cannot create a scratch directory: {e}")))?;
    let mut checked_dumps = Vec::new();
    // The engine that wrote `dump/`, once metadata.json has named it.
    let mut checker: Option<Box<dyn crate::db::Engine>> = None;

    let entries = outer
        .entries()
        .map_err(|e| fail(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(format!("archive is damaged or truncated: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let rel = safe_relative(&raw).map_err(fail)?;
        let name = rel.display().to_string();
        if !names.insert(name.clone()) {
            return Err(fail(format!("duplicate member `{name}`")));
        }
        let kind = entry.header().entry_type();
        if !(name == TOP || name.starts_with(&format!("{TOP}/"))) {
            return Err(fail(format!("unexpected member `{name}` outside {TOP}/")));
        }
        match kind {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            other => return Err(fail(format!("member `{name}` has type {other:?}; only files and directories belong at the top level"))),
        }
        let inner = &name[TOP.len() + 1..];
        match inner {
            METADATA => {
                let bytes = read_small(&mut entry, MAX_METADATA_BYTES, METADATA).map_err(fail)?;
                metadata_sha256 = hex::encode(Sha256::digest(&bytes));
                outer_files.insert(name.clone(), (bytes.len() as u64, metadata_sha256.clone()));
                metadata = Some(Metadata::parse(&bytes).map_err(fail)?);
            }
            MANIFEST | SHARED_MANIFEST => {
                if root.is_some() {
                    return Err(fail(format!("{inner} comes after {ROOT_TAR}")));
                }
                if manifest.is_some() {
                    return Err(fail(format!("a second juju-brd manifest, {inner}")));
                }
                let size = entry.header().size().map_err(|e| fail(e.to_string()))?;
                if size > MAX_MANIFEST_BYTES {
                    return Err(fail(format!(
                        "{inner} is larger than {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                if inner == MANIFEST {
                    // Parsed straight from the stream: no second copy of a large manifest.
                    manifest = Some(
                        serde_json::from_reader(io::BufReader::new(&mut entry))
                            .map_err(|e| fail(format!("{MANIFEST} is not valid: {e}")))?,
                    );
                } else {
                    let mut bytes = Vec::new();
                    entry
                        .read_to_end(&mut bytes)
                        .map_err(|e| fail(format!("reading {SHARED_MANIFEST}: {e}")))?;
                    match SharedManifest::parse(&bytes).map_err(fail)? {
                        SharedManifest::Ours(m) => manifest = Some(m),
                        SharedManifest::Juju(m) => juju_manifest = Some(m),
                    }
                }
            }
            ROOT_TAR => {
                let m = manifest.as_ref();
                // root.tar's own SHA-256 matters only to Juju 4's manifest, which (like ours)
                // must come first; otherwise its content is hashed once, file by file.
                let mut h = juju_manifest.as_ref().map(|_| Sha256::new());
                let mut tee = HashingReader {
                    inner: &mut entry,
                    hash: h.as_mut(),
                    bytes: 0,
                };
                root =
                    Some(check_root_tar_staged(&mut tee, m, reborrow(&mut stage)).map_err(fail)?);
                // The rest of the member (tar padding) counts towards its hash too.
                io::copy(&mut tee, &mut io::sink())
                    .map_err(|e| fail(format!("reading {ROOT_TAR}: {e}")))?;
                let size = tee.bytes;
                if let Some(h) = h {
                    outer_files.insert(name.clone(), (size, hex::encode(h.finalize())));
                }
            }
            d if d.starts_with(&format!("{DUMP_DIR}/")) => {
                let rel = d[DUMP_DIR.len() + 1..].to_string();
                if checker.is_none() {
                    checker = metadata.as_ref().and_then(|m| {
                        crate::db::for_archive(m.engine(), &Default::default(), Path::new("/"))
                    });
                }
                let checked = checker.as_ref().is_some_and(|e| e.checks_dump_files());
                // In our manifest's algorithm; without one, SHA-256 as Juju 4's manifest has it.
                let mut h = manifest
                    .as_ref()
                    .map_or(DigestAlgo::Sha256, |m| m.algo())
                    .hasher();
                let size = if let Some(s) = reborrow(&mut stage) {
                    let (out, staged) = s.dump(&rel).map_err(fail)?;
                    let mut buf = vec![0u8; COPY_BUF];
                    let n = copy_hashing(&mut entry, &mut h, Some(out), &mut buf)
                        .map_err(|e| fail(format!("reading dump `{rel}`: {e}")))?;
                    s.dump_done().map_err(fail)?;
                    if opts.check_database && checked {
                        checked_dumps.push((rel.clone(), staged));
                    }
                    n
                } else if opts.check_database && checked {
                    let copy = scratch.path().join(format!("dump-{}", checked_dumps.len()));
                    let mut f = std::fs::File::create(&copy)
                        .map_err(|e| fail(format!("scratch copy: {e}")))?;
                    let n = io::copy(
                        &mut entry,
                        &mut TeeHash {
                            out: &mut f,
                            hash: &mut h,
                        },
                    )
                    .map_err(|e| fail(format!("reading dump `{rel}`: {e}")))?;
                    checked_dumps.push((rel.clone(), copy));
                    n
                } else {
                    io::copy(&mut entry, &mut h)
                        .map_err(|e| fail(format!("reading dump `{rel}`: {e}")))?
                };
                let digest = h.finalize_hex();
                outer_files.insert(name.clone(), (size, digest.clone()));
                dump.insert(
                    rel,
                    Entry {
                        kind: Kind::File,
                        size,
                        digest,
                        link: None,
                    },
                );
            }
            other => return Err(fail(format!("unexpected member `{TOP}/{other}`"))),
        }
    }
    // The tar end marker may be followed only by zero padding.
    let mut rest = outer.into_inner();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| fail(format!("archive is damaged or truncated: {e}")))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(fail("data after the end of the tar archive".into()));
        }
    }

    let metadata = metadata.ok_or_else(|| fail(format!("{TOP}/{METADATA} is missing")))?;
    let root = root.ok_or_else(|| fail(format!("{TOP}/{ROOT_TAR} is missing")))?;
    if let Some(p) = metadata
        .brd
        .as_ref()
        .and_then(|b| b.database_path.as_deref())
    {
        if !p.starts_with('/') {
            return Err(fail(format!(
                "{METADATA}: database path `{p}` is not absolute"
            )));
        }
        let rel = safe_relative(p.trim_start_matches('/').as_bytes())
            .map_err(|e| fail(format!("{METADATA}: database path: {e}")))?;
        // Restore writes the database there: never through a link the archive itself plants.
        if let Some(link) = rel.ancestors().skip(1).find(|a| root.symlinks.contains(*a)) {
            return Err(fail(format!(
                "{METADATA}: database path `{p}` goes through symlink `{}` in {ROOT_TAR}",
                link.display()
            )));
        }
    }
    if metadata.brd.is_some() && manifest.is_none() {
        return Err(fail(format!("{TOP}/{MANIFEST} is missing")));
    }
    if let Some(m) = &manifest {
        if !m.metadata_sha256.is_empty() && m.metadata_sha256 != metadata_sha256 {
            return Err(fail(format!(
                "{METADATA} does not match the manifest (sha256 {} vs {})",
                short(&metadata_sha256),
                short(&m.metadata_sha256)
            )));
        }
        compare("dump", &m.dump, &dump).map_err(fail)?;
    }
    if let Some(m) = &juju_manifest {
        check_juju_manifest(m, &outer_files).map_err(fail)?;
    }
    if let Some(engine) = &checker {
        for (rel, copy) in &checked_dumps {
            engine
                .check_dump_file(copy)
                .map_err(|e| fail(format!("dump `{rel}`: {e}")))?;
        }
    }

    let sha256 = opened.raw.hex();
    let sidecar = check_sidecar(path, &sha256).map_err(fail)?;
    Ok(VerifyReport {
        root_members: root.members,
        root_bytes: root.bytes,
        privileged: root.privileged,
        root_dirs: root.dirs,
        agent_addresses: root.agent_addresses,
        dump_files: dump.keys().cloned().collect(),
        has_manifest: manifest.is_some(),
        manifest,
        compression: opened.compression,
        encrypted: opened.encrypted,
        metadata,
        sha256,
        sidecar,
    })
}

struct TeeHash<'a, W> {
    out: &'a mut W,
    hash: &'a mut FileHasher,
}
impl<W: Write> Write for TeeHash<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `NAME.sha256` beside the archive, in sha256sum format; absent is allowed (Juju writes none).
fn check_sidecar(path: &Path, sha256: &str) -> Result<SidecarStatus, String> {
    let mut side = path.as_os_str().to_owned();
    side.push(super::name::SIDECAR_SUFFIX);
    let text = match std::fs::read_to_string(&side) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SidecarStatus::Missing),
        Err(e) => return Err(format!("cannot read sidecar: {e}")),
    };
    let want = text.split_whitespace().next().unwrap_or_default();
    if !want.eq_ignore_ascii_case(sha256) {
        return Err(format!(
            "checksum {} does not match the sidecar's {}",
            short(sha256),
            short(want)
        ));
    }
    Ok(SidecarStatus::Match)
}

/// What can be checked of an encrypted archive without its identity: the bytes on disk hash to
/// `sha256` (and to the sidecar) and start with a well-formed age header.
fn verify_sealed(path: &Path, sha256: &str) -> Result<(), VerifyError> {
    let fail = |message: String| VerifyError {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    age::Decryptor::new(io::BufReader::new(&mut f))
        .map_err(|e| fail(format!("not a readable age file: {e}")))?;
    io::Seek::rewind(&mut f).map_err(|e| fail(e.to_string()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(|e| fail(format!("cannot read back: {e}")))?;
    let got = hex::encode(h.finalize());
    if got != sha256 {
        return Err(fail(format!(
            "read back as sha256 {} but was written as {}",
            short(&got),
            short(sha256)
        )));
    }
    check_sidecar(path, &got).map_err(fail)?;
    Ok(())
}

/// What `backup.verify_after` checks of an archive this process has just written (`written`):
/// the file read back from disk has exactly the size and digest the writer computed over the
/// bytes it wrote (BLAKE3 here: the writer computed the sidecar's SHA-256 over the same bytes, and
/// the sidecar must say that), and those bytes decompress, every gzip member's CRC-32
/// or zstd frame's checksum passing, to exactly the uncompressed tar stream the writer produced
/// (same length and CRC-32). That stream's members were hashed for the manifest from the very
/// bytes written into it, so the manifest describes the archive without hashing it again.
///
/// When the writer decoded its bytes as it wrote them ([`super::decode_check`]), that result is
/// used and the file is only read back and hashed; otherwise it is decoded here, hashed as it is
/// read.
pub fn verify_written(written: &super::writer::WrittenArchive) -> Result<(), VerifyError> {
    let path = &written.path;
    let fail = |message: String| VerifyError {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let (decoded, digest, size) = match &written.decoded {
        Some(decoded) => {
            let decoded = decoded.clone().map_err(fail)?;
            if decoded.compressed != written.size {
                return Err(fail(format!(
                    "the compressed stream ends after {} of its {} bytes",
                    decoded.compressed, written.size
                )));
            }
            let mut h = blake3::Hasher::new();
            let size = io::copy(&mut io::BufReader::with_capacity(1 << 20, file), &mut h)
                .map_err(|e| fail(format!("cannot read back: {e}")))?;
            let plain = (decoded.plain_len, decoded.plain_crc);
            (plain, h.finalize().to_hex().to_string(), size)
        }
        None => {
            let max = reader::DEFAULT_MAX_RATIO;
            let mut opened = reader::open_file_with(file, max, None, DigestAlgo::Blake3)
                .map_err(|e| fail(e.to_string()))?;
            let mut sum = super::segment::PlainSum::default();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match opened.reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sum.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(fail(format!("archive is damaged or truncated: {e}"))),
                }
            }
            ((sum.len, sum.crc()), opened.raw.hex(), opened.raw.bytes())
        }
    };
    if size != written.size || digest != written.blake3 {
        return Err(fail(format!(
            "read back as {} bytes, BLAKE3 {}, but was written as {} bytes, BLAKE3 {}",
            size,
            short(&digest),
            written.size,
            short(&written.blake3)
        )));
    }
    let (len, crc) = decoded;
    if len != written.plain_len || crc != written.plain_crc {
        return Err(fail(format!(
            "decompresses to {len} bytes (CRC-32 {crc:08x}), not the {} bytes (CRC-32 {:08x}) written",
            written.plain_len, written.plain_crc
        )));
    }
    // The writer has just written the sidecar: it must be there, and say what was written.
    match check_sidecar(path, &written.sha256).map_err(fail)? {
        SidecarStatus::Match => Ok(()),
        SidecarStatus::Missing => Err(fail("the sidecar written with it is gone".into())),
    }
}

/// Verifies as far as this process can read: completely (`Some(report)`), or for an encrypted
/// archive without `opts.identities`, its stored bytes against `sha256` and its age header
/// (`None`). `sha256` is what the archive was written as (or its sidecar says).
pub fn verify_readable(
    path: &Path,
    sha256: Option<&str>,
    opts: &VerifyOptions,
) -> Result<Option<VerifyReport>, VerifyError> {
    let mut magic = [0u8; super::encryption::AGE_MAGIC.len()];
    let sealed = opts.identities.is_none()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && magic == *super::encryption::AGE_MAGIC;
    if !sealed {
        return verify(path, opts).map(Some);
    }
    let sha256 = sha256.ok_or_else(|| VerifyError {
        path: path.to_path_buf(),
        message: "encrypted, with no identity and no checksum to check it against".into(),
    })?;
    verify_sealed(path, sha256).map(|()| None)
}

/// Reads just the metadata (the first member of our archives), without checking the rest.
pub fn read_metadata(
    path: &Path,
    identities: Option<&Identities>,
) -> Result<Metadata, VerifyError> {
    let fail = |message: String| VerifyError {
        path: path.to_path_buf(),
        message,
    };
    let opened = reader::open(path, reader::DEFAULT_MAX_RATIO, identities)
        .map_err(|e| fail(e.to_string()))?;
    let mut outer = tar::Archive::new(opened.reader);
    let want = format!("{TOP}/{METADATA}");
    for entry in outer.entries().map_err(|e| fail(e.to_string()))? {
        let mut entry = entry.map_err(|e| fail(format!("archive is damaged: {e}")))?;
        let name = safe_relative(&entry.path_bytes()).map_err(fail)?;
        if name == Path::new(&want) {
            let bytes = read_small(&mut entry, MAX_METADATA_BYTES, METADATA).map_err(fail)?;
            return Metadata::parse(&bytes).map_err(fail);
        }
    }
    Err(fail(format!("{want} is missing")))
}
