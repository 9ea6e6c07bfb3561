//! Prometheus metrics, rendered in the classic text exposition format (0.0.4).
//!
//! Rendered here rather than with `prometheus-client`, which emits OpenMetrics: its counter families
//! (`# TYPE x counter` with samples `x_total`) and `# EOF` trip `promtool check metrics`, which is what
//! operators lint scrapes with. The format is a dozen lines of well-specified text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the backup duration histogram.
const BUCKETS: [f64; 10] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0, 7200.0,
];

pub struct Metrics {
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    pub skipped: AtomicU64,
    /// f64 seconds stored as bits.
    last_success: AtomicU64,
    last_size: AtomicU64,
    next_run: AtomicU64,
    duration: Mutex<Histogram>,
    /// Failed replication runs per remote name.
    remote_failures: Mutex<std::collections::BTreeMap<String, u64>>,
    /// API connections on the Unix socket and on the TCP listener.
    pub unix_api: std::sync::Arc<ListenerStats>,
    pub tcp_api: std::sync::Arc<ListenerStats>,
    /// Scrub runs finished, and archives or remote copies they found damaged.
    pub scrub_runs: AtomicU64,
    pub scrub_failures: AtomicU64,
    /// f64 seconds stored as bits: the last scrub that found everything sound.
    scrub_last_success: AtomicU64,
    /// Restore drills: failed ones, and (f64 bits) the last passed one's time and duration.
    pub drill_failures: AtomicU64,
    drill_last_success: AtomicU64,
    drill_duration: AtomicU64,
}

/// Connections of one API listener.
pub struct ListenerStats {
    /// The `listener` label: `unix` or `tcp`.
    pub name: &'static str,
    /// Open now.
    pub open: AtomicU64,
    /// Closed because of the listener's connection limit: the idlest to make room for a new one,
    /// or a new one when every connection was busy.
    pub rejected: AtomicU64,
}

