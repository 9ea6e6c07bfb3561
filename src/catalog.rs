//! The archives in an archive directory: what `list`, retention and the API see.
//!
//! Only names [`ArchiveName`] parses are archives; `*.part` files, sidecars and anything an operator
//! put there are ignored. Verification results come from the state directory's cache
//! ([`VerificationCache`]), so listing does not re-read gigabytes.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::name::ArchiveName;
use crate::state::{Ledger, VerificationCache};

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
    /// When the archive was last read completely (verify, `list --verify`, the scrub, the
    /// backup's own read-back). The result holds while the file is not replaced; it cannot see
    /// bit rot since then, which only another read finds.
    pub checked_at: Option<DateTime<Utc>>,
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

/// Archives in `dir`, newest first.
pub fn list(dir: &Path, state_dir: &Path) -> std::io::Result<Vec<ArchiveInfo>> {
    let cache = VerificationCache::load(state_dir);
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
        let checked = cache.checked(&name, &md);
        let verification = match checked {
            Some((true, _)) => VerifyState::Verified,
            Some((false, _)) => VerifyState::Failed,
            None => VerifyState::Unverified,
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
            checked_at: checked.and_then(|(_, at)| at),
        });
    }
    out.sort_by(|a, b| b.parsed.cmp(&a.parsed));
    Ok(out)
}

/// The newest verified archive of `archives` as retention sees it: a future-dated one (see
/// [`crate::retention`]) is never it.
pub fn newest_verified(archives: &[ArchiveInfo], now: DateTime<Utc>) -> Option<&ArchiveInfo> {
    archives
        .iter()
        .filter(|a| !crate::retention::is_future_dated(a.started, now))
        .filter(|a| a.verification == VerifyState::Verified)
        .max_by(|a, b| a.parsed.cmp(&b.parsed))
}

/// The archives of `archives` named after `now` (see [`crate::retention`]).
pub fn future_dated(archives: &[ArchiveInfo], now: DateTime<Utc>) -> Vec<String> {
    archives
        .iter()
        .filter(|a| crate::retention::is_future_dated(a.started, now))
        .map(|a| a.name.clone())
        .collect()
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

/// Where this host's archives live and how they are kept: what listing, retention and off-host
/// copying need from the config (built by `Config::site`).
#[derive(Debug, Clone)]
pub struct Site {
    pub archive_dir: PathBuf,
    pub state_dir: PathBuf,
    pub retention: crate::retention::RetentionConfig,
    /// The zone retention's daily, weekly... buckets are cut in.
    pub timezone: chrono_tz::Tz,
    /// The `[[remote]]` names an archive must reach before retention may delete it here.
    pub remote_names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("{what} {}: {err}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] crate::retention::RetentionError),
    #[error("retention task panicked: {0}")]
    Panicked(String),
}

/// Applies the retention policy to the archive directory (or only reports, with `dry_run`).
/// Every deletion is logged with the rule that removed it, every future-dated archive with a
/// warning. `just_taken` (the archive a backup has just written) is never deleted.
pub fn prune(
    cfg: &Site,
    dry_run: bool,
    just_taken: Option<&str>,
) -> Result<Vec<crate::retention::Decision>, PruneError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |err| PruneError::Io { what, path, err }
    };
    let archives = list(&cfg.archive_dir, &cfg.state_dir).map_err(io("list", &cfg.archive_dir))?;
    let candidates: Vec<crate::retention::Candidate> = archives
        .iter()
        .map(|a| crate::retention::Candidate {
            name: a.name.clone(),
            started: a.started,
            verified: a.verification == VerifyState::Verified,
            size: a.size,
        })
        .collect();
    let (free, _) = crate::space::free_and_total(&cfg.archive_dir)
        .map_err(io("free space of", &cfg.archive_dir))?;
    let ctx = crate::retention::Context {
        now: Utc::now(),
        tz: cfg.timezone,
        free_bytes: free,
        just_taken: just_taken.map(str::to_string),
    };
    let mut decisions = crate::retention::plan(&cfg.retention, &candidates, &ctx)?;
    for d in decisions
        .iter()
        .filter(|d| d.reason.starts_with(crate::retention::FUTURE_DATED))
    {
        tracing::warn!(archive = %d.name, reason = %d.reason, "future-dated archive");
    }
    // An archive that has not reached every remote is the only copy there is: keep it. (Not one
    // that failed verification: it is never copied, so it would be kept forever.)
    let ledger = Ledger::load(&cfg.state_dir);
    let failed = |name: &str| {
        archives
            .iter()
            .any(|a| a.name == name && a.verification == VerifyState::Failed)
    };
    for d in decisions.iter_mut().filter(|d| !d.keep && !failed(&d.name)) {
        let missing = ledger.missing(&d.name, cfg.remote_names.iter().map(String::as_str));
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
        std::fs::remove_file(&path).map_err(io("delete", &path))?;
        let _ = std::fs::remove_file(cfg.archive_dir.join(format!(
            "{}{}",
            d.name,
            crate::archive::name::SIDECAR_SUFFIX
        )));
        tracing::info!(archive = %d.name, reason = %d.reason, "deleted by retention");
    }
    Ok(decisions)
}
