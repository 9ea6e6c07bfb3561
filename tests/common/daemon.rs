//! The one harness for tests that run the real `juju-brd daemon`: started as systemd would start
//! it (a private NOTIFY_SOCKET whose datagrams are collected, WATCHDOG_USEC and WATCHDOG_PID, no
//! JUJU_ENV), ready once it sends READY=1, spoken to over its Unix socket through
//! `juju_brd::api::client`, and killed when dropped, so a failing test leaves no daemon behind.
//!
//! [`Daemon::start`], [`Daemon::start_logged`] and [`Daemon::launch`] cover the usual starts;
//! [`Start`] covers the rest (another socket or log, a lower open-file limit, a daemon that must
//! refuse to start). [`Daemon::stop`] and [`Daemon::stop_within`] stop it with SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use juju_brd::api::client;

use super::{poll_until, Env, BIN};

/// How long a daemon may take to send READY=1.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long [`Daemon::stop`] waits for the exit (a running backup may finish first).
const STOP_WITHIN: Duration = Duration::from_secs(90);

/// How long [`Daemon::wait_job`] waits for a job to finish.
const JOB_WITHIN: Duration = Duration::from_secs(60);

/// How to start a daemon: its config, the API socket that config names, its log, its limit of
/// open files. Built from an env ([`Start::new`]) or from paths ([`Start::paths`]), then started
/// with [`Start::ready`] (it must come up) or [`Start::refused`] (it must not).
pub struct Start {
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    nofile: Option<u64>,
}

impl Start {
    /// The env's `config.toml`, whose API socket is `run/juju-brd.sock` (as [`config`] writes
    /// it), logging to `daemon.log` in the env's directory, with the test's own open-file limit.
    pub fn new(env: &Env) -> Start {
        Start::paths(
            &env.path("config.toml"),
            &env.path("run/juju-brd.sock"),
            &env.path("daemon.log"),
        )
    }

    /// The daemon on `config`, whose API socket is `socket`, logging to `log`.
    pub fn paths(config: &Path, socket: &Path, log: &Path) -> Start {
        Start {
            config: config.to_path_buf(),
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            nofile: None,
        }
    }

    /// The API socket the config names (see [`config_at`]): where the harness talks to it.
    pub fn socket(mut self, socket: &Path) -> Start {
        self.socket = socket.to_path_buf();
        self
    }

    /// Logs (stderr) to `log`, truncated at start so that [`Daemon::log`] holds this run only.
    /// Its notify socket is `LOG.notify`.
    pub fn log(mut self, log: &Path) -> Start {
        self.log = log.to_path_buf();
        self
    }

    /// The daemon's limit of open files, set by the shell's `ulimit -n` (soft and hard) before it
    /// execs the daemon: e.g. 1024, systemd's default soft limit.
    pub fn nofile(mut self, limit: u64) -> Start {
        self.nofile = Some(limit);
        self
    }

    /// Starts the daemon and returns once it has sent READY=1; panics with its log if it exits
    /// first or takes longer than 30 s.
    pub fn ready(self) -> Daemon {
        let mut d = self.spawn();
        let mut exited = None;
        let ready = poll_until(READY_WITHIN, || {
            exited = d.child.try_wait().unwrap();
            exited.is_some() || d.count_notes("READY=1") > 0
        });
        assert!(
            ready && exited.is_none(),
            "the daemon {} instead of sending READY=1 within {READY_WITHIN:?}; log:\n{}",
            exited.map_or("hung".to_string(), |st| format!("exited ({st})")),
            d.log()
        );
        d
    }

    /// Starts a daemon that must refuse to start and returns its log (stderr) once it has exited
    /// with a failure. Panics with the log if it exits successfully, sends READY=1, or is still
    /// running after `limit` (it is killed then).
    pub fn refused(self, limit: Duration) -> String {
        let mut d = self.spawn();
        let mut exited = None;
        let ended = poll_until(limit, || {
            exited = d.child.try_wait().unwrap();
            exited.is_some() || d.count_notes("READY=1") > 0
        });
        match exited {
            Some(st) => {
                assert!(
                    !st.success(),
                    "the daemon exited successfully ({st}) instead of refusing to start; log:\n{}",
                    d.log()
                );
                d.log()
            }
            None if ended => panic!(
                "the daemon started (sent READY=1) instead of refusing to; log:\n{}",
                d.log()
            ),
            None => panic!(
                "the daemon should have refused to start, not run: still running after \
                 {limit:?}; log:\n{}",
                d.log()
            ),
        }
    }