impl ListenerStats {
    fn new(name: &'static str) -> std::sync::Arc<ListenerStats> {
        std::sync::Arc::new(ListenerStats {
            name,
            open: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            attempts: AtomicU64::default(),
            failures: AtomicU64::default(),
            skipped: AtomicU64::default(),
            last_success: AtomicU64::default(),
            last_size: AtomicU64::default(),
            next_run: AtomicU64::default(),
            duration: Mutex::default(),
            remote_failures: Mutex::default(),
            unix_api: ListenerStats::new("unix"),
            tcp_api: ListenerStats::new("tcp"),
            scrub_runs: AtomicU64::default(),
            scrub_failures: AtomicU64::default(),
            scrub_last_success: AtomicU64::default(),
            drill_failures: AtomicU64::default(),
            drill_last_success: AtomicU64::default(),
            drill_duration: AtomicU64::default(),
        }
    }
}

/// Per remote, what `render` shows besides the failure counter.
pub struct RemoteGauge<'a> {
    pub name: &'a str,
    pub last_success_unix: f64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Metrics {
    pub fn backup_finished(&self, ok: bool, seconds: f64, size: u64, now_unix: f64) {
        if ok {
            self.last_success
                .store(now_unix.to_bits(), Ordering::Relaxed);
            self.last_size.store(size, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut h = self.duration.lock().expect("metrics lock");
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The last success and its archive's size as remembered from before a restart.
    pub fn seed_last_success(&self, unix: f64, size: u64) {
        self.last_success.store(unix.to_bits(), Ordering::Relaxed);
        self.last_size.store(size, Ordering::Relaxed);
    }

    pub fn remote_failed(&self, remote: &str) {
        *self
            .remote_failures
            .lock()
            .expect("metrics lock")
            .entry(remote.to_string())
            .or_default() += 1;
    }

    pub fn remote_failures(&self, remote: &str) -> u64 {
        self.remote_failures
            .lock()
            .expect("metrics lock")
            .get(remote)
            .copied()
            .unwrap_or(0)
    }

    /// A scrub finished, finding `damaged` archives or copies; `sound_at` is set when it found
    /// everything sound (and could read everything).
    pub fn scrub_finished(&self, damaged: u64, sound_at: Option<f64>) {
        self.scrub_runs.fetch_add(1, Ordering::Relaxed);
        self.scrub_failures.fetch_add(damaged, Ordering::Relaxed);
        if let Some(t) = sound_at {
            self.set_scrub_last_success(t);
        }
    }

    /// At start-up, from the state the daemon remembers.
    pub fn set_scrub_last_success(&self, unix: f64) {
        self.scrub_last_success
            .store(unix.to_bits(), Ordering::Relaxed);
    }

    /// A drill finished: `passed` at `now_unix`, its restore taking `seconds`.
    pub fn drill_finished(&self, passed: bool, seconds: f64, now_unix: f64) {
        self.drill_duration
            .store(seconds.to_bits(), Ordering::Relaxed);
        if passed {
            self.set_drill_last_success(now_unix);
        } else {
            self.drill_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// From the daemon's state at start-up, so an alert on drill age does not fire on a restart.
    pub fn set_drill_last_success(&self, unix: f64) {
        self.drill_last_success
            .store(unix.to_bits(), Ordering::Relaxed);
    }

    pub fn set_next_run(&self, unix: Option<f64>) {
        self.next_run
            .store(unix.unwrap_or(0.0).to_bits(), Ordering::Relaxed);
    }

    pub fn render(&self, archives: usize, free_bytes: u64, remotes: &[RemoteGauge<'_>]) -> String {
        let mut o = String::new();
        let f = |a: &AtomicU64| f64::from_bits(a.load(Ordering::Relaxed));
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "juju_brd_backup_attempts_total",
            "counter",
            "Backups started.",
            self.attempts.load(Ordering::Relaxed).to_string(),
        );
        one(
            "juju_brd_backup_failures_total",
            "counter",
            "Backups that failed.",
            self.failures.load(Ordering::Relaxed).to_string(),
        );
        one(
            "juju_brd_schedule_skipped_total",
            "counter",
            "Scheduled runs skipped because a backup was running.",
            self.skipped.load(Ordering::Relaxed).to_string(),
        );
        one(
            "juju_brd_backup_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful backup (0 if none).",
            f(&self.last_success).to_string(),
        );
        one(
            "juju_brd_backup_archive_size_bytes",
            "gauge",
            "Size of the last successful archive.",
            self.last_size.load(Ordering::Relaxed).to_string(),
        );
        one(
            "juju_brd_archives",
            "gauge",
            "Archives in the archive directory.",
            archives.to_string(),
        );
        one(
            "juju_brd_next_run_timestamp_seconds",
            "gauge",
            "Unix time of the next scheduled backup (0 if none).",
            f(&self.next_run).to_string(),
        );
        one(
            "juju_brd_free_space_bytes",
            "gauge",
            "Free space in the archive directory.",
            free_bytes.to_string(),
        );
        one(
            "juju_brd_scrub_runs_total",
            "counter",
            "Scrubs (every archive read again) finished.",
            self.scrub_runs.load(Ordering::Relaxed).to_string(),
        );
        one(
            "juju_brd_scrub_failures_total",
            "counter",
            "Archives and remote copies that scrubs found damaged or missing.",
            self.scrub_failures.load(Ordering::Relaxed).to_string(),
        );
        one(
            "juju_brd_scrub_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last scrub that found every archive and copy sound (0 if none).",
            f(&self.scrub_last_success).to_string(),
        );
        one(
            "juju_brd_drill_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last restore drill that passed (0 if none).",
            f(&self.drill_last_success).to_string(),
        );
        one(
            "juju_brd_drill_duration_seconds",
            "gauge",
            "Time the last restore drill took to restore its archive (the RTO to expect).",
            f(&self.drill_duration).to_string(),
        );
        one(
            "juju_brd_drill_failures_total",
            "counter",
            "Restore drills that failed.",
            self.drill_failures.load(Ordering::Relaxed).to_string(),
        );
        if !remotes.is_empty() {
            let name = "juju_brd_remote_upload_failures_total";
            let _ = writeln!(
                o,
                "# HELP {name} Replication runs to a remote that failed after their retries.\n# TYPE {name} counter"
            );
            for r in remotes {
                let _ = writeln!(
                    o,
                    "{name}{{remote=\"{}\"}} {}",
                    r.name,
                    self.remote_failures(r.name)
                );
            }
            let name = "juju_brd_remote_last_success_timestamp_seconds";
            let _ = writeln!(
                o,
                "# HELP {name} Unix time of the last replication run to a remote that copied everything (0 if none).\n# TYPE {name} gauge"
            );
            for r in remotes {
                let _ = writeln!(o, "{name}{{remote=\"{}\"}} {}", r.name, r.last_success_unix);
            }
        }
        for (name, kind, help, value) in [
            (
                "juju_brd_api_connections",
                "gauge",
                "Open API connections, per listener.",
                (|l: &ListenerStats| l.open.load(Ordering::Relaxed)) as fn(&ListenerStats) -> u64,
            ),
            (
                "juju_brd_api_connections_rejected_total",
                "counter",
                "API connections closed by the listener's limit: idle ones closed to make room, or new ones when all were busy.",
                |l: &ListenerStats| l.rejected.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in [&self.unix_api, &self.tcp_api] {
                let _ = writeln!(o, "{name}{{listener=\"{}\"}} {}", l.name, value(l));
            }
        }
        let h = self.duration.lock().expect("metrics lock");
        let name = "juju_brd_backup_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Wall time of backups.\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(
            o,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            h.count, h.sum, h.count
        );
        o
    }
}
