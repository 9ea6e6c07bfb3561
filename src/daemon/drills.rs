//! Restore drills in the daemon: scheduled by `[drill] cron`, asked for on `POST /v1/drills`,
//! run by the single worker (so never beside a backup: a backup asked for meanwhile waits for
//! the drill, and a drill asked for during a backup waits for it), reported in `/v1/status` and
//! the metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use super::{notify, stopped, Daemon, Job, RECENT_JOBS};
use crate::api::types::{DrillRecord, JobKind, JobState};
use crate::config::Config;

/// Which archive to drill: `wanted` by name, else the newest verified one.
fn pick_archive(cfg: &Config, wanted: &str) -> Result<std::path::PathBuf, String> {
    let archives = crate::catalog::list(&cfg.archive_dir, &cfg.state_dir)
        .map_err(|e| format!("cannot list {}: {e}", cfg.archive_dir.display()))?;
    if !wanted.is_empty() {
        return archives
            .into_iter()
            .find(|a| a.name == wanted)
            .map(|a| a.path)
            .ok_or_else(|| {
                format!(
                    "no archive named `{wanted}` in {}",
                    cfg.archive_dir.display()
                )
            });
    }
    archives
        .into_iter()
        .find(|a| a.verification == crate::catalog::VerifyState::Verified)
        .map(|a| a.path)
        .ok_or_else(|| "no verified archive to drill".to_string())
}

/// The whole drill, on the blocking pool: which archive, then [`crate::drill::run`]. In the
/// daemon (`background`) the scratch root is removed on a thread of its own after the report.
pub fn drill_now(
    cfg: &Config,
    wanted: &str,
    background: bool,
) -> Result<crate::drill::Report, String> {
    let archive = pick_archive(cfg, wanted)?;
    let mut settings = cfg.drill_settings(archive)?;
    settings.clean_up_in_background = background;
    crate::drill::run(&settings)
}

/// The record the state and status keep of a finished drill.
pub fn record(result: &Result<crate::drill::Report, String>) -> DrillRecord {
    match result {
        Ok(r) => DrillRecord {
            at: Utc::now(),
            passed: r.passed,
            archive: Some(r.archive.clone()),
            restore_seconds: Some(r.restore_seconds),
            error: (!r.passed).then(|| {
                r.checks
                    .iter()
                    .filter(|c| c.failed())
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
            report: Some(r.clone()),
        },
        Err(e) => DrillRecord {
            at: Utc::now(),
            passed: false,
            archive: None,
            restore_seconds: None,
            error: Some(e.clone()),
            report: None,
        },
    }
}

/// Runs a drill job (the worker calls this for drill kinds), pinging the watchdog meanwhile.
pub(super) async fn run_drill(
    daemon: &Arc<Daemon>,
    job: Arc<Job>,
    tick: &mut tokio::time::Interval,
    pinging: bool,
) {
    let cfg = daemon.config();
    let started = Instant::now();
    job.update(|i| i.state = JobState::Running);
    let wanted = job.info().notes;
    tracing::info!(job = %job.id, archive = %if wanted.is_empty() { "newest verified" } else { wanted.as_str() }, "restore drill started");
    let c = cfg.clone();
    let mut handle = tokio::task::spawn_blocking(move || drill_now(&c, &wanted, true));
    let result = loop {
        tokio::select! {
            r = &mut handle => break r.unwrap_or_else(|e| Err(format!("the drill panicked: {e}"))),
            _ = tick.tick() => if pinging { notify(&[sd_notify::NotifyState::Watchdog]) },
        }
    };
    let rec = record(&result);
    let seconds = rec
        .restore_seconds
        .unwrap_or_else(|| started.elapsed().as_secs_f64());
    daemon.metrics.drill_finished(
        rec.passed,
        seconds,
        Utc::now().timestamp_millis() as f64 / 1000.0,
    );
    match &result {
        Ok(r) if r.passed => {
            tracing::info!(job = %job.id, archive = %r.archive, restore_seconds = r.restore_seconds, "restore drill passed")
        }
        _ => {
            tracing::error!(job = %job.id, error = %rec.error.clone().unwrap_or_default(), "restore drill FAILED")
        }
    }
    job.update(|i| {
        i.state = if rec.passed {
            JobState::Succeeded
        } else {
            JobState::Failed
        };
        i.error = rec.error.clone();
        i.drill = rec.report.clone();
        i.finished = Some(Utc::now());
    });
    let passed_at = rec.passed.then_some(rec.at);
    daemon
        .save_state(|s| {
            s.last_drill = Some(rec);
            if passed_at.is_some() {
                s.last_drill_success = passed_at;
            }
        })
        .await;
    {
        let mut jobs = daemon.jobs.lock().expect("jobs lock");
        jobs.drill = None;
        jobs.recent.push_front(job.clone());
        jobs.recent.truncate(RECENT_JOBS);
    }
    let _ = job.done.send(true);
}

/// Queues a drill at each `[drill] cron` time (read in `schedule.timezone`).
pub(super) async fn drill_scheduler_loop(
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
    mut reloads: watch::Receiver<u64>,
) {
    loop {
        let cfg = daemon.config();
        let next = cfg
            .drill
            .cron
            .in_zone(cfg.schedule.timezone)
            .and_then(|s| s.next_after(Utc::now()));
        *daemon.next_drill.lock().expect("next_drill lock") = next;
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            (n - Utc::now()).to_std().unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                let Some(n) = next else { continue };
                match daemon.trigger(JobKind::ScheduledDrill, String::new()) {
                    Some((_, true)) => {}
                    Some((job, false)) => tracing::warn!(running = %job.id, "scheduled drill skipped: a drill is already queued or running"),
                    None => return,
                }
                // Never fire twice for the same slot.
                let wait = (n - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(5);
                tokio::time::sleep(wait).await;
            }
            r = reloads.changed() => if r.is_err() { return },
            _ = stopped(&mut stop) => return,
        }
    }
}
