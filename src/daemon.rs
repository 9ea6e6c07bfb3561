//! `juju-brd daemon`: the long-running service. One worker takes backups one at a time (scheduled
//! and triggered alike), a scheduler task feeds it, the API serves side by side.
//!
//! Locking: `Daemon` holds a few std `Mutex`es, each guarding a small value and never held across an
//! `.await`. `jobs` is the one that matters: a trigger checks for a running job and registers a new
//! one under the same lock, which is what makes 50 concurrent triggers produce exactly one backup.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch, Notify};

use crate::api::types::{ArchiveRecord, JobInfo, JobKind, JobState};
use crate::catalog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::schedule::CronSchedule;
use crate::snapshot::{self, BackupRequest, Progress};
use crate::state::DaemonState;

/// How long SIGTERM waits for a running backup before cancelling it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
const RECENT_JOBS: usize = 100;

pub struct Job {
    pub id: String,
    pub progress: Arc<Progress>,
    info: Mutex<JobInfo>,
    done: watch::Sender<bool>,
}

impl Job {
    pub fn info(&self) -> JobInfo {
        let mut i = self.info.lock().expect("job lock").clone();
        i.bytes_done = self.progress.bytes_done.load(Ordering::Relaxed);
        i.bytes_estimated = self.progress.bytes_total.load(Ordering::Relaxed);
        i
    }

    /// Resolves once the job has finished (succeeded or failed).
    pub async fn finished(&self) -> JobInfo {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
        self.info()
    }

    fn update(&self, f: impl FnOnce(&mut JobInfo)) {
        f(&mut self.info.lock().expect("job lock"));
    }
}

#[derive(Default)]
struct Jobs {
    current: Option<Arc<Job>>,
    recent: VecDeque<Arc<Job>>,
}

pub struct Daemon {
    config_path: PathBuf,
    cfg: RwLock<Arc<Config>>,
    jobs: Mutex<Jobs>,
    work: mpsc::UnboundedSender<Arc<Job>>,
    state: Mutex<DaemonState>,
    next_run: Mutex<Option<DateTime<Utc>>>,
    pub metrics: Metrics,
    reloaded: Notify,
    stopping: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another juju-brd daemon is running with state directory {} (lock {} is held)", .0.display(), .0.join("daemon.lock").display())]
    Locked(PathBuf),
    #[error("another juju-brd daemon answers on {}", .0.display())]
    SocketInUse(PathBuf),
    #[error("{what} {}: {err}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

impl Daemon {
    pub fn config(&self) -> Arc<Config> {
        self.cfg.read().expect("config lock").clone()
    }

    pub fn state(&self) -> DaemonState {
        self.state.lock().expect("state lock").clone()
    }

    pub fn next_run(&self) -> Option<DateTime<Utc>> {
        *self.next_run.lock().expect("next_run lock")
    }

    pub fn current_job(&self) -> Option<Arc<Job>> {
        self.jobs.lock().expect("jobs lock").current.clone()
    }

    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().expect("jobs lock");
        jobs.current
            .iter()
            .chain(jobs.recent.iter())
            .find(|j| j.id == id)
            .cloned()
    }

    /// Starts a backup unless one is queued or running, in which case that job is returned.
    /// Returns `None` while the daemon is stopping.
    pub fn trigger(&self, kind: JobKind, notes: String) -> Option<(Arc<Job>, bool)> {
        if self.stopping.load(Ordering::Relaxed) {
            return None;
        }
        let mut jobs = self.jobs.lock().expect("jobs lock");
        if let Some(j) = &jobs.current {
            return Some((j.clone(), false));
        }
        let (done, _) = watch::channel(false);
        let id = uuid::Uuid::new_v4().to_string();
        let job = Arc::new(Job {
            id: id.clone(),
            progress: Arc::new(Progress::default()),
            info: Mutex::new(JobInfo {
                id,
                kind,
                state: JobState::Queued,
                notes,
                created: Utc::now(),
                finished: None,
                bytes_done: 0,
                bytes_estimated: 0,
                archive: None,
                error: None,
            }),
            done,
        });
        jobs.current = Some(job.clone());
        self.work.send(job.clone()).ok()?;
        Some((job, true))
    }