    /// The daemon started, its notifications collected; nothing waited for.
    fn spawn(self) -> Daemon {
        let notify_path = PathBuf::from(format!("{}.notify", self.log.display()));
        let _ = std::fs::remove_file(&notify_path);
        let dgram = UnixDatagram::bind(&notify_path).unwrap();
        dgram
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        {
            let notes = notes.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match dgram.recv(&mut buf) {
                        Ok(n) => notes
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return,
                    }
                    if Arc::strong_count(&notes) == 1 {
                        return;
                    }
                }
            });
        }
        let ulimit = self
            .nofile
            .map(|n| format!("ulimit -n {n} && "))
            .unwrap_or_default();
        // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's.
        let child = Command::new("sh")
            .args([
                "-c",
                &format!("{ulimit}WATCHDOG_PID=$$ exec \"$0\" daemon"),
                BIN,
            ])
            .env("JUJU_BRD_CONFIG", &self.config)
            .env_remove("JUJU_ENV")
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            notes,
            socket: self.socket,
            log: self.log,
        }
    }
}

pub struct Daemon {
    child: Child,
    notes: Arc<Mutex<Vec<String>>>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// The daemon on the env's `config.toml` (see [`config`]), logging to `daemon.log`.
    pub fn start(env: &Env) -> Daemon {
        Start::new(env).ready()
    }

    /// As [`Daemon::start`], logging to `log_name` in the env's directory. The log is truncated
    /// at start, so [`Daemon::log`] holds this run only.
    pub fn start_logged(env: &Env, log_name: &str) -> Daemon {
        Start::new(env).log(&env.path(log_name)).ready()
    }

    /// The daemon on `config`, whose API socket is `socket`, logging to `log`; its notify socket
    /// is `LOG.notify`. Returns once it has sent READY=1; panics with its log if it exits first
    /// or takes longer than 30 s.
    pub fn launch(config: &Path, socket: &Path, log: &Path) -> Daemon {
        Start::paths(config, socket, log).ready()
    }

    /// Waits for a notification containing `want` and returns it.
    pub fn wait_note(&self, want: &str, limit: Duration) -> String {
        let mut found = None;
        if poll_until(limit, || {
            found = self
                .notes
                .lock()
                .unwrap()
                .iter()
                .find(|n| n.contains(want))
                .cloned();
            found.is_some()
        }) {
            return found.unwrap();
        }
        panic!(
            "no `{want}` notification within {limit:?}; got {:?}\nlog:\n{}",
            self.notes.lock().unwrap(),
            self.log()
        );
    }

