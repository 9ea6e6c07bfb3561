//! `verified.json`: the last verification result of each archive, keyed by name and tied to the
//! file's size and mtime, so listing does not re-read gigabytes and a replaced file is never
//! trusted.
//!
//! What this cannot do: see bit rot. A byte that flips on disk changes neither size nor mtime,
//! and nothing cheaper than reading the whole file notices it. So a cached "verified" means
//! "passed a complete read at `checked_at`, and the file was not replaced since", no more; the
//! daemon's scrub (`[scrub]`) and `list --verify` read the archives again and record what they
//! find here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

const FILE: &str = "verified.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ok: bool,
    /// When the archive was last read completely (absent in caches written before it was kept).
    #[serde(default)]
    checked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VerificationCache(BTreeMap<String, Entry>);

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

impl VerificationCache {
    pub fn load(state_dir: &Path) -> VerificationCache {
        super::read_json(state_dir, FILE)
    }

    /// The recorded result for archive `name`, if it was recorded for the file as it is now.
    pub fn result(&self, name: &str, file: &std::fs::Metadata) -> Option<bool> {
        self.checked(name, file).map(|(ok, _)| ok)
    }

    /// The recorded result and when it was found, if recorded for the file as it is now.
    pub fn checked(
        &self,
        name: &str,
        file: &std::fs::Metadata,
    ) -> Option<(bool, Option<chrono::DateTime<chrono::Utc>>)> {
        self.0
            .get(name)
            .filter(|e| e.size == file.len() && e.mtime_ns == mtime_ns(file))
            .map(|e| (e.ok, e.checked_at))
    }

    /// Records a verification result for the archive as it is on disk now, and forgets archives
    /// that no longer exist beside it, so the cache does not grow forever.
    pub fn record(state_dir: &Path, archive: &Path, ok: bool) -> Result<(), super::StateError> {
        let md = archive.metadata().map_err(|err| super::StateError::Io {
            what: "stat",
            path: archive.to_path_buf(),
            err,
        })?;
        let name = archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cache = Self::load(state_dir);
        if let Some(dir) = archive.parent() {
            cache.0.retain(|n, _| dir.join(n).exists());
        }
        cache.0.insert(
            name,
            Entry {
                size: md.len(),
                mtime_ns: mtime_ns(&md),
                ok,
                checked_at: Some(chrono::Utc::now()),
            },
        );
        super::write_json(state_dir, FILE, &cache)
    }
}
