//! The single worker: runs queued jobs one at a time (scheduled and triggered alike), then the
//! off-host copies, scrubs every `scrub.interval` (see [`crate::scrub`]), and pings the systemd
//! watchdog from this loop, so a wedged worker stops the pings and systemd restarts the daemon.
//! A scrub and a backup never run at once: a backup asked for during a scrub runs between two
//! archives of it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use super::{notify, stopped, Daemon, Job, RECENT_JOBS};
use crate::api::types::{ArchiveRecord, JobState};
use crate::config::Config;
use crate::snapshot::{self, BackupRequest};

fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// The single worker: runs queued jobs one at a time and pings the systemd watchdog from this loop,
/// so a wedged worker stops the pings and systemd restarts us.
pub(super) async fn worker_loop(
    daemon: Arc<Daemon>,
    mut jobs: mpsc::UnboundedReceiver<Arc<Job>>,
    mut stop: watch::Receiver<bool>,
) {
    let period = watchdog_period();
    let pinging = period.is_some();
    let mut tick = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    let started = Utc::now();
    let mut reloads = daemon.reloaded.subscribe();
    if let Some(t) = daemon.state().last_scrub_success {
        daemon
            .metrics
            .set_scrub_last_success(t.timestamp_millis() as f64 / 1000.0);
    }
    loop {
        let due = next_scrub(&daemon, started);
        let until_due = due.map(|d| (d - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) if job.info().kind.is_drill() => {
                    super::drills::run_drill(&daemon, job, &mut tick, pinging).await
                }
                Some(job) => run_job(&daemon, job, &mut tick, pinging, &mut stop).await,
                None => return,
            },
            _ = tick.tick() => if pinging { notify(&[sd_notify::NotifyState::Watchdog]) },
            _ = sleep_or_never(until_due) => {
                scrub(&daemon, &mut jobs, &mut tick, pinging, &mut stop).await;
            }
            // A new scrub.interval takes effect at once.
            _ = reloads.changed() => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// When the next scrub is due: one interval after the last (or after the daemon started), and
/// records it for `/v1/status`. `None` while scrubbing is off.
fn next_scrub(daemon: &Daemon, started: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cfg = daemon.config();
    let due = cfg.scrub.enabled().then_some(()).and_then(|()| {
        let anchor = daemon.state().last_scrub.unwrap_or(started);
        anchor.checked_add_signed(chrono::Duration::from_std(cfg.scrub.interval).ok()?)
    });
    *daemon.next_scrub.lock().expect("next_scrub lock") = due;
    due
}

async fn sleep_or_never(wait: Option<Duration>) {
    match wait {
        Some(w) => tokio::time::sleep(w).await,
        None => std::future::pending().await,
    }
}

/// Awaits `work` while pinging the watchdog; `None` if the daemon is stopping first.
async fn while_pinging<F: Future>(
    work: F,
    tick: &mut tokio::time::Interval,
    pinging: bool,
    stop: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return Some(r),
            _ = tick.tick() => if pinging { notify(&[sd_notify::NotifyState::Watchdog]) },
            _ = stopped(stop) => return None,
        }
    }
}

/// Runs the backups asked for meanwhile, so a scrub never keeps one waiting longer than one
/// archive's read. False once the daemon is stopping.
async fn run_queued(
    daemon: &Arc<Daemon>,
    jobs: &mut mpsc::UnboundedReceiver<Arc<Job>>,
    tick: &mut tokio::time::Interval,
    pinging: bool,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    while let Ok(job) = jobs.try_recv() {
        if job.info().kind.is_drill() {
            super::drills::run_drill(daemon, job, tick, pinging).await;
        } else {
            run_job(daemon, job, tick, pinging, stop).await;
        }
    }
    !*stop.borrow()
}

