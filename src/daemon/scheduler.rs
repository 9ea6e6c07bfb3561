//! The scheduler task: computes the next cron slot, waits for it (or a reload), and asks the
//! worker for a backup when this node takes the slot. Catch-up after downtime is decided here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::{stopped, Daemon};
use crate::api::types::JobKind;

/// Takes one backup at start-up if a scheduled run was due while the daemon was down.
pub(super) fn catch_up(daemon: &Daemon) {
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

pub(super) async fn scheduler_loop(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    loop {
        let cfg = daemon.config();
        let sched = cfg.schedule.schedule();
        let next = sched.and_then(|s| s.next_after(Utc::now())).map(|n| {
            let jitter = cfg.schedule.jitter.as_millis() as i64;
            if jitter > 0 {
                n + chrono::Duration::milliseconds(rand::random::<i64>().rem_euclid(jitter))
            } else {
                n
            }
        });
        *daemon.next_run.lock().expect("next_run lock") = next;
        daemon
            .metrics
            .set_next_run(next.map(|n| n.timestamp_millis() as f64 / 1000.0));
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            (n - Utc::now()).to_std().unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                if next.is_none() {
                    continue;
                }
                if takes_slot(&daemon).await {
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
            _ = daemon.reloaded.notified() => {}
            _ = stopped(&mut stop) => return,
        }
    }
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
