//! `juju-backup/juju-brd-manifest.json`: size and digest of every member of `root.tar` and every
//! dump file, so `verify` can prove an archive is whole without trusting anything else in it.
//!
//! Format 3 records the first 128 bits of each file's BLAKE3 ([`file_digest`]); format 2 the
//! first 128 bits of its SHA-256, format 1 all 256, and all three are read ([`DigestAlgo`]).
//! A digest does not compress, so on a state of 100k small files full ones cost 1.6% of the
//! archive and halves 0.8%; 128 bits still take 2^64 work to find a collision. BLAKE3 hashes
//! 3-4 times faster than SHA-256 here (AVX-512 against SHA-NI, one core), and every byte of
//! state is hashed at backup and again at restore. The archive as a whole is still checked
//! against its full SHA-256 (the sidecar, and at restore the hash of the bytes verified) before
//! any per-file digest is consulted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The manifest format this version writes.
pub const FORMAT: u32 = 3;
/// Hex digits of a file's digest that formats 2 and 3 record.
pub const DIGEST_HEX: usize = 32;

/// What the manifest records for content whose full digest is `full` (hex).
pub fn file_digest(full: &str) -> String {
    full[..DIGEST_HEX].to_string()
}

/// The hash a manifest's file digests are taken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgo {
    /// Formats 1 and 2 (and what Juju 4's manifest uses).
    Sha256,
    /// Format 3 on.
    Blake3,
}

impl DigestAlgo {
    /// What this version writes manifests with.
    pub const WRITTEN: DigestAlgo = DigestAlgo::of_format(FORMAT);

    pub const fn of_format(format: u32) -> DigestAlgo {
        if format >= 3 {
            DigestAlgo::Blake3
        } else {
            DigestAlgo::Sha256
        }
    }

    pub fn hasher(self) -> FileHasher {
        match self {
            DigestAlgo::Sha256 => FileHasher::Sha256(sha2::Sha256::new()),
            DigestAlgo::Blake3 => FileHasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }
}

/// A file's digest in the making, in the manifest's algorithm.
#[derive(Clone)]
pub enum FileHasher {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl FileHasher {
    pub fn update(&mut self, buf: &[u8]) {
        match self {
            FileHasher::Sha256(h) => h.update(buf),
            FileHasher::Blake3(h) => {
                h.update(buf);
            }
        }
    }

    /// The full digest, hex (64 digits for either algorithm).
    pub fn finalize_hex(self) -> String {
        match self {
            FileHasher::Sha256(h) => hex::encode(h.finalize()),
            FileHasher::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

impl std::io::Write for FileHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub kind: Kind,
    pub size: u64,
    /// Hex digest of the content in the manifest's [`DigestAlgo`]: its first 128 bits (formats 2
    /// and 3) or all of it (format 1, and what `verify` computes); empty for directories and
    /// links. Formats 1 and 2 name it `sha256`.
    #[serde(
        rename = "digest",
        alias = "sha256",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub digest: String,
    /// Link target for symlinks and hardlinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Members of root.tar by path (as stored: relative to `/`).
    pub root: BTreeMap<String, Entry>,
    /// Files under dump/ by path relative to dump/.
    pub dump: BTreeMap<String, Entry>,
    /// SHA-256 of metadata.json, so a changed byte there is caught too.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata_sha256: String,
}

/// Juju 4's own manifest (juju/juju `core/backups/manifest.go`): every regular file of the
/// archive with its size and hex SHA-256; unknown fields are ignored, as Juju does.
#[derive(Debug, Clone, Deserialize)]
pub struct JujuManifest {
    #[serde(rename = "format-version", default)]
    pub format_version: i64,
    pub files: Vec<JujuManifestEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JujuManifestEntry {
    pub path: String,
    #[serde(default)]
    pub kind: String,
    pub size: u64,
    pub sha256: String,
}

/// What a `manifest.json` turns out to be.
#[derive(Debug, Clone)]
pub enum SharedManifest {
    /// juju-brd's, as written before it moved to `juju-brd-manifest.json`.
    Ours(Manifest),
    Juju(JujuManifest),
}

impl SharedManifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if let Ok(m) = serde_json::from_slice::<Manifest>(bytes) {
            return Ok(SharedManifest::Ours(m));
        }
        serde_json::from_slice::<JujuManifest>(bytes)
            .map(SharedManifest::Juju)
            .map_err(|e| format!("manifest.json is neither juju-brd's nor Juju's: {e}"))
    }
}

impl Entry {
    /// Whether content whose full hex digest (in the manifest's [`DigestAlgo`]) is `full` is what
    /// this entry records. A recorded digest of any other length than 128 or 256 bits matches
    /// nothing.
    pub fn digest_matches(&self, full: &str) -> bool {
        matches!(self.digest.len(), DIGEST_HEX | 64)
            && full
                .get(..self.digest.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&self.digest))
    }

    /// Whether `found` (read back, with a full digest in the manifest's algorithm) is the member
    /// this entry records.
    pub fn matches(&self, found: &Entry) -> bool {
        self.kind == found.kind
            && self.size == found.size
            && self.link == found.link
            && if self.digest.is_empty() {
                found.digest.is_empty()
            } else {
                self.digest_matches(&found.digest)
            }
    }
}

impl Manifest {
    /// The hash this manifest's file digests were taken with.
    pub fn algo(&self) -> DigestAlgo {
        DigestAlgo::of_format(self.format)
    }

