//! The single worker: runs queued jobs one at a time (scheduled and triggered alike), then the
//! off-host copies, and pings the systemd watchdog from this loop, so a wedged worker stops the
//! pings and systemd restarts the daemon.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
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
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => run_job(&daemon, job, &mut tick, pinging, &mut stop).await,
                None => return,
            },
            _ = tick.tick() => if pinging { notify(&[sd_notify::NotifyState::Watchdog]) },
            _ = stopped(&mut stop) => return,
        }
    }
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
            let verified = outcome.verified.is_some();
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
