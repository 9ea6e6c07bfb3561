//! Runs configured commands (hooks, dump and restore commands) safely.
//!
//! - Each child gets its own process group, and the timeout bounds everything: the child, anything
//!   it left running in the background (`nohup x &`), and the reading of its output. When the
//!   child exits, on timeout and on cancellation, the whole group is signalled (SIGTERM, a short
//!   grace, SIGKILL), so nothing it started outlives it holding our pipe or its files.
//! - A descendant that left the group (`setsid`, a daemonising tool) is found by the
//!   [`RUN_MARK`] variable every child starts with (each run its own value, inherited by whatever
//!   it starts) and stopped the same way: nothing started for a backup outlives its command,
//!   unless it dropped its environment on the way (`env -i`, `sudo`). Commands that start
//!   services ([`ChildSpec::starts_services`]) are the exception.
//! - Its stderr tail is kept (bounded) for the error message with known secrets redacted, by a
//!   reader thread that the caller never waits on without a deadline: a descendant that escaped
//!   and still holds the pipe costs that thread, not the backup.
//! - The child's environment is scrubbed: only [`PASSED_ENV`] (and `LC_*`) from ours, plus what
//!   the config names for it (`ChildSpec::env`, e.g. an `environment_file`). The daemon's own
//!   environment may hold secrets (`AWS_SECRET_ACCESS_KEY` for a `[[remote]]`) or systemd's
//!   plumbing (`NOTIFY_SOCKET`) that a hook must not see.
//! - Messages name only the program, never the full argv.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const STDERR_TAIL: usize = 2048;
/// After SIGTERM to the group, how long before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// After the child exited, how long its output may take to reach EOF before whatever still holds
/// the pipe is told to stop.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);
/// Variables passed from the daemon's environment to every child (plus every `LC_*`).
pub const PASSED_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];
/// Set in every child's environment to a value of its own run: see the module doc.
pub const RUN_MARK: &str = "JUJU_BRD_RUN";
/// PATH for a child when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{what}: cannot start `{program}`: {err}")]
    Spawn {
        what: String,
        program: String,
        err: std::io::Error,
    },
    #[error("{what}: `{program}` {status}{}", tail_suffix(.stderr))]
    Failed {
        what: String,
        program: String,
        status: String,
        /// The exit status, when the child exited rather than being killed by a signal.
        code: Option<i32>,
        stderr: String,
    },
    #[error("{what}: `{program}` timed out after {}s and was killed", .after.as_secs())]
    Timeout {
        what: String,
        program: String,
        after: Duration,
    },
    #[error("{what}: cancelled")]
    Cancelled { what: String },
    #[error("{what}: cannot read the environment file {}: {err}", path.display())]
    EnvironmentFile {
        what: String,
        path: std::path::PathBuf,
        err: std::io::Error,
    },
}

fn tail_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", stderr.trim())
    }
}

/// One child to run. Secrets are passed through `env`, never argv, and are redacted from stderr.
pub struct ChildSpec<'a> {
    pub what: &'a str,
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub timeout: Duration,
    pub cancel: Option<&'a AtomicBool>,
    /// Working directory of the child (inherited when `None`).
    pub dir: Option<&'a std::path::Path>,
    /// The command starts a service meant to outlive it (`restore.start_commands`,
    /// `database_start_commands`: `mongod --fork`, an init script): what it left running outside
    /// its process group is not stopped.
    pub starts_services: bool,
}

impl<'a> ChildSpec<'a> {
    pub fn new(what: &'a str, argv: &'a [String], timeout: Duration) -> Self {
        ChildSpec {
            what,
            argv,
            env: &[],
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            timeout,
            cancel: None,
            dir: None,
            starts_services: false,
        }
    }
}

/// The scrubbed environment every child of this module gets (the passed basics of ours), for a
/// caller that spawns a child itself (`ssh::Ssh::stream` reads its stdout as it comes).
pub fn base_environment() -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    child_environment(&[])
}

