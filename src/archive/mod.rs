//! The archive format: names, metadata, manifest, writing and verifying.
//!
//! Layout of `juju-backup-YYYYMMDD-HHMMSS.tar.gz` (what `juju create-backup` writes, plus a manifest):
//! ```text
//! juju-backup/metadata.json   Juju's keys + a "juju-brd" object (first, so `show` reads only a few KiB)
//! juju-backup/manifest.json   size + SHA-256 of every root.tar member and dump file
//! juju-backup/root.tar        uncompressed tar of the state-server files, paths relative to /
//! juju-backup/dump/...        the database dump, as the engine produced it
//! ```

pub mod encryption;
pub mod manifest;
pub mod member;
pub mod metadata;
pub mod name;
pub mod paths;
pub mod reader;
pub mod sidecar;
pub mod verify;
pub mod writer;

pub const TOP: &str = "juju-backup";
pub const METADATA: &str = "metadata.json";
pub const MANIFEST: &str = "manifest.json";
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