    /// Re-reads the config file; a config that does not load is rejected and the old one kept.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let new = Config::load(&self.config_path)?;
        let old = self.config();
        if new.api.socket != old.api.socket || new.state_dir != old.state_dir {
            tracing::warn!("api.socket and state_dir changes take effect only after a restart");
        }
        *self.cfg.write().expect("config lock") = Arc::new(new);
        self.reloaded.notify_waiters();
        Ok(())
    }

    fn save_state(&self, f: impl FnOnce(&mut DaemonState)) {
        let mut s = self.state.lock().expect("state lock");
        f(&mut s);
        if let Err(e) = s.save(&self.config().state_dir) {
            tracing::error!(error = %e, "cannot save daemon state");
        }
    }

    fn status_line(&self) -> String {
        if let Some(j) = self.current_job() {
            let i = j.info();
            if i.state == JobState::Running {
                let pct = (i.bytes_done * 100)
                    .checked_div(i.bytes_estimated)
                    .unwrap_or(0);
                return format!("backing up: {}%", pct.min(99));
            }
        }
        let s = self.state();
        let last = match (s.last_attempt, s.last_success, &s.last_error) {
            (None, _, _) => "no backup yet".to_string(),
            (Some(a), Some(ok), _) if ok >= a => {
                format!("last backup ok {}", ok.format("%Y-%m-%d %H:%M UTC"))
            }
            (Some(a), _, _) => format!("last backup FAILED {}", a.format("%Y-%m-%d %H:%M UTC")),
        };
        let next = self.next_run().map_or("no schedule".into(), |n| {
            format!("next {}", n.format("%Y-%m-%d %H:%M UTC"))
        });
        format!("idle, {last}, {next}")
    }
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Takes the daemon lock in `state_dir`; held for the life of the returned file.
pub fn lock_state_dir(state_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|err| DaemonError::Io {
            what: "create state directory",
            path: state_dir.to_path_buf(),
            err,
        })?;
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| DaemonError::Io {
            what: "open",
            path: path.clone(),
            err,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| DaemonError::Locked(state_dir.to_path_buf()))
}

/// Binds the API socket: refuses if a daemon answers there, removes a stale socket file, applies
/// the configured mode.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |err| DaemonError::Io { what, path, err }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create socket directory"))?;
    }
    if path.symlink_metadata().is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io("remove stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod"))?;
    Ok(listener)
}

