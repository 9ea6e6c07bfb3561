//! `backup` and `prune`: through the running daemon, or in this process holding the state lock.

use super::*;

/// Takes the state lock for work that must not run beside the daemon, or says that the daemon
/// holds it (`None`): the caller then goes through the daemon instead.
pub(super) fn lock_or_daemon(cfg: &Config, what: &str) -> Result<Option<crate::state::StateLock>> {
    match crate::state::lock(&cfg.state_dir) {
        Ok(lock) => {
            tracing::info!(state_dir = %cfg.state_dir.display(), "no daemon holds the state lock; {what} in this process");
            Ok(Some(lock))
        }
        Err(crate::state::StateError::Locked(_)) => {
            eprintln!("juju-brd: the daemon is running (it holds the state lock); asking it for the {what} instead");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) fn backup_offline(cfg: &Config, notes: String) -> Result<ExitCode> {
    crate::archive::metadata::check_notes(&notes).map_err(anyhow::Error::msg)?;
    let Some(_lock) = lock_or_daemon(cfg, "backup")? else {
        return backup_via_daemon(cfg, notes);
    };
    let progress = Arc::new(Progress::default());
    let req = BackupRequest {
        notes,
        environment: cfg.effective_environment(),
    };
    let outcome = snapshot::take(&cfg.backup_settings(), &req, &progress)?;
    tracing::info!(
        archive = %outcome.archive.path.display(),
        bytes = outcome.archive.size,
        "backup complete"
    );
    if !cfg.remotes.is_empty() {
        let runs = runtime()?.block_on(crate::remote::replicate::run(&cfg.site(), &cfg.remotes));
        for (remote, run) in runs {
            match run.error {
                None => {
                    tracing::info!(remote = %remote, copied = run.uploaded.len(), "off-host copies up to date")
                }
                Some(e) => eprintln!(
                    "juju-brd: warning: not every archive reached remote `{remote}` ({e}); \
                     local retention keeps them until they do"
                ),
            }
        }
    }
    println!("{}", outcome.archive.path.display());
    Ok(ExitCode::SUCCESS)
}

pub(super) fn backup_via_daemon(cfg: &Config, notes: String) -> Result<ExitCode> {
    crate::archive::metadata::check_notes(&notes).map_err(anyhow::Error::msg)?;
    use crate::api::types::{JobState, TriggerRequest};
    let client = crate::api::client::Client::new(&cfg.api.socket);
    let resp = runtime()?.block_on(client.trigger(&TriggerRequest { notes }, true))?;
    if !resp.created {
        eprintln!(
            "a backup was already running (job {}); waited for it",
            resp.job.id
        );
    }
    match (resp.job.state, resp.job.archive) {
        (JobState::Succeeded, Some(a)) => {
            println!("{}", a.path);
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!(
            "backup failed: {}",
            resp.job.error.unwrap_or_else(|| "unknown error".into())
        ),
    }
}

pub(super) fn prune(cfg: &Config, dry_run: bool) -> Result<ExitCode> {
    let decisions: Vec<(String, bool, String)> = match lock_or_daemon(cfg, "prune")? {
        Some(_lock) => catalog::prune(&cfg.site(), dry_run, None)?
            .into_iter()
            .map(|d| (d.name, d.keep, d.reason))
            .collect(),
        None => {
            let client = crate::api::client::Client::new(&cfg.api.socket);
            runtime()?
                .block_on(client.prune(dry_run))?
                .decisions
                .into_iter()
                .map(|d| (d.name, d.keep, d.reason))
                .collect()
        }
    };
    for (name, keep, reason) in &decisions {
        let verb = match (keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "would delete",
            (false, false) => "deleted",
        };
        println!("{verb:<13} {name}  ({reason})");
    }
    Ok(ExitCode::SUCCESS)
}

/// `drill [ARCHIVE]`: in this process holding the state lock, or through the running daemon
/// (which runs it between backups). Exit 0 when the drill passed, 1 when it failed.
pub(super) fn drill(cfg: &Config, archive: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let report = match lock_or_daemon(cfg, "drill")? {
        Some(_lock) => {
            let result = match &archive {
                Some(path) => cfg
                    .drill_settings(path.clone())
                    .and_then(|s| crate::drill::run(&s)),
                None => crate::daemon::drills::drill_now(cfg, "", false),
            };
            result.map_err(|e| anyhow::anyhow!("drill failed: {e}"))?
        }
        None => {
            let name = match &archive {
                None => None,
                Some(p) => {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    anyhow::ensure!(
                        p.parent()
                            .is_none_or(|d| d.as_os_str().is_empty() || d == cfg.archive_dir),
                        "the daemon drills archives in {} only; give the archive's name",
                        cfg.archive_dir.display()
                    );
                    Some(name.to_string())
                }
            };
            let client = crate::api::client::Client::new(&cfg.api.socket);
            let resp = runtime()?
                .block_on(client.drill(&crate::api::types::DrillRequest { archive: name }, true))?;
            if !resp.created {
                eprintln!(
                    "a drill was already queued or running (job {}); waited for it",
                    resp.job.id
                );
            }
            match resp.job.drill {
                Some(r) => r,
                None => anyhow::bail!(
                    "drill failed: {}",
                    resp.job.error.unwrap_or_else(|| "unknown error".into())
                ),
            }
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::drill::render(&report));
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
