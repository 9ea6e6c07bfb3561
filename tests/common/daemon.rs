//! The one harness for tests that run the real `juju-brd daemon`: started as systemd would start
//! it (a private NOTIFY_SOCKET whose datagrams are collected, WATCHDOG_USEC and WATCHDOG_PID),
//! ready once it sends READY=1, spoken to over its Unix socket through `juju_brd::api::client`,
//! and killed when dropped, so a failing test leaves no daemon behind.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use juju_brd::api::client;

use super::{poll_until, wait_until, Env, BIN};

/// How long a daemon may take to send READY=1.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Daemon {
    child: Child,
    notes: Arc<Mutex<Vec<String>>>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// The daemon on the env's `config.toml` (see [`config`]), logging to `daemon.log`.
    pub fn start(env: &Env) -> Daemon {
        Daemon::start_logged(env, "daemon.log")
    }

    /// As [`Daemon::start`], logging to `log_name` in the env's directory. The log is truncated
    /// at start, so [`Daemon::log`] holds this run only.
    pub fn start_logged(env: &Env, log_name: &str) -> Daemon {
        Daemon::launch(
            &env.path("config.toml"),
            &env.path("run/juju-brd.sock"),
            &env.path(log_name),
        )
    }

    /// The daemon on `config`, whose API socket is `socket`, logging to `log`; its notify socket
    /// is `LOG.notify`. Returns once it has sent READY=1; panics with its log if it exits first
    /// or takes longer than 30 s.
    pub fn launch(config: &Path, socket: &Path, log: &Path) -> Daemon {
        let notify_path = PathBuf::from(format!("{}.notify", log.display()));
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
        // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's.
        let child = Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" daemon", BIN])
            .env("JUJU_BRD_CONFIG", config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            notes,
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
        };
        let mut exited = None;
        let ready = poll_until(READY_WITHIN, || {
            exited = d.child.try_wait().unwrap();
            exited.is_some()
                || d.notes
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|n| n.contains("READY=1"))
        });
        assert!(
            ready && exited.is_none(),
            "the daemon {} instead of sending READY=1 within {READY_WITHIN:?}; log:\n{}",
            exited.map_or("hung".to_string(), |st| format!("exited ({st})")),
            d.log()
        );
        d
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
        let path = format!("/v1/jobs/{id}");
        let mut job = serde_json::Value::Null;
        wait_until(
            Duration::from_secs(60),
            &format!("job {id} to finish"),
            || {
                job = self.get(rt, &path);
                job["state"] == "succeeded" || job["state"] == "failed"
            },
        );
        job
    }

    /// SIGTERM, then up to 90 s for the daemon to exit (a running backup may finish first).
    pub fn stop(mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut status = None;
        wait_until(
            Duration::from_secs(90),
            "the daemon to stop on SIGTERM",
            || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            },
        );
        status.unwrap()
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
    env.config(
        "",
        &format!(
            "{}\n[api]\nsocket = \"run/juju-brd.sock\"\nsocket_mode = \"0600\"\n{api}[schedule]\ncron = \"\"\n{extra}",
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