/// The environment a child starts with: the passed basics of ours, then `extra` (the config's).
fn child_environment(extra: &[(String, String)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            PASSED_ENV.contains(&k.as_ref()) || k.starts_with("LC_")
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    for (k, v) in extra {
        env.retain(|(e, _)| e.as_os_str() != k.as_str());
        env.push((k.into(), v.into()));
    }
    env
}

/// The bounded stderr tail, filled by a reader thread; `done` fires at EOF.
struct OutputTail {
    tail: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl OutputTail {
    fn start(mut stderr: std::process::ChildStderr) -> OutputTail {
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let shared = tail.clone();
        std::thread::spawn(move || {
            // Keep only the tail: a chatty tool must not grow our memory.
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut tail = shared.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > STDERR_TAIL {
                    let cut = tail.len() - STDERR_TAIL;
                    tail.drain(..cut);
                }
            }
            let _ = tx.send(());
        });
        OutputTail { tail, done }
    }

    /// Whether EOF came within `limit`.
    fn wait(&self, limit: Duration) -> bool {
        !matches!(
            self.done.recv_timeout(limit),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    fn text(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&tail).into_owned()
    }
}

/// Whether the child (the group's leader) has exited, without reaping it: while it is a zombie
/// its pid, which is the group's id, cannot be reused, so signalling the group stays safe.
fn exited(pid: Pid) -> std::io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

pub fn run(spec: ChildSpec<'_>) -> Result<(), ProcessError> {
    run_with_stderr(spec).map(drop)
}

/// As [`run`], and on success returns the tail of what the child wrote on stderr (redacted), for
/// callers that read a tool's notices (ssh's "Permanently added ... to the list of known hosts").
pub fn run_with_stderr(spec: ChildSpec<'_>) -> Result<String, ProcessError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let spawn_err = |err| ProcessError::Spawn {
        what: spec.what.into(),
        program: program.clone(),
        err,
    };
    let mark = run_mark();
    let mut cmd = Command::new(&program);
    cmd.args(spec.argv.get(1..).unwrap_or_default())
        .stdin(spec.stdin)
        .stdout(spec.stdout)
        .stderr(Stdio::piped())
        .process_group(0)
        .env_clear()
        .envs(child_environment(spec.env))
        .env(RUN_MARK, &mark);
    // A command that starts services keeps what it started (`ChildSpec::starts_services`).
    let strays_of = (!spec.starts_services).then_some(mark.as_str());
    if let Some(d) = spec.dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let output = OutputTail::start(child.stderr.take().expect("stderr is piped"));
    let pid = Pid::from_raw(child.id() as i32);
    // A timeout too large for the clock (the config caps it, but this must never panic) is none.
    let deadline = Instant::now().checked_add(spec.timeout);
    let mut delay = Duration::from_millis(2);
    let stopped_early = loop {
        match exited(pid) {
            Ok(true) => break None,
            Ok(false) => {}
            Err(err) => {
                stop_group(pid, &mut child, &output);
                stop_strays(strays_of, spec.what, &program);
                return Err(spawn_err(err));
            }
        }
        if spec.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            break Some(ProcessError::Cancelled {
                what: spec.what.into(),
            });
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Some(ProcessError::Timeout {
                what: spec.what.into(),
                program: program.clone(),
                after: spec.timeout,
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    };
    if let Some(err) = stopped_early {
        stop_group(pid, &mut child, &output);
        stop_strays(strays_of, spec.what, &program);
        return Err(err);
    }
    // The child is gone; whatever it left in its group goes too. Something that still holds its
    // stderr after a moment is a background process (`nohup x &`) that would otherwise keep us
    // waiting for EOF for as long as it runs.
    if !output.wait(OUTPUT_GRACE) {
        tracing::warn!(what = spec.what, program = %program, "left processes running in the background; stopping them");
    }
    stop_group(pid, &mut child, &output);
    stop_strays(strays_of, spec.what, &program);
    let status = child.wait().map_err(spawn_err)?;
    if status.success() {
        return Ok(redact(&output.text(), spec.env));
    }
    let code = status.code();
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".into(),
    };
    Err(ProcessError::Failed {
        what: spec.what.into(),
        program,
        status,
        code,
        stderr: redact(&output.text(), spec.env),
    })
}

/// SIGTERM to the group, a grace period for the child and for the output pipe to close, then
/// SIGKILL to the group and the child reaped. Bounded: at most [`TERM_GRACE`] plus a moment.
fn stop_group(pgid: Pid, child: &mut std::process::Child, output: &OutputTail) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while !matches!(exited(pgid), Ok(true) | Err(_)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    output.wait(deadline.saturating_duration_since(Instant::now()));
    let _ = killpg(pgid, Signal::SIGKILL);
    // A descendant that left the group (setsid) may still hold the pipe: its reader thread is
    // left to finish on its own, the caller does not wait for it.
    output.wait(Duration::from_millis(100));
    let _ = child.wait();
}

/// A value of [`RUN_MARK`] no other run of this or another juju-brd process has.
fn run_mark() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{boot}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Stops the processes that still carry this run's `mark` after its process group was stopped:
/// descendants that left the group (`None`: a command that starts services, nothing to stop).
/// SIGTERM, up to [`TERM_GRACE`], then SIGKILL; a few rounds, for one that forks while it is
/// stopped. Each is signalled through a pidfd opened before its
/// environment is read, so a PID reused meanwhile is never signalled.
fn stop_strays(mark: Option<&str>, what: &str, program: &str) {
    let Some(mark) = mark else {
        return;
    };
    let needle = format!("{RUN_MARK}={mark}");
    let mut stopped = 0usize;
    for _ in 0..4 {
        let Some(strays) = scan_within(&needle, SCAN_LIMIT) else {
            tracing::warn!(
                what,
                program,
                "could not finish looking for processes it left outside its process group \
                 within {}s (a process's /proc entry did not answer)",
                SCAN_LIMIT.as_secs()
            );
            break;
        };
        if strays.is_empty() {
            break;
        }
        stopped += strays.len();
        for s in &strays {
            s.signal(rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while strays.iter().any(Stray::alive) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for s in &strays {
            s.signal(rustix::process::Signal::KILL);
        }
    }
    if stopped > 0 {
        tracing::warn!(
            what,
            program,
            processes = stopped,
            "left processes running outside its process group (setsid); stopped them"
        );
    }
}

/// Bound of one look through /proc: reading a process's environment waits for its memory map,
/// which a process stuck in the kernel (a hung NFS mount) may hold indefinitely.
const SCAN_LIMIT: Duration = Duration::from_secs(2);

/// [`marked_processes`] on a thread of its own, waited for at most `limit`: `None` if it did not
/// finish (the thread is left to end on its own).
fn scan_within(needle: &str, limit: Duration) -> Option<Vec<Stray>> {
    let (tx, rx) = mpsc::sync_channel(1);
    let needle = needle.as_bytes().to_vec();
    std::thread::Builder::new()
        .name("stray-scan".into())
        .spawn(move || {
            let _ = tx.send(marked_processes(&needle));
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

/// A process found by its mark, held by a pidfd.
struct Stray {
    pidfd: std::os::fd::OwnedFd,
}

impl Stray {
    fn signal(&self, sig: rustix::process::Signal) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, sig);
    }

    /// A pidfd becomes readable once its process has exited.
    fn alive(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(poll(&mut fds, Some(&now)), Ok(0))
    }
}

/// Every process (but this one) whose environment holds `needle` as one variable.
fn marked_processes(needle: &[u8]) -> Vec<Stray> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Some(raw) = rustix::process::Pid::from_raw(pid) else {
            continue;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        else {
            continue;
        };
        // Read after the pidfd is open: if the PID was reused in between, the pidfd is of the
        // process that exited, and signalling it does nothing.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|var| var == needle) {
            found.push(Stray { pidfd });
        }
    }
    found
}

/// Replaces every secret value that appears in `text` (values of 4+ characters; shorter ones would
/// mangle ordinary words).
pub fn redact(text: &str, secrets: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (_, v) in secrets {
        if v.len() >= 4 {
            out = out.replace(v.as_str(), "<redacted>");
        }
    }
    out
}

/// Reads a `KEY=VALUE` environment file (blank lines and `#` comments allowed).
pub fn read_env_file(path: &std::path::Path) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: expected KEY=VALUE", path.display(), i + 1),
            )
        })?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(v);
        out.push((k.trim().to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn success_failure_and_timeout() {
        let ok = argv(&["true"]);
        run(ChildSpec::new("hook", &ok, Duration::from_secs(5))).unwrap();
        let bad = argv(&["sh", "-c", "echo boom >&2; exit 3"]);
        let e = run(ChildSpec::new("pre hook", &bad, Duration::from_secs(5))).unwrap_err();
        assert_eq!(e.to_string(), "pre hook: `sh` exited with status 3: boom");
        let slow = argv(&["sh", "-c", "sleep 30 & sleep 30"]);
        let t = Instant::now();
        let e = run(ChildSpec::new("dump", &slow, Duration::from_millis(300))).unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let missing = argv(&["/nonexistent/tool"]);
        let e = run(ChildSpec::new("dump", &missing, Duration::from_secs(1))).unwrap_err();
        assert!(
            e.to_string().contains("cannot start `/nonexistent/tool`"),
            "{e}"
        );
    }

    #[test]
    fn secrets_in_stderr_are_redacted() {
        let env = vec![("DB_PASSWORD".to_string(), "hunter22secret".to_string())];
        let cmd = argv(&[
            "sh",
            "-c",
            "echo \"auth failed for $DB_PASSWORD\" >&2; exit 1",
        ]);
        let mut spec = ChildSpec::new("dump", &cmd, Duration::from_secs(5));
        spec.env = &env;
        let e = run(spec).unwrap_err().to_string();
        assert!(!e.contains("hunter22secret"), "{e}");
        assert!(e.contains("auth failed for <redacted>"), "{e}");
    }

    /// A background child holding stderr neither blocks the caller after the child exits nor
    /// outlives it; with a timeout it is bounded and killed too.
    #[test]
    fn background_children_are_stopped_and_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("bg.pid");
        let script = format!("sleep 600 & echo $! > {}; echo done", pidfile.display());
        let cmd = argv(&["sh", "-c", &script]);
        let t = Instant::now();
        run(ChildSpec::new("hook", &cmd, Duration::from_secs(60))).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let pid = pid_in(&pidfile);
        assert!(!alive(pid), "the background child survived");

        let script = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
        let cmd = argv(&["sh", "-c", &script]);
        let t = Instant::now();
        let e = run(ChildSpec::new("hook", &cmd, Duration::from_millis(500))).unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let pid = pid_in(&pidfile);
        assert!(!alive(pid), "the background child survived the timeout");
    }

    /// A descendant that left the process group (`setsid`) is stopped too, when the command
    /// exits and when it times out.
    #[test]
    fn descendants_that_left_the_group_are_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("escaped.pid");
        for (wait, timeout) in [("", 60_000), ("; sleep 600", 500)] {
            // `setsid` in a background job is not a group leader: it calls setsid() and execs,
            // so `$!` is the escaped `sleep` itself. Its output goes elsewhere: it does not
            // hold the pipe, only its session.
            // Once it has its own session (field 6 of /proc/PID/stat) it is out of the group.
            let script = format!(
                "setsid sleep 600 >/dev/null 2>&1 </dev/null & p=$!; \
                 until [ \"$(cut -d' ' -f6 /proc/$p/stat)\" = \"$p\" ]; do :; done; \
                 echo $p > {}{wait}",
                pidfile.display()
            );
            let cmd = argv(&["sh", "-c", &script]);
            let t = Instant::now();
            let result = run(ChildSpec::new("hook", &cmd, Duration::from_millis(timeout)));
            assert_eq!(result.is_ok(), timeout > 1000, "{result:?}");
            assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
            let pid = pid_in(&pidfile);
            let sid = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                sid.is_empty() || !alive(pid),
                "the escaped child survived: {sid}"
            );
        }
    }

    /// A command that starts a service keeps what it started outside its group.
    #[test]
    fn a_started_service_is_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("service.pid");
        // Exits once the service has its own session (field 6 of /proc/PID/stat), as a daemon
        // started by an init script has: before that, it is still in the group that is stopped.
        let script = format!(
            "setsid sleep 600 >/dev/null 2>&1 </dev/null & p=$!; \
             until [ \"$(cut -d' ' -f6 /proc/$p/stat)\" = \"$p\" ]; do :; done; echo $p > {}",
            pidfile.display()
        );
        let cmd = argv(&["sh", "-c", &script]);
        let mut spec = ChildSpec::new("start", &cmd, Duration::from_secs(60));
        spec.starts_services = true;
        run(spec).unwrap();
        let pid = pid_in(&pidfile);
        let running = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        assert!(
            !running.is_empty() && !running.contains(") Z "),
            "the started service is gone: {running:?}"
        );
    }

    /// The PID a test script wrote to `file`.
    fn pid_in(file: &std::path::Path) -> i32 {
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn alive(pid: i32) -> bool {
        // Reparented to init (or a subreaper) and reaped there; give it a moment.
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    #[test]
    fn children_get_a_scrubbed_environment() {
        let env = child_environment(&[("DB_USER".into(), "juju".into())]);
        let names: Vec<String> = env
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"PATH".to_string()), "{names:?}");
        assert!(names.contains(&"DB_USER".to_string()), "{names:?}");
        for k in &names {
            assert!(
                PASSED_ENV.contains(&k.as_str()) || k.starts_with("LC_") || k == "DB_USER",
                "{k} passed through"
            );
        }
    }
}
