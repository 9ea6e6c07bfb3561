//! The archives in an archive directory: what `list`, retention and the API see.
//!
//! Only names [`ArchiveName`] parses are archives; `*.part` files, sidecars and anything an operator
//! put there are ignored. Verification results are cached in the state directory by
//! (name, size, mtime), so listing does not re-read gigabytes and a replaced file is never trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::name::ArchiveName;
use crate::archive::writer::write_atomic;

#[derive(Debug, Clone, Serialize)]
pub struct ArchiveInfo {
    pub name: String,
    #[serde(skip)]
    pub parsed: ArchiveName,
    pub path: PathBuf,
    pub size: u64,
    pub started: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub verification: VerifyState,
    /// Sealed with age; reading it needs an identity.
    pub encrypted: bool,
    /// From the sidecar's listing line, when it has one.
    pub environment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyState {
    Verified,
    Failed,
    Unverified,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    size: u64,
    mtime_ns: i128,
    ok: bool,
}

const CACHE_FILE: &str = "verified.json";

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Archives in `dir`, newest first.
pub fn list(dir: &Path, state_dir: &Path) -> std::io::Result<Vec<ArchiveInfo>> {
    let cache = load_cache(state_dir);
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let fname = entry.file_name();
        let Some(parsed) = fname.to_str().and_then(ArchiveName::parse) else {
            continue;
        };
        let md = match entry.path().symlink_metadata() {
            Ok(m) if m.is_file() => m,
            _ => continue,
        };
        let name = parsed.to_string();
        let verification = match cache.get(&name) {
            Some(c) if c.size == md.len() && c.mtime_ns == mtime_ns(&md) => {
                if c.ok {
                    VerifyState::Verified
                } else {
                    VerifyState::Failed
                }
            }
            _ => VerifyState::Unverified,
        };
        let environment = crate::archive::sidecar::read(&entry.path())
            .and_then(|(_, listing)| listing)
            .map(|l| l.environment);
        out.push(ArchiveInfo {
            encrypted: parsed.encrypted,
            environment,
            started: parsed.started_utc(),
            modified: md.modified().map(DateTime::<Utc>::from).unwrap_or_default(),
            path: entry.path(),
            size: md.len(),
            name,
            parsed,
            verification,
        });
    }
    out.sort_by(|a, b| b.parsed.cmp(&a.parsed));
    Ok(out)
}

fn load_cache(state_dir: &Path) -> BTreeMap<String, CacheEntry> {
    std::fs::read(state_dir.join(CACHE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records a verification result for the archive as it is on disk now.
pub fn record_verification(state_dir: &Path, archive: &Path, ok: bool) -> std::io::Result<()> {
    let md = archive.metadata()?;
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::create_dir_all(state_dir)?;
    let mut cache = load_cache(state_dir);
    // Forget archives that no longer exist, so the cache does not grow forever.
    if let Some(dir) = archive.parent() {
        cache.retain(|n, _| dir.join(n).exists());
    }
    cache.insert(
        name,
        CacheEntry {
            size: md.len(),
            mtime_ns: mtime_ns(&md),
            ok,
        },
    );
    write_atomic(
        &state_dir.join(CACHE_FILE),
        &serde_json::to_vec_pretty(&cache).expect("serialises"),
        0o600,
    )
}

/// Removes leftovers of interrupted runs: `*.part` files and staging directories.
pub fn remove_partials(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(crate::archive::name::PREFIX) || name.starts_with(".staging-");
        if ours && name.ends_with(crate::archive::name::PART_SUFFIX) {
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Applies the retention policy to the archive directory (or only reports, with `dry_run`).
/// Every deletion is logged with the rule that removed it.
pub fn prune(
    cfg: &crate::config::Config,
    dry_run: bool,
) -> anyhow::Result<Vec<crate::retention::Decision>> {
    let archives = list(&cfg.archive_dir, &cfg.state_dir)?;
    let candidates: Vec<crate::retention::Candidate> = archives
        .iter()
        .map(|a| crate::retention::Candidate {
            name: a.name.clone(),
            started: a.started,
            verified: a.verification == VerifyState::Verified,
            size: a.size,
        })
        .collect();
    let tz = crate::schedule::parse_timezone(&cfg.schedule.timezone)?;
    let (free, _) = crate::space::free_and_total(&cfg.archive_dir)?;
    let mut decisions = crate::retention::plan(&cfg.retention, &candidates, tz, free)?;
    // An archive that has not reached every remote is the only copy there is: keep it.
    let ledger = crate::remote::replicate::Ledger::load(&cfg.state_dir);
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        let missing = ledger.missing(&d.name, &cfg.remotes);
        if !missing.is_empty() {
            d.keep = true;
            d.reason = format!("not yet copied to remote {}", missing.join(", "));
        }
    }
    for d in decisions.iter().filter(|d| !d.keep) {
        if dry_run {
            tracing::info!(archive = %d.name, reason = %d.reason, "would delete");
            continue;
        }
        let path = cfg.archive_dir.join(&d.name);
        std::fs::remove_file(&path)?;
        let _ = std::fs::remove_file(cfg.archive_dir.join(format!(
            "{}{}",
            d.name,
            crate::archive::name::SIDECAR_SUFFIX
        )));
        tracing::info!(archive = %d.name, reason = %d.reason, "deleted by retention");
    }
    Ok(decisions)
}
