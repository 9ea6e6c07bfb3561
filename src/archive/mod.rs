//! The archive format: names, metadata, manifest, writing and verifying.
//!
//! Layout of `juju-backup-YYYYMMDD-HHMMSS.tar.gz` (what `juju create-backup` writes, plus a manifest):
//! ```text
//! juju-backup/metadata.json   Juju's keys + a "juju-brd" object (first, so `show` reads only a few KiB)
//! juju-backup/juju-brd-manifest.json
//!                             size + SHA-256 of every root.tar member and dump file (a name Juju
//!                             does not read: Juju 4 reads `manifest.json` in a shape of its own)
//! juju-backup/root.tar        uncompressed tar of the state-server files, paths relative to /
//! juju-backup/dump/...        the database dump, as the engine produced it
//! ```

pub mod blockgz;
pub mod decode_check;
pub mod encryption;
pub mod manifest;
pub mod member;
pub mod metadata;
pub mod name;
pub mod paths;
pub mod reader;
pub mod segment;
pub mod sidecar;
pub mod verify;
pub mod writeback;
pub mod writer;

pub const TOP: &str = "juju-backup";
pub const METADATA: &str = "metadata.json";
/// juju-brd's manifest.
pub const MANIFEST: &str = "juju-brd-manifest.json";
/// Where juju-brd before 0.2 kept its manifest, and where Juju 4 keeps its own (another shape:
/// `{"format-version", "files": [{path, kind, size, sha256}]}`); both are read.
pub const SHARED_MANIFEST: &str = "manifest.json";
pub const ROOT_TAR: &str = "root.tar";
pub const DUMP_DIR: &str = "dump";

/// How an archive is compressed (the `[backup] compression` key).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}
