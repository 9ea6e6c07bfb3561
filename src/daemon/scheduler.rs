//! The scheduler task: computes the next cron slot, waits for it (or a reload), and asks the
//! worker for a backup when this node takes the slot. Catch-up after downtime is decided here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::{notify, stopped, Daemon};
use crate::api::types::JobKind;

/// Takes one backup at start-up if a scheduled run was due while the daemon was down.
fn catch_up(daemon: &Daemon) {
    let cfg = daemon.config();
    if !cfg.schedule.catch_up {
        return;
    }
    let Some(sched) = cfg.schedule.schedule() else {
        return;
    };
    let Some(last_attempt) = daemon.state().last_attempt else {
        return;
    };
    if let Some(due) = sched.last_at_or_before(Utc::now(), chrono::Duration::days(366)) {
        if due > last_attempt {
            tracing::info!(missed = %due, "a scheduled backup was missed while the daemon was down; taking it now");
            daemon.trigger(JobKind::CatchUp, String::new());
        }
    }
}

/// Plans the first slot, starts the scheduler task, and takes a missed run; returns the task and
/// the status line for READY=1. The first slot is recorded here, before the task starts: when the
/// task did it, it raced the READY=1 status, which then said "no schedule" with a cron set until
/// the next event changed the status.
pub(super) fn start(
    daemon: &Arc<Daemon>,
    stop: watch::Receiver<bool>,
) -> (tokio::task::JoinHandle<()>, String) {
    // Watching reloads from before the first plan: none is missed in between.
    let reloads = daemon.reloaded.subscribe();
    let drill_reloads = daemon.reloaded.subscribe();
    let first = plan_next(daemon);
    // Drills on `drill.cron` run in the same task: if either loop ended, the task would.
    let (d, drill_stop) = (daemon.clone(), stop.clone());
    let backups = scheduler_loop(daemon.clone(), stop, reloads, first);
    let task = tokio::spawn(async move {
        tokio::join!(
            backups,
            super::drills::drill_scheduler_loop(d, drill_stop, drill_reloads)
        );
    });
    catch_up(daemon);
    (task, daemon.status_line())
}

/// The next slot of the current config (with its jitter), recorded for the status, `/v1/status`
/// and the metrics.
fn plan_next(daemon: &Daemon) -> Option<DateTime<Utc>> {
    let cfg = daemon.config();
    let next = cfg
        .schedule
        .schedule()
        .and_then(|s| s.next_after(Utc::now()))
        .map(|n| with_jitter(n, cfg.schedule.jitter));
    *daemon.next_run.lock().expect("next_run lock") = next;
    daemon
        .metrics
        .set_next_run(next.map(|n| n.timestamp_millis() as f64 / 1000.0));
    next
}

/// Waits for each slot (`first`, planned by [`start`], then the next ones) and asks the worker for
/// a backup when this node takes it. Every new plan (after a slot, after a reload) is sent to
/// systemd's status at once, not left for the next backup to show.
async fn scheduler_loop(
    daemon: Arc<Daemon>,
    mut stop: watch::Receiver<bool>,
    mut reloads: watch::Receiver<u64>,
    first: Option<DateTime<Utc>>,
) {
    let mut planned = Some(first);
    loop {
        let next = match planned.take() {
            Some(first) => first,
            None => {
                let next = plan_next(&daemon);
                notify(&[sd_notify::NotifyState::Status(&daemon.status_line())]);
                next
            }
        };
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            (n - Utc::now()).to_std().unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if next.is_none() {
                    continue;
                }
                // The HA check may wait on the network (probe_timeout); SIGTERM does not.
                let mine = tokio::select! {
                    mine = takes_slot(&daemon) => mine,
                    _ = stopped(&mut stop) => return,
                };
                if mine {
                    match daemon.trigger(JobKind::Scheduled, String::new()) {
                        Some((_, true)) => {}
                        Some((job, false)) => {
                            daemon.metrics.skipped.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(running = %job.id, "scheduled backup skipped: a backup is already running");
                        }
                        None => return,
                    }
                }
                // Never fire twice for the same slot, even if the clock is coarse.
                if let Some(n) = next {
                    let wait = (n - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(5);
                    tokio::time::sleep(wait).await;
                }
            }
            _ = reloads.changed() => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// `slot` plus a random delay below `jitter`. The config caps `jitter` at a day; the arithmetic is
/// checked anyway, so no value can panic the scheduler (it once did, at "99999999999d").
fn with_jitter(slot: DateTime<Utc>, jitter: Duration) -> DateTime<Utc> {
    let ms = i64::try_from(jitter.as_millis()).unwrap_or(i64::MAX);
    if ms <= 0 {
        return slot;
    }
    chrono::Duration::try_milliseconds(rand::random::<i64>().rem_euclid(ms))
        .and_then(|d| slot.checked_add_signed(d))
        .unwrap_or(slot)
}

/// Whether this node takes a scheduled slot (see `ha`); logged either way when HA is configured.
async fn takes_slot(daemon: &Daemon) -> bool {
    let cfg = daemon.config();
    let ha = cfg.ha.self_address.is_some();
    let (mine, why) = tokio::task::spawn_blocking(move || {
        let engine = crate::db::from_config(&cfg.database, &cfg.files.root);
        crate::ha::takes_scheduled_slot(&cfg.ha, engine.as_deref())
    })
    .await
    .unwrap_or_else(|e| (true, format!("HA check failed ({e}); backing up here")));
    if ha && mine {
        tracing::info!(reason = %why, "taking the scheduled backup");
    } else if !mine {
        tracing::info!(reason = %why, "scheduled backup left to another state-server");
    }
    mine
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_of_any_size_never_panics() {
        let slot = Utc::now();
        for j in [0, 1, 86_400, 99_999_999_999 * 86_400, u64::MAX] {
            let t = with_jitter(slot, Duration::from_secs(j));
            assert!(t >= slot);
        }
        let t = with_jitter(slot, Duration::from_secs(60));
        assert!(t < slot + chrono::Duration::seconds(60));
    }
}