/// One scrub: every local archive read again completely, then every copy on each remote read
/// back (with `scrub.remotes`). Damaged local archives are marked failed in the verification
/// cache (retention stops counting them as the newest verified), damaged remote copies are
/// struck from the ledger (copied again); the outcome goes to the state, metrics and log.
async fn scrub(
    daemon: &Arc<Daemon>,
    jobs: &mut mpsc::UnboundedReceiver<Arc<Job>>,
    tick: &mut tokio::time::Interval,
    pinging: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let cfg = daemon.config();
    tracing::info!("scrub started: reading every archive again");
    let c = cfg.clone();
    let listed =
        tokio::task::spawn_blocking(move || crate::catalog::list(&c.archive_dir, &c.state_dir));
    let local = match while_pinging(listed, tick, pinging, stop).await {
        None => return,
        Some(Ok(Ok(l))) => l,
        Some(Ok(Err(e))) => {
            return scrub_done(
                daemon,
                0,
                Vec::new(),
                Some(format!("cannot list archives: {e}")),
            )
            .await
        }
        Some(Err(e)) => {
            return scrub_done(
                daemon,
                0,
                Vec::new(),
                Some(format!("listing panicked: {e}")),
            )
            .await
        }
    };
    let (mut sound, mut damaged, mut error) = (0usize, Vec::new(), None::<String>);
    for a in &local {
        if !run_queued(daemon, jobs, tick, pinging, stop).await {
            return;
        }
        let (c, archive) = (cfg.clone(), a.clone());
        let check = tokio::task::spawn_blocking(move || {
            crate::scrub::check_local(&c.state_dir, &c.encryption, &archive)
        });
        match while_pinging(check, tick, pinging, stop).await {
            None => return,
            Some(Ok(crate::scrub::LocalCheck::Sound)) => sound += 1,
            Some(Ok(crate::scrub::LocalCheck::Damaged(why))) => {
                tracing::error!(archive = %a.name, error = %why, "scrub: the archive is damaged; marked failed, retention no longer counts it as verified");
                damaged.push(a.name.clone());
            }
            Some(Ok(crate::scrub::LocalCheck::Gone)) => {}
            Some(Err(e)) => {
                error.get_or_insert(format!("reading {} panicked: {e}", a.name));
            }
        }
    }
    if cfg.scrub.remotes {
        for rc in &cfg.remotes {
            let listed = crate::scrub::RemoteScrub::list(rc, &local);
            let rs = match while_pinging(listed, tick, pinging, stop).await {
                None => return,
                Some(Ok(rs)) => rs,
                Some(Err(e)) => {
                    tracing::error!(remote = %rc.name, error = %e, "scrub: cannot list the remote");
                    error.get_or_insert(e);
                    continue;
                }
            };
            let mut struck = Vec::new();
            for (i, name) in rs.names().iter().enumerate() {
                if !run_queued(daemon, jobs, tick, pinging, stop).await {
                    return;
                }
                match while_pinging(rs.check(i), tick, pinging, stop).await {
                    None => return,
                    Some(crate::scrub::RemoteCheck::Sound) => sound += 1,
                    Some(crate::scrub::RemoteCheck::Damaged(why)) => {
                        tracing::error!(remote = %rc.name, archive = %name, error = %why, "scrub: the remote copy is damaged; it will be copied again");
                        damaged.push(format!("{name} on remote {}", rc.name));
                        struck.push(name.clone());
                    }
                    Some(crate::scrub::RemoteCheck::Unreachable(e)) => {
                        tracing::error!(remote = %rc.name, error = %e, "scrub: cannot read the remote");
                        error.get_or_insert(e);
                        break;
                    }
                }
            }
            if !struck.is_empty() {
                let (dir, remote) = (cfg.state_dir.clone(), rc.name.clone());
                let strike = tokio::task::spawn_blocking(move || {
                    crate::scrub::strike_from_ledger(&dir, &remote, &struck)
                });
                if while_pinging(strike, tick, pinging, stop).await.is_none() {
                    return;
                }
            }
        }
    }
    scrub_done(daemon, sound, damaged, error).await;
}

async fn scrub_done(daemon: &Daemon, sound: usize, damaged: Vec<String>, error: Option<String>) {
    let now = Utc::now();
    let clean = damaged.is_empty() && error.is_none();
    daemon.metrics.scrub_finished(
        damaged.len() as u64,
        clean.then(|| now.timestamp_millis() as f64 / 1000.0),
    );
    if clean {
        tracing::info!(sound, "scrub finished: every archive and copy is sound");
    } else {
        tracing::error!(sound, damaged = ?damaged, error = ?error, "scrub finished with problems");
    }
    daemon
        .save_state(|s| {
            s.last_scrub = Some(now);
            if clean {
                s.last_scrub_success = Some(now);
            }
            s.scrub_damaged = damaged;
            s.scrub_error = error;
        })
        .await;
    notify(&[sd_notify::NotifyState::Status(&daemon.status_line())]);
}

