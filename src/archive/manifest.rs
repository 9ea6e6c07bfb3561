//! `juju-backup/manifest.json`: size and SHA-256 of every member of `root.tar` and every dump file,
//! so `verify` can prove an archive is whole without trusting anything else in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

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
    /// Hex SHA-256 of the content; empty for directories and links.
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
}

impl Manifest {
    pub fn new() -> Self {
        Manifest {
            format: 1,
            ..Default::default()
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("manifest.json is not valid: {e}"))
    }
}
