//! Which archives go to which remote, and when.
//!
//! After each successful backup every local archive that has not reached a remote yet is uploaded
//! to it (newest first), read back, and only then written into the ledger
//! (`state_dir/replicated.json`). Local retention never deletes an archive the ledger does not
//! show on every remote. A remote that fails is retried with exponential backoff, then left for
//! the next run; its failures are counted and its last error kept for `/v1/status`.
//! Each remote with a `retention` policy is pruned with it afterwards.

use std::collections::BTreeMap;

use chrono::Utc;

use super::RemoteConfig;
use super::{Remote, RemoteError};
use crate::archive::name::SIDECAR_SUFFIX;
use crate::catalog::ArchiveInfo;
use crate::catalog::Site;
use crate::state::Ledger;

/// What one remote's run did.
#[derive(Debug, Default)]
pub struct RemoteRun {
    pub uploaded: Vec<String>,
    pub pruned: Vec<String>,
    pub error: Option<String>,
}

/// Uploads every local archive the ledger does not show on each remote, then applies each
/// remote's retention. Returns per remote what happened; never fails as a whole, because one
/// broken remote must not keep the others from getting their copies.
pub async fn run(cfg: &Site, remotes: &[RemoteConfig]) -> BTreeMap<String, RemoteRun> {
    let mut out = BTreeMap::new();
    if remotes.is_empty() {
        return out;
    }
    let local = match crate::catalog::list(&cfg.archive_dir, &cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot list archives to replicate");
            return out;
        }
    };
    for rc in remotes {
        let mut ledger = Ledger::load(&cfg.state_dir);
        // Archives retention has deleted need no record; the ledger stays as small as the dir.
        ledger
            .copies
            .retain(|name, _| local.iter().any(|a| &a.name == name));
        let run = run_one(cfg, rc, &local, &mut ledger).await;
        let health = ledger.remotes.entry(rc.name.clone()).or_default();
        let now = Utc::now();
        match &run.error {
            None => health.last_success = Some(now),
            Some(e) => {
                health.last_error = Some(e.clone());
                health.last_error_at = Some(now);
            }
        }
        if let Err(e) = ledger.save(&cfg.state_dir) {
            tracing::error!(error = %e, "cannot write the replication ledger");
        }
        out.insert(rc.name.clone(), run);
    }
    out
}

async fn run_one(
    cfg: &Site,
    rc: &RemoteConfig,
    local: &[ArchiveInfo],
    ledger: &mut Ledger,
) -> RemoteRun {
    let mut run = RemoteRun::default();
    let remote = match Remote::from_config(rc) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(remote = %rc.name, error = %e, "remote unusable");
            run.error = Some(e.to_string());
            return run;
        }
    };
    let pending: Vec<&ArchiveInfo> = local
        .iter()
        .filter(|a| !ledger.has(&a.name, &rc.name))
        .filter(|a| {
            // Its bytes no longer match its sidecar: the read-back would refuse it every time
            // and hold up the archives behind it.
            let failed = a.verification == crate::catalog::VerifyState::Failed;
            if failed {
                tracing::warn!(remote = %rc.name, archive = %a.name, "not copied: it failed verification");
            }
            !failed
        })
        .collect();
    for a in pending {
        let mut attempt = 0;
        let result = loop {
            match upload_archive(&remote, a).await {
                Ok(()) => break Ok(()),
                Err(e) if attempt < rc.retries => {
                    let wait = rc.retry_delay.saturating_mul(1 << attempt.min(16));
                    tracing::warn!(remote = %rc.name, archive = %a.name, attempt = attempt + 1, error = %e, retry_in = ?wait, "upload failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(remote = %rc.name, archive = %a.name, bytes = a.size, "copied off-host and read back intact");
                ledger
                    .copies
                    .entry(a.name.clone())
                    .or_default()
                    .insert(rc.name.clone(), Utc::now());
                if let Err(e) = ledger.save(&cfg.state_dir) {
                    tracing::error!(error = %e, "cannot write the replication ledger");
                }
                run.uploaded.push(a.name.clone());
            }
            Err(e) => {
                tracing::error!(remote = %rc.name, archive = %a.name, error = %e, "upload failed; the local archive is kept until it is copied");
                // The rest would fail the same way; they are tried again after the next backup.
                run.error = Some(e.to_string());
                return run;
            }
        }
    }
    if let Some(policy) = &rc.retention {
        // Uploaded newest first: the newest this run copied is the remote's "just taken".
        let just_taken = run.uploaded.first().cloned();
        match prune(cfg, &remote, policy, just_taken).await {
            Ok(p) => run.pruned = p,
            Err(e) => {
                tracing::error!(remote = %rc.name, error = %e, "remote retention not applied");
                run.error = Some(e.to_string());
            }
        }
    }
    run
}

/// Archive, read back; then its sidecar, read back.
async fn upload_archive(remote: &Remote, a: &ArchiveInfo) -> Result<(), RemoteError> {
    let sidecar_path = {
        let mut p = a.path.as_os_str().to_owned();
        p.push(SIDECAR_SUFFIX);
        std::path::PathBuf::from(p)
    };
    let sidecar = tokio::fs::read(&sidecar_path)
        .await
        .map_err(remote.local_err(&sidecar_path))?;
    let (sha256, _) = crate::archive::sidecar::parse(&String::from_utf8_lossy(&sidecar));
    let key = remote.key(&a.name);
    let sent = remote.upload_file(&a.path, &key).await?;
    remote.check(&key, sent, &sha256).await?;
    let side_key = remote.key(&format!("{}{SIDECAR_SUFFIX}", a.name));
    let side_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&sidecar))
    };
    let side_len = sidecar.len() as u64;
    remote.put_bytes(&side_key, sidecar).await?;
    remote.check(&side_key, side_len, &side_sha).await
}

/// Applies `policy` to the archives on `remote`; returns what it deleted. `just_taken` (the
/// newest archive this run copied there) is never deleted: the ledger already counts it as off-host.
async fn prune(
    cfg: &Site,
    remote: &Remote,
    policy: &crate::retention::RetentionConfig,
    just_taken: Option<String>,
) -> Result<Vec<String>, RemoteError> {
    let listed = remote.list().await?;
    let candidates: Vec<crate::retention::Candidate> = listed
        .iter()
        .map(|a| crate::retention::Candidate {
            name: a.name.clone(),
            started: a.started,
            // Only read-back uploads are completed there (multipart objects appear whole).
            verified: true,
            size: a.size,
        })
        .collect();
    let ctx = crate::retention::Context {
        now: Utc::now(),
        tz: cfg.timezone,
        free_bytes: u64::MAX,
        just_taken,
    };
    let decisions = crate::retention::plan(policy, &candidates, &ctx).map_err(|err| {
        RemoteError::Retention {
            remote: remote.name.clone(),
            err,
        }
    })?;
    let mut deleted = Vec::new();
    for d in decisions
        .iter()
        .filter(|d| d.reason.starts_with(crate::retention::FUTURE_DATED))
    {
        tracing::warn!(remote = %remote.name, archive = %d.name, reason = %d.reason, "future-dated archive on the remote");
    }
    for d in decisions.into_iter().filter(|d| !d.keep) {
        remote.delete_archive(&d.name).await?;
        tracing::info!(remote = %remote.name, archive = %d.name, reason = %d.reason, "deleted from remote by retention");
        deleted.push(d.name);
    }
    Ok(deleted)
}