async fn run_job(
    daemon: &Arc<Daemon>,
    job: Arc<Job>,
    tick: &mut tokio::time::Interval,
    pinging: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let cfg = daemon.config();
    let started = Instant::now();
    job.update(|i| i.state = JobState::Running);
    daemon.metrics.attempts.fetch_add(1, Ordering::Relaxed);
    daemon
        .save_state(|s| {
            s.last_attempt = Some(Utc::now());
            s.running_job = Some(job.id.clone());
        })
        .await;
    tracing::info!(job = %job.id, kind = ?job.info().kind, "backup started");
    let req = BackupRequest {
        notes: job.info().notes,
        environment: cfg.effective_environment(),
    };
    let (c, p) = (cfg.clone(), job.progress.clone());
    let mut handle =
        tokio::task::spawn_blocking(move || snapshot::take(&c.backup_settings(), &req, &p));
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            r = &mut handle => break r,
            _ = tick.tick() => if pinging { notify(&[sd_notify::NotifyState::Watchdog]) },
            _ = status_tick.tick() => notify(&[sd_notify::NotifyState::Status(&daemon.status_line())]),
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let now = Utc::now();
    match result {
        Ok(Ok(outcome)) => {
            let verified = outcome.verified;
            daemon.metrics.backup_finished(
                true,
                seconds,
                outcome.archive.size,
                now.timestamp_millis() as f64 / 1000.0,
            );
            let name = outcome.name.to_string();
            tracing::info!(job = %job.id, archive = %outcome.archive.path.display(), bytes = outcome.archive.size, seconds, "backup complete");
            job.update(|i| {
                i.state = JobState::Succeeded;
                i.archive = Some(ArchiveRecord {
                    name: name.clone(),
                    path: outcome.archive.path.display().to_string(),
                    size: outcome.archive.size,
                    sha256: outcome.archive.sha256.clone(),
                    verified,
                });
            });
            daemon
                .save_state(|s| {
                    s.last_success = Some(now);
                    s.last_archive = Some(name.clone());
                    s.last_error = None;
                    s.running_job = None;
                })
                .await;
            prune(daemon, Some(name)).await;
        }
        Ok(Err(e)) => fail_job(daemon, &job, seconds, e.to_string()).await,
        Err(e) => fail_job(daemon, &job, seconds, format!("backup task panicked: {e}")).await,
    }
    job.update(|i| i.finished = Some(Utc::now()));
    {
        let mut jobs = daemon.jobs.lock().expect("jobs lock");
        jobs.current = None;
        jobs.recent.push_front(job.clone());
        jobs.recent.truncate(RECENT_JOBS);
    }
    let _ = job.done.send(true);
    notify(&[sd_notify::NotifyState::Status(&daemon.status_line())]);
    let info = job.info();
    if info.state == JobState::Succeeded && !cfg.remotes.is_empty() {
        let just_taken = info.archive.map(|a| a.name);
        replicate(daemon, &cfg, just_taken, tick, pinging, stop).await;
    }
}

/// Copies what has not reached each remote yet, after the job is reported done (a waiting client
/// has its archive), still inside the single worker, so it never overlaps a backup. Shutdown
/// interrupts it: the ledger records only finished copies, so the rest go after the next backup.
async fn replicate(
    daemon: &Arc<Daemon>,
    cfg: &Arc<Config>,
    just_taken: Option<String>,
    tick: &mut tokio::time::Interval,
    pinging: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let c = cfg.clone();
    let mut handle =
        tokio::spawn(async move { crate::remote::replicate::run(&c.site(), &c.remotes).await });
    let runs = loop {
        tokio::select! {
            r = &mut handle => break r,
            _ = tick.tick() => if pinging { notify(&[sd_notify::NotifyState::Watchdog]) },
            _ = stopped(stop) => {
                handle.abort();
                tracing::warn!("stopping: off-host copies interrupted; they resume after the next backup");
                return;
            }
        }
    };
    let runs = match runs {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "replication task failed");
            return;
        }
    };
    let mut uploaded = false;
    for (remote, run) in &runs {
        if run.error.is_some() {
            daemon.metrics.remote_failed(remote);
        }
        uploaded |= !run.uploaded.is_empty();
    }
    // Archives that were pinned only because they were not off-host yet may go now.
    if uploaded {
        prune(daemon, just_taken).await;
    }
}

/// Retention after a backup or a copy (never deleting the archive just taken); a failure is
/// logged, never fails the job.
async fn prune(daemon: &Daemon, just_taken: Option<String>) {
    if let Err(e) = daemon.prune(false, just_taken).await {
        tracing::warn!(error = %e, "retention not applied");
    }
}

async fn fail_job(daemon: &Daemon, job: &Job, seconds: f64, error: String) {
    tracing::error!(job = %job.id, error = %error, "backup failed");
    daemon.metrics.backup_finished(false, seconds, 0, 0.0);
    job.update(|i| {
        i.state = JobState::Failed;
        i.error = Some(error.clone());
    });
    daemon
        .save_state(|s| {
            s.last_error = Some(error);
            s.running_job = None;
        })
        .await;
}