    pub fn new() -> Self {
        Manifest {
            format: FORMAT,
            ..Default::default()
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("manifest.json is not valid: {e}"))
    }
}

/// Writes manifest.json entry by entry, so a state with a million files costs no memory:
/// `{"format":3,"root":{...},"dump":{...}}`, exactly what [`Manifest::parse`] reads.
pub struct ManifestWriter<W: std::io::Write> {
    out: W,
    section: u8,
    first: bool,
}

impl<W: std::io::Write> ManifestWriter<W> {
    pub fn new(mut out: W) -> std::io::Result<Self> {
        write!(out, r#"{{"format":{FORMAT},"root":{{"#)?;
        Ok(ManifestWriter {
            out,
            section: 0,
            first: true,
        })
    }

    /// Adds a root.tar member; all of them come before any dump file.
    pub fn root(&mut self, path: &str, e: &Entry) -> std::io::Result<()> {
        debug_assert_eq!(self.section, 0, "root entries after dump entries");
        self.entry(path, e)
    }

    /// Adds a dump file (path relative to dump/).
    pub fn dump(&mut self, path: &str, e: &Entry) -> std::io::Result<()> {
        if self.section == 0 {
            self.out.write_all(br#"},"dump":{"#)?;
            self.section = 1;
            self.first = true;
        }
        self.entry(path, e)
    }

    fn entry(&mut self, path: &str, e: &Entry) -> std::io::Result<()> {
        if !self.first {
            self.out.write_all(b",")?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.out, path)?;
        self.out.write_all(b":")?;
        serde_json::to_writer(&mut self.out, e)?;
        Ok(())
    }

    /// Closes the manifest, recording the SHA-256 of metadata.json.
    pub fn finish(mut self, metadata_sha256: &str) -> std::io::Result<W> {
        if self.section == 0 {
            self.out.write_all(br#"},"dump":{"#)?;
        }
        self.out.write_all(br#"},"metadata_sha256":"#)?;
        serde_json::to_writer(&mut self.out, metadata_sha256)?;
        self.out.write_all(b"}")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: u64) -> Entry {
        Entry {
            kind: Kind::File,
            size: n,
            digest: "ab".repeat(32),
            link: None,
        }
    }

    #[test]
    fn streamed_manifest_parses_to_the_same_value() {
        let mut want = Manifest::new();
        want.root.insert(
            "var/lib/juju".into(),
            Entry {
                kind: Kind::Dir,
                size: 0,
                digest: String::new(),
                link: None,
            },
        );
        want.root
            .insert("var/lib/juju/\"odd\" name".into(), file(3));
        want.dump.insert("state.db".into(), file(9));
        let mut w = ManifestWriter::new(Vec::new()).unwrap();
        for (p, e) in &want.root {
            w.root(p, e).unwrap();
        }
        for (p, e) in &want.dump {
            w.dump(p, e).unwrap();
        }
        want.metadata_sha256 = "cd".repeat(32);
        let bytes = w.finish(&want.metadata_sha256).unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), want);
        let empty = ManifestWriter::new(Vec::new()).unwrap().finish("").unwrap();
        assert_eq!(Manifest::parse(&empty).unwrap(), Manifest::new());
    }

    #[test]
    fn half_and_whole_digests_match_only_their_content() {
        for algo in [DigestAlgo::Sha256, DigestAlgo::Blake3] {
            let hex_of = |b: &[u8]| {
                let mut h = algo.hasher();
                h.update(b);
                h.finalize_hex()
            };
            let full_hex = hex_of(b"agent.conf");
            let half = Entry {
                digest: file_digest(&full_hex),
                ..file(10)
            };
            let whole = Entry {
                digest: full_hex.clone(),
                ..file(10)
            };
            assert_eq!(half.digest.len(), DIGEST_HEX);
            let found = Entry {
                digest: full_hex.clone(),
                ..file(10)
            };
            assert!(half.matches(&found) && whole.matches(&found));
            let other = hex_of(b"agent.conf ");
            assert!(!half.digest_matches(&other) && !whole.digest_matches(&other));
            // Any other length, including none, matches nothing.
            for bad in ["", &full_hex[..31], &full_hex[..33], &full_hex[..8]] {
                let e = Entry {
                    digest: bad.to_string(),
                    ..file(10)
                };
                assert!(!e.digest_matches(&full_hex), "{bad:?}");
            }
            assert!(!half.matches(&Entry {
                size: 11,
                ..found.clone()
            }));
        }
    }

    /// Known answers: formats 1 and 2 hash with SHA-256, 3 with BLAKE3; a format-2 manifest
    /// (its digests under `sha256`) still parses, and a new one is written as format 3 with
    /// `digest`.
    #[test]
    fn the_format_picks_the_hash() {
        let hex_of = |algo: DigestAlgo| {
            let mut h = algo.hasher();
            h.update(b"abc");
            h.finalize_hex()
        };
        assert_eq!(
            hex_of(DigestAlgo::of_format(2)),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex_of(DigestAlgo::of_format(3)),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(DigestAlgo::of_format(1), DigestAlgo::Sha256);
        assert_eq!(DigestAlgo::WRITTEN, DigestAlgo::Blake3);
        let old = br#"{"format":2,"root":{"a":{"kind":"file","size":3,"sha256":"ba7816bf8f01cfea414140de5dae2223"}},"dump":{}}"#;
        let m = Manifest::parse(old).unwrap();
        assert_eq!(m.algo(), DigestAlgo::Sha256);
        let found = Entry {
            digest: hex_of(m.algo()),
            ..file(3)
        };
        assert!(m.root["a"].matches(&found));
        let mut w = ManifestWriter::new(Vec::new()).unwrap();
        w.root("a", &found).unwrap();
        let text = String::from_utf8(w.finish("").unwrap()).unwrap();
        assert!(
            text.starts_with(r#"{"format":3,"#) && text.contains(r#""digest":"#),
            "{text}"
        );
    }
}
