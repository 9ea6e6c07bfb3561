//! Scrubbing: reading every archive again, on a cadence, to find the ones that rotted.
//!
//! A cached verification result (`state_dir/verified.json`) is tied to the file's size and
//! mtime. That tells a replaced file from the one that was verified, but it cannot see bit rot:
//! a flipped byte changes neither. Nothing cheaper than reading the whole file can, so the daemon
//! reads: every `scrub.interval` it verifies each local archive completely again (as `verify`
//! does; an encrypted one without `encryption.identity_file` by its checksum and age header),
//! and with `scrub.remotes` reads each remote copy back by size and SHA-256 against the sidecar
//! written at backup time, as replication does right after an upload.
//!
//! What a scrub finds is acted on, never just logged:
//! - a damaged local archive is recorded as failed in the verification cache, so `list` says
//!   FAILED and retention no longer counts it as the newest verified archive (which it would
//!   otherwise keep, and let the good older ones go);
//! - a damaged remote copy is struck from the replication ledger, so local retention keeps the
//!   local archive again and the next replication uploads it afresh.
//!
//! The daemon runs scrubs in its single worker, between jobs, so a scrub never runs beside a
//! backup; a backup asked for during a scrub goes first, before the next archive is read. The
//! reading itself runs on the blocking pool. This module knows nothing of the daemon: it checks
//! one archive, or one remote, when asked.

use std::path::Path;
use std::time::Duration;

use crate::archive::verify::{self, VerifyOptions};
use crate::catalog::ArchiveInfo;
use crate::remote::{Remote, RemoteConfig, RemoteError};
use crate::state::{Ledger, VerificationCache};

/// The `[scrub]` config section, owned here; `config` composes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubConfig {
    /// How often every archive is read again: "7d", "12h"; "0s" turns scrubbing off. The first
    /// scrub comes one interval after the daemon starts (or after the last scrub it recorded).
    #[serde(
        default = "default_interval",
        serialize_with = "humantime_serde::serialize",
        deserialize_with = "interval"
    )]
    pub interval: Duration,
    /// Read back the copies on each `[[remote]]` too (downloads every archive there once per
    /// interval: mind the egress price of a metered bucket).
    #[serde(default = "default_true")]
    pub remotes: bool,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            interval: default_interval(),
            remotes: true,
        }
    }
}

/// Longest accepted interval; anything beyond a year is a typo, not a policy.
const MAX_INTERVAL: Duration = Duration::from_secs(366 * 24 * 3600);

fn interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v: Duration = humantime_serde::deserialize(d)?;
    if v > MAX_INTERVAL {
        return Err(serde::de::Error::custom(format!(
            "{} is more than a year; use \"0s\" to turn scrubbing off",
            humantime::format_duration(v)
        )));
    }
    if !v.is_zero() && v < Duration::from_secs(1) {
        return Err(serde::de::Error::custom(
            "must be at least 1s (or \"0s\" for off)",
        ));
    }
    Ok(v)
}

fn default_interval() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_true() -> bool {
    true
}

impl ScrubConfig {
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

/// What reading one local archive again found.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalCheck {
    Sound,
    /// Damaged: the first problem verify named.
    Damaged(String),
    /// Deleted (by retention or an operator) before it could be read: nothing to say.
    Gone,
}

/// Reads `archive` completely again and records the result in the verification cache. Blocking.
/// `encryption` decides how an encrypted archive is read (with the configured identity, or by
/// checksum and age header).
pub fn check_local(
    state_dir: &Path,
    encryption: &crate::archive::encryption::EncryptionConfig,
    archive: &ArchiveInfo,
) -> LocalCheck {
    let result = verify_listed(encryption, archive);
    if !archive.path.exists() {
        return LocalCheck::Gone;
    }
    let ok = result.is_ok();
    if let Err(e) = VerificationCache::record(state_dir, &archive.path, ok) {
        tracing::warn!(error = %e, "cannot record the verification result");
    }
    match result {
        Ok(()) => LocalCheck::Sound,
        Err(e) => LocalCheck::Damaged(e),
    }
}

/// Verifies a listed archive the way `list --verify` and the scrub do: completely, or for an
/// encrypted archive without an identity, its checksum against the sidecar and its age header.
pub fn verify_listed(
    encryption: &crate::archive::encryption::EncryptionConfig,
    a: &ArchiveInfo,
) -> Result<(), String> {
    let opts = VerifyOptions {
        identities: crate::archive::encryption::configured(encryption, a.parsed.encrypted)?,
        ..VerifyOptions::default()
    };
    let sha256 = crate::archive::sidecar::read(&a.path).map(|(sha, _)| sha);
    verify::verify_readable(&a.path, sha256.as_deref(), &opts)
        .map(|_| ())
        .map_err(|e| e.message)
}