    pub fn count_notes(&self, want: &str) -> usize {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.contains(want))
            .count()
    }

    /// Everything the daemon has logged (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// One request over the daemon's socket, without a body.
    pub fn request(
        &self,
        rt: &tokio::runtime::Runtime,
        method: hyper::Method,
        path: &str,
    ) -> (hyper::StatusCode, hyper::body::Bytes) {
        rt.block_on(client::request(&self.socket, method, path, None))
            .unwrap()
    }

    /// One request over the daemon's socket with `body`, if any: its status and body as text,
    /// whatever the status.
    pub fn send(
        &self,
        rt: &tokio::runtime::Runtime,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (hyper::StatusCode, String) {
        let (status, body) = rt
            .block_on(client::request(&self.socket, method, path, body))
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The typed API client the CLI uses, on this daemon's socket.
    pub fn client(&self) -> client::Client {
        client::Client::new(&self.socket)
    }

    /// `/v1/status` through the typed client.
    pub fn status(&self, rt: &tokio::runtime::Runtime) -> juju_brd::api::types::StatusResponse {
        rt.block_on(self.client().status()).unwrap()
    }

    /// GET `path`, which must succeed, as JSON.
    pub fn get<T: serde::de::DeserializeOwned>(
        &self,
        rt: &tokio::runtime::Runtime,
        path: &str,
    ) -> T {
        let (status, body) = self.request(rt, hyper::Method::GET, path);
        assert!(
            status.is_success(),
            "{path}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        serde_json::from_slice(&body).unwrap()
    }

    /// GET `path`: its status and body as text, whatever the status.
    pub fn text(&self, rt: &tokio::runtime::Runtime, path: &str) -> (u16, String) {
        let (st, body) = self.request(rt, hyper::Method::GET, path);
        (st.as_u16(), String::from_utf8_lossy(&body).into_owned())
    }

    /// POST `path` without a body: its status and body as JSON (null if it is not JSON).
    pub fn post(&self, rt: &tokio::runtime::Runtime, path: &str) -> (u16, serde_json::Value) {
        let (st, body) = self.request(rt, hyper::Method::POST, path);
        (
            st.as_u16(),
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }

    /// The value of the unlabelled metric `name` in `/metrics`.
    pub fn metric(&self, rt: &tokio::runtime::Runtime, name: &str) -> f64 {
        let (_, body) = self.text(rt, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }

    /// Waits up to 60 s for job `id` to finish (succeeded or failed) and returns it.
    pub fn wait_job(&self, rt: &tokio::runtime::Runtime, id: &str) -> serde_json::Value {
        self.wait_job_within(rt, id, JOB_WITHIN)
    }

    /// As [`Daemon::wait_job`], waiting up to `limit`; panics with the job and the log after it.
    pub fn wait_job_within(
        &self,
        rt: &tokio::runtime::Runtime,
        id: &str,
        limit: Duration,
    ) -> serde_json::Value {
        let path = format!("/v1/jobs/{id}");
        let mut job = serde_json::Value::Null;
        if poll_until(limit, || {
            job = self.get(rt, &path);
            job["state"] == "succeeded" || job["state"] == "failed"
        }) {
            return job;
        }
        panic!(
            "job {id} did not finish within {limit:?}: {job}\nlog:\n{}",
            self.log()
        );
    }

    /// SIGTERM, then up to 90 s for the daemon to exit (a running backup may finish first).
    pub fn stop(mut self) -> ExitStatus {
        self.stop_within(STOP_WITHIN).0
    }

    /// SIGTERM, then up to `limit` for the daemon to exit: its exit status and how long the exit
    /// took from the signal. Panics with the log after `limit`. The daemon's log stays readable.
    pub fn stop_within(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let asked = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut status = None;
        let stopped = poll_until(limit, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        let took = asked.elapsed();
        assert!(
            stopped,
            "the daemon is still running {limit:?} after SIGTERM; log:\n{}",
            self.log()
        );
        (status.unwrap(), took)
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon test config: SQLite, the socket under the temp dir (mode 0600), no schedule;
/// `extra` (TOML tables) follows.
pub fn config(env: &Env, extra: &str) {
    config_with_api(env, "", extra);
}

/// As [`config`], with `api` (keys) added to `[api]`.
pub fn config_with_api(env: &Env, api: &str, extra: &str) {
    write_config(env, "run/juju-brd.sock", api, extra);
}

/// As [`config`], with the API socket at `socket` instead of the env's `run/juju-brd.sock`; start
/// such a daemon with [`Start::socket`].
pub fn config_at(env: &Env, socket: &Path, extra: &str) {
    write_config(env, &socket.display().to_string(), "", extra);
}

fn write_config(env: &Env, socket: &str, api: &str, extra: &str) {
    env.config(
        "",
        &format!(
            "{}\n[api]\nsocket = \"{socket}\"\nsocket_mode = \"0600\"\n{api}[schedule]\ncron = \"\"\n{extra}",
            env.sqlite_section()
        ),
    );
}

/// The `.tar.gz` archives in the env's archive directory, oldest first.
pub fn archives(env: &Env) -> Vec<PathBuf> {
    env.archive_dir_listing()
        .into_iter()
        .filter(|n| n.ends_with(".tar.gz"))
        .map(|n| env.archives().join(n))
        .collect()
}