/// Runs until `shutdown` resolves. The caller has taken the state-dir lock and bound `listener`.
pub async fn run(
    config_path: PathBuf,
    cfg: Config,
    listener: UnixListener,
    tcp: Option<(tokio::net::TcpListener, String)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Leftovers of a crash: a half-written archive, a staging dir, a job marked running.
    for p in catalog::remove_partials(&cfg.archive_dir)? {
        tracing::warn!(path = %p.display(), "removed the leftover of an interrupted backup");
    }
    let mut state = DaemonState::load(&cfg.state_dir);
    if let Some(job) = state.running_job.take() {
        tracing::error!(job = %job, "the previous daemon died during a backup; marked failed");
        state.last_error = Some(format!(
            "backup job {job} was interrupted by a daemon crash"
        ));
        state.save(&cfg.state_dir)?;
    }
    let (work_tx, work_rx) = mpsc::unbounded_channel();
    let daemon = Arc::new(Daemon {
        config_path,
        cfg: RwLock::new(Arc::new(cfg)),
        jobs: Mutex::new(Jobs::default()),
        work: work_tx,
        state: Mutex::new(state),
        next_run: Mutex::new(None),
        metrics: Metrics::default(),
        reloaded: Notify::new(),
        stopping: AtomicBool::new(false),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let router = crate::api::server::router(daemon.clone());
    let mut servers = Vec::new();
    {
        let mut rx = stop_rx.clone();
        let app = router.clone();
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    if let Some((tcp, token)) = tcp {
        let mut rx = stop_rx.clone();
        let app = crate::api::server::with_bearer_token(router, token);
        servers.push(tokio::spawn(async move {
            axum::serve(tcp, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    let worker = tokio::spawn(worker_loop(daemon.clone(), work_rx, stop_rx.clone()));
    let scheduler = tokio::spawn(scheduler_loop(daemon.clone(), stop_rx.clone()));
    catch_up(&daemon);

    notify(&[sd_notify::NotifyState::Ready]);
    notify(&[sd_notify::NotifyState::Status(&daemon.status_line())]);
    tracing::info!(status = %daemon.status_line(), "juju-brd daemon ready");

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                notify(&[sd_notify::NotifyState::Reloading]);
                match daemon.reload() {
                    Ok(()) => tracing::info!("configuration reloaded"),
                    Err(e) => tracing::error!(error = %e, "new configuration rejected; keeping the old one"),
                }
                notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&daemon.status_line())]);
            }
            _ = &mut shutdown => break,
        }
    }

    notify(&[sd_notify::NotifyState::Stopping]);
    daemon.stopping.store(true, Ordering::Relaxed);
    tracing::info!("stopping");
    if let Some(job) = daemon.current_job() {
        tracing::info!(job = %job.id, "waiting for the running backup to finish");
        if tokio::time::timeout(SHUTDOWN_GRACE, job.finished())
            .await
            .is_err()
        {
            tracing::warn!(job = %job.id, "backup did not finish in time; cancelling it");
            job.progress.cancel.store(true, Ordering::Relaxed);
            job.finished().await;
        }
    }
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = scheduler.await;
    for s in servers {
        let _ = s.await;
    }
    Ok(())
}

/// Takes one backup at start-up if a scheduled run was due while the daemon was down.
fn catch_up(daemon: &Daemon) {
    let cfg = daemon.config();
    if !cfg.schedule.catch_up || cfg.schedule.cron.trim().is_empty() {
        return;
    }
    let Ok(sched) = CronSchedule::parse(&cfg.schedule.cron, &cfg.schedule.timezone) else {
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

async fn scheduler_loop(daemon: Arc<Daemon>, mut stop: watch::Receiver<bool>) {
    loop {
        let cfg = daemon.config();
        let sched = if cfg.schedule.cron.trim().is_empty() {
            None
        } else {
            CronSchedule::parse(&cfg.schedule.cron, &cfg.schedule.timezone).ok()
        };
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
    let (mine, why) = tokio::task::spawn_blocking(move || crate::ha::takes_scheduled_slot(&cfg))
        .await
        .unwrap_or_else(|e| (true, format!("HA check failed ({e}); backing up here")));
    if ha && mine {
        tracing::info!(reason = %why, "taking the scheduled backup");
    } else if !mine {
        tracing::info!(reason = %why, "scheduled backup left to another state-server");
    }
    mine
}

/// Resolves once the stop flag is set. (The watch guard is dropped before returning, so callers'
/// futures stay `Send`.)
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn watchdog_period() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// The single worker: runs queued jobs one at a time and pings the systemd watchdog from this loop,
/// so a wedged worker stops the pings and systemd restarts us.
async fn worker_loop(
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
    daemon.save_state(|s| {
        s.last_attempt = Some(Utc::now());
        s.running_job = Some(job.id.clone());
    });
    tracing::info!(job = %job.id, kind = ?job.info().kind, "backup started");
    let req = BackupRequest {
        notes: job.info().notes,
        environment: cfg.effective_environment(),
    };
    let (c, p) = (cfg.clone(), job.progress.clone());
    let mut handle = tokio::task::spawn_blocking(move || snapshot::take(&c, &req, &p));
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
            daemon.save_state(|s| {
                s.last_success = Some(now);
                s.last_archive = Some(name);
                s.last_error = None;
                s.running_job = None;
            });
            if let Err(e) = catalog::prune(&cfg, false) {
                tracing::warn!(error = %e, "retention not applied");
            }
        }
        Ok(Err(e)) => fail_job(daemon, &job, seconds, e.to_string()),
        Err(e) => fail_job(daemon, &job, seconds, format!("backup task panicked: {e}")),
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
    if job.info().state == JobState::Succeeded && !cfg.remotes.is_empty() {
        replicate(daemon, &cfg, tick, pinging, stop).await;
    }
}

/// Copies what has not reached each remote yet, after the job is reported done (a waiting client
/// has its archive), still inside the single worker, so it never overlaps a backup. Shutdown
/// interrupts it: the ledger records only finished copies, so the rest go after the next backup.
async fn replicate(
    daemon: &Arc<Daemon>,
    cfg: &Arc<Config>,
    tick: &mut tokio::time::Interval,
    pinging: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let c = cfg.clone();
    let mut handle = tokio::spawn(async move { crate::remote::replicate::run(&c).await });
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
        if let Err(e) = catalog::prune(cfg, false) {
            tracing::warn!(error = %e, "retention not applied");
        }
    }
}

fn fail_job(daemon: &Daemon, job: &Job, seconds: f64, error: String) {
    tracing::error!(job = %job.id, error = %error, "backup failed");
    daemon.metrics.backup_finished(false, seconds, 0, 0.0);
    job.update(|i| {
        i.state = JobState::Failed;
        i.error = Some(error.clone());
    });
    daemon.save_state(|s| {
        s.last_error = Some(error);
        s.running_job = None;
    });
}
