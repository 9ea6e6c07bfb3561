//! `juju-backup/juju-brd-manifest.json`: size and SHA-256 of every member of `root.tar` and every
//! dump file, so `verify` can prove an archive is whole without trusting anything else in it.
//!
//! Format 2 records the first 128 bits of each file's SHA-256 ([`file_digest`]); format 1 recorded
//! all 256, and both are read. A digest does not compress, so on a state of 100k small files the
//! full ones cost 1.6% of the archive and the halves 0.8%; 128 bits still take 2^64 work to find a
//! collision, and the archive as a whole is checked against its full SHA-256 (the sidecar, and at
//! restore the hash of the bytes verified) before any per-file digest is consulted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// The manifest format this version writes.
pub const FORMAT: u32 = 2;
/// Hex digits of a file's SHA-256 that format 2 records.
pub const DIGEST_HEX: usize = 32;

/// What the manifest records for content whose SHA-256 is `sha256`.
pub fn file_digest(sha256: &[u8]) -> String {
    hex::encode(&sha256[..DIGEST_HEX / 2])
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
    /// Hex SHA-256 of the content, its first 128 bits (format 2) or all of it (format 1, and what
    /// `verify` computes); empty for directories and links.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
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
    /// Whether content with the hex SHA-256 `full` is what this entry records. A recorded digest
    /// of any other length than 128 or 256 bits matches nothing.
    pub fn digest_matches(&self, full: &str) -> bool {
        matches!(self.sha256.len(), DIGEST_HEX | 64)
            && full
                .get(..self.sha256.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&self.sha256))
    }

    /// Whether `found` (read back, with a full SHA-256) is the member this entry records.
    pub fn matches(&self, found: &Entry) -> bool {
        self.kind == found.kind
            && self.size == found.size
            && self.link == found.link
            && if self.sha256.is_empty() {
                found.sha256.is_empty()
            } else {
                self.digest_matches(&found.sha256)
            }
    }
}

impl Manifest {
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
/// `{"format":2,"root":{...},"dump":{...}}`, exactly what [`Manifest::parse`] reads.
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
            sha256: "ab".repeat(32),
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
                sha256: String::new(),
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
        use sha2::Digest;
        let full = sha2::Sha256::digest(b"agent.conf");
        let full_hex = hex::encode(full);
        let half = Entry {
            sha256: file_digest(&full),
            ..file(10)
        };
        let whole = Entry {
            sha256: full_hex.clone(),
            ..file(10)
        };
        assert_eq!(half.sha256.len(), DIGEST_HEX);
        let found = Entry {
            sha256: full_hex.clone(),
            ..file(10)
        };
        assert!(half.matches(&found) && whole.matches(&found));
        let other = hex::encode(sha2::Sha256::digest(b"agent.conf "));
        assert!(!half.digest_matches(&other) && !whole.digest_matches(&other));
        // Any other length, including none, matches nothing.
        for bad in ["", &full_hex[..31], &full_hex[..33], &full_hex[..8]] {
            let e = Entry {
                sha256: bad.to_string(),
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