/// What reading back one remote copy found.
#[derive(Debug, PartialEq, Eq)]
pub enum RemoteCheck {
    Sound,
    /// Damaged or missing there: what was wrong.
    Damaged(String),
    /// The remote could not be asked (down, credentials): nothing learnt about the copy.
    Unreachable(String),
}

/// The copies on one remote, to be read back one at a time (so the daemon's worker can run a
/// backup that is asked for in between).
pub struct RemoteScrub {
    remote: Remote,
    /// Each archive there, with the checksum of the local sidecar when it is still here.
    copies: Vec<(crate::remote::RemoteArchive, Option<String>)>,
}

impl RemoteScrub {
    /// Lists remote `rc`; `local` provides the sidecars written at backup time.
    pub async fn list(rc: &RemoteConfig, local: &[ArchiveInfo]) -> Result<RemoteScrub, String> {
        let remote = Remote::from_config(rc).map_err(|e| e.to_string())?;
        let listed = remote.list().await.map_err(|e| e.to_string())?;
        let copies = listed
            .into_iter()
            .map(|a| {
                let sha = local
                    .iter()
                    .find(|l| l.name == a.name)
                    .and_then(|l| crate::archive::sidecar::read(&l.path))
                    .map(|(sha, _)| sha);
                (a, sha)
            })
            .collect();
        Ok(RemoteScrub { remote, copies })
    }

    pub fn names(&self) -> Vec<String> {
        self.copies.iter().map(|(a, _)| a.name.clone()).collect()
    }

    /// Reads copy `i` back by size and SHA-256 against the sidecar written at backup time (the
    /// local one when the archive is still here, else the remote's own).
    pub async fn check(&self, i: usize) -> RemoteCheck {
        let (a, local_sha) = &self.copies[i];
        let sha = match local_sha {
            Some(sha) => Ok(sha.clone()),
            None => remote_sidecar_sha(&self.remote, &a.name).await,
        };
        let result = match sha {
            Ok(sha) => {
                self.remote
                    .check(&self.remote.key(&a.name), a.size, &sha)
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => RemoteCheck::Sound,
            Err(e @ (RemoteError::Mismatch { .. } | RemoteError::NotFound { .. })) => {
                RemoteCheck::Damaged(e.to_string())
            }
            Err(e) => RemoteCheck::Unreachable(e.to_string()),
        }
    }
}

/// Strikes the damaged copies `names` on remote `remote` from the ledger in `state_dir`: local
/// retention keeps those archives again, and the next replication copies them afresh. Blocking.
pub fn strike_from_ledger(state_dir: &Path, remote: &str, names: &[String]) {
    let mut ledger = Ledger::load(state_dir);
    for name in names {
        if let Some(copies) = ledger.copies.get_mut(name) {
            copies.remove(remote);
        }
    }
    if let Err(e) = ledger.save(state_dir) {
        tracing::error!(error = %e, "cannot write the replication ledger");
    }
}

/// The checksum in the remote's own sidecar of `name`.
async fn remote_sidecar_sha(remote: &Remote, name: &str) -> Result<String, RemoteError> {
    let key = remote.key(&format!("{name}{}", crate::archive::name::SIDECAR_SUFFIX));
    let bytes = remote.get_small(&key, 64 * 1024).await?;
    let (sha, _) = crate::archive::sidecar::parse(&String::from_utf8_lossy(&bytes));
    if sha.len() != 64 {
        return Err(RemoteError::Mismatch {
            remote: remote.name.clone(),
            key: key.to_string(),
            message: "the sidecar holds no SHA-256".into(),
        });
    }
    Ok(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ScrubConfig, String> {
        #[derive(serde::Deserialize)]
        struct Top {
            #[serde(default)]
            scrub: ScrubConfig,
        }
        toml::from_str::<Top>(text)
            .map(|t| t.scrub)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn weekly_by_default_off_with_zero_absurd_values_refused() {
        let d = parse("").unwrap();
        assert_eq!(d.interval, Duration::from_secs(7 * 86400));
        assert!(d.enabled() && d.remotes);
        assert!(!parse("[scrub]\ninterval = \"0s\"\n").unwrap().enabled());
        let h = parse("[scrub]\ninterval = \"12h\"\nremotes = false\n").unwrap();
        assert_eq!(h.interval, Duration::from_secs(12 * 3600));
        assert!(!h.remotes);
        for bad in ["\"999999d\"", "\"10ms\"", "\"weekly\"", "7"] {
            assert!(
                parse(&format!("[scrub]\ninterval = {bad}\n")).is_err(),
                "{bad}"
            );
        }
        assert!(parse("[scrub]\nintervall = \"1d\"\n").is_err());
    }
}
