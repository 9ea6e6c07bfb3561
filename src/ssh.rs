//! The system's OpenSSH client, run as a bounded child process: one remote command per call, its
//! input fed on stdin from an anonymous file (so what it carries, such as an agent.conf with its
//! passwords, is never on an argv), its output read back with a cap.
//!
//! Host keys are always checked against one known_hosts file: a key seen for the first time is
//! recorded there and reported (`learned_host_key`), a changed one is refused. The user's own
//! ssh config is not read, so what juju-brd does does not depend on who runs it.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::process::{self, ChildSpec, ProcessError};

/// How to reach machines: who to log in as, with which key, and whose host keys to trust.
#[derive(Debug, Clone)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub connect_timeout: Duration,
}

/// What one remote command gave back.
#[derive(Debug)]
pub struct Reply {
    pub stdout: Vec<u8>,
    /// The host's key was not in known_hosts before this call and has now been recorded.
    pub learned_host_key: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host} is not a valid address")]
    BadHost { host: String },
    #[error("cannot connect to {host}: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("the host key of {host} is not the one recorded in {}: refused. If the machine was rebuilt, remove the old key (ssh-keygen -R {host} -f {}) and run again", known_hosts.display(), known_hosts.display())]
    HostKeyChanged { host: String, known_hosts: PathBuf },
    #[error("{host} refused the key {} for user {user}", key.display())]
    KeyRefused {
        host: String,
        user: String,
        key: PathBuf,
    },
    #[error("{host}: no answer within {}s; the connection was closed", after.as_secs())]
    Timeout { host: String, after: Duration },
    #[error("{host}: ssh failed: {reason}")]
    Ssh { host: String, reason: String },
    #[error("{host}: {message}")]
    Remote {
        host: String,
        code: Option<i32>,
        message: String,
    },
    #[error("{host}: stopped on request; the connection was closed")]
    Cancelled { host: String },
    /// The remote command's output stream was cut short or was not what was expected.
    #[error("{host}: {reason}")]
    Stream { host: String, reason: String },
    #[error("{what}: {err}")]
    Local {
        what: &'static str,
        err: std::io::Error,
    },
}

impl SshError {
    /// Whether the machine could not be reached at all (as opposed to reached and refused).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            SshError::Unreachable { .. } | SshError::Timeout { .. }
        )
    }
}

/// An address ssh may be given: an IP address, or a DNS name that cannot be read as an option.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Ssh {
    /// The ssh argv for one call; `command` is run by the remote user's shell.
    pub fn argv(&self, host: &str, command: &str) -> Vec<String> {
        let opt = |o: &str| ["-o".to_string(), o.to_string()];
        let mut a = vec![
            "ssh".to_string(),
            "-F".into(),
            "/dev/null".into(),
            "-T".into(),
        ];
        for o in [
            "BatchMode=yes".to_string(),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            // Recorded on first use (and reported), refused when changed: never switched off.
            "StrictHostKeyChecking=accept-new".into(),
            "UpdateHostKeys=no".into(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
            "ServerAliveInterval=5".into(),
            "ServerAliveCountMax=3".into(),
            "LogLevel=INFO".into(),
        ] {
            a.extend(opt(&o));
        }
        a.extend([
            "-i".into(),
            self.key.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-l".into(),
            self.user.clone(),
            "--".into(),
            host.to_string(),
            command.to_string(),
        ]);
        a
    }

    /// What every call needs first: a host ssh cannot read as an option, the known_hosts
    /// directory, and `input` in an anonymous file (O_TMPFILE: never visible under a name, gone
    /// when closed) for the child's stdin.
    fn prepare(&self, host: &str, input: &[u8]) -> Result<std::fs::File, SshError> {
        if !valid_host(host) {
            return Err(SshError::BadHost { host: host.into() });
        }
        let local = |what| move |err| SshError::Local { what, err };
        self.make_known_hosts_dir()?;
        let mut stdin = tempfile::tempfile().map_err(local("creating a temporary file"))?;
        stdin
            .write_all(input)
            .and_then(|()| stdin.rewind())
            .map_err(local("writing a temporary file"))?;
        Ok(stdin)
    }

    /// Runs `command` on `host` with `input` on its stdin; the whole call (connecting included)
    /// is bounded by `timeout`, and at most `max_stdout` bytes of output are kept.
    pub fn run(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        timeout: Duration,
        max_stdout: u64,
    ) -> Result<Reply, SshError> {
        let local = |what| move |err| SshError::Local { what, err };
        let stdin = self.prepare(host, input)?;
        let mut stdout = tempfile::tempfile().map_err(local("creating a temporary file"))?;
        let out_for_child = stdout
            .try_clone()
            .map_err(local("creating a temporary file"))?;
        let argv = self.argv(host, command);
        let mut spec = ChildSpec::new("ssh", &argv, timeout);
        spec.stdin = Stdio::from(stdin);
        spec.stdout = Stdio::from(out_for_child);
        let stderr = process::run_with_stderr(spec).map_err(|e| self.classify(host, e))?;
        stdout.rewind().map_err(local("reading ssh's output"))?;
        let mut out = Vec::new();
        stdout
            .take(max_stdout)
            .read_to_end(&mut out)
            .map_err(local("reading ssh's output"))?;
        Ok(Reply {
            stdout: out,
            learned_host_key: stderr.contains("Permanently added"),
        })
    }

    /// Runs `command` on `host` with `input` on its stdin and hands its stdout, as it arrives,
    /// to `consume` (nothing is buffered here: an archive streams straight to its file). The
    /// whole call is bounded by `timeout`: past it ssh's process group is killed, so `consume`
    /// sees the end of the stream, and the call fails with [`SshError::Timeout`]; `cancel`, once
    /// set, does the same ([`SshError::Cancelled`]). A `consume` that fails stops ssh; ssh's own
    /// failure (host key, refused key, unreachable, the remote command's exit status and
    /// stderr) is reported before the consumer's. ssh is stopped with SIGKILL: a caller may
    /// have blocked the other signals, which its children inherit.
    pub fn stream<T>(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        timeout: Duration,
        cancel: Option<&'static std::sync::atomic::AtomicBool>,
        consume: impl FnOnce(&mut dyn Read) -> std::io::Result<T>,
    ) -> Result<Streamed<T>, SshError> {
        use std::os::unix::process::{CommandExt, ExitStatusExt};
        use std::sync::{Arc, Mutex};
        let local = |what| move |err| SshError::Local { what, err };
        let stdin = self.prepare(host, input)?;
        let mut stderr = tempfile::tempfile().map_err(local("creating a temporary file"))?;
        let err_for_child = stderr
            .try_clone()
            .map_err(local("creating a temporary file"))?;
        let argv = self.argv(host, command);
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_for_child))
            .process_group(0)
            .env_clear()
            .envs(process::base_environment())
            .spawn()
            .map_err(local("starting ssh"))?;
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        // `reaped` is set before the child is reaped, under the lock the watchdog kills under:
        // the group is never signalled once its id may have been reused.
        let reaped = Arc::new(Mutex::new(false));
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let deadline = std::time::Instant::now().checked_add(timeout);
        let watchdog = {
            let (reaped, timed_out, cancelled) =
                (reaped.clone(), timed_out.clone(), cancelled.clone());
            std::thread::spawn(move || loop {
                match stopped.recv_timeout(Duration::from_millis(100)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let why = if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
                    &cancelled
                } else if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    &timed_out
                } else {
                    continue;
                };
                let reaped = reaped.lock().unwrap_or_else(|e| e.into_inner());
                if !*reaped {
                    why.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                }
                return;
            })
        };
        let mut out = child.stdout.take().expect("stdout is piped");
        let consumed = consume(&mut out);
        drop(out);
        if consumed.is_err() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        // Wait for the exit without reaping, then reap under the lock.
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        while let Err(nix::errno::Errno::EINTR) =
            nix::sys::wait::waitid(nix::sys::wait::Id::Pid(pgid), flags)
        {}
        let status = {
            let mut r = reaped.lock().unwrap_or_else(|e| e.into_inner());
            *r = true;
            child.wait()
        };
        let _ = stop.send(());
        let _ = watchdog.join();
        let status = status.map_err(local("waiting for ssh"))?;
        let err_text = tail_of(&mut stderr);
        let host_s = host.to_string();
        if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SshError::Timeout {
                host: host_s,
                after: timeout,
            });
        }
        if cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SshError::Cancelled { host: host_s });
        }
        let learned_host_key = err_text.contains("Permanently added");
        match (consumed, status.code()) {
            (Ok(value), Some(0)) => Ok(Streamed {
                value,
                learned_host_key,
            }),
            (_, Some(code)) if code != 0 => Err(self.classify(
                host,
                ProcessError::Failed {
                    what: "ssh".into(),
                    program: "ssh".into(),
                    status: format!("exited with status {code}"),
                    code: Some(code),
                    stderr: err_text,
                },
            )),
            (Err(e), _) => Err(SshError::Stream {
                host: host_s,
                reason: e.to_string(),
            }),
            (Ok(_), _) => Err(SshError::Ssh {
                host: host_s,
                reason: format!(
                    "was killed by signal {}",
                    status.signal().unwrap_or_default()
                ),
            }),
        }
    }

    fn make_known_hosts_dir(&self) -> Result<(), SshError> {
        if let Some(dir) = self
            .known_hosts
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(dir)
                .map_err(|err| SshError::Local {
                    what: "creating the known_hosts directory",
                    err,
                })?;
        }
        Ok(())
    }

    /// Turns a failed ssh child into what happened, from its exit status and stderr.
    fn classify(&self, host: &str, e: ProcessError) -> SshError {
        let host = host.to_string();
        match e {
            ProcessError::Timeout { after, .. } => SshError::Timeout { host, after },
            ProcessError::Failed {
                code: Some(255),
                stderr,
                ..
            } => classify_ssh_failure(host, &stderr, self),
            ProcessError::Failed { code, stderr, .. } => SshError::Remote {
                host,
                code,
                message: last_lines(&stderr),
            },
            other => SshError::Ssh {
                host,
                reason: other.to_string(),
            },
        }
    }
}

/// What [`Ssh::stream`] gave back: the consumer's result.
#[derive(Debug)]
pub struct Streamed<T> {
    pub value: T,
    /// The host's key was not in known_hosts before this call and has now been recorded.
    pub learned_host_key: bool,
}

/// The last 64 KiB of what ssh wrote to stderr (its file), as text.
fn tail_of(file: &mut std::fs::File) -> String {
    const TAIL: u64 = 64 << 10;
    let len = file.seek(std::io::SeekFrom::End(0)).unwrap_or(0);
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut bytes = Vec::new();
    let _ = file.take(TAIL).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Copies exactly `len` bytes from `from` into `to`, a megabyte at a time, showing each chunk to
/// `seen` (a hasher) and the running total to `progress`. Fails when the stream ends early.
pub fn copy_exact(
    from: &mut dyn Read,
    to: &mut dyn Write,
    len: u64,
    seen: &mut dyn FnMut(&[u8]),
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the stream ended after {done} of {len} bytes"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        seen(&buf[..n]);
        to.write_all(&buf[..n])?;
        done += n as u64;
        progress(done);
    }
    Ok(())
}

/// ssh's own failures (exit status 255), by what it printed.
fn classify_ssh_failure(host: String, stderr: &str, ssh: &Ssh) -> SshError {
    let has = |s: &str| stderr.contains(s);
    if has("REMOTE HOST IDENTIFICATION HAS CHANGED") || has("Host key verification failed") {
        return SshError::HostKeyChanged {
            host,
            known_hosts: ssh.known_hosts.clone(),
        };
    }
    if has("Permission denied") {
        return SshError::KeyRefused {
            host,
            user: ssh.user.clone(),
            key: ssh.key.clone(),
        };
    }
    const UNREACHABLE: [&str; 8] = [
        "Connection refused",
        "Connection timed out",
        "timed out during banner exchange",
        "No route to host",
        "Network is unreachable",
        "Could not resolve hostname",
        "Connection reset",
        "Connection closed by",
    ];
    if UNREACHABLE.iter().any(|s| has(s)) {
        return SshError::Unreachable {
            host,
            reason: last_lines(stderr),
        };
    }
    SshError::Ssh {
        host,
        reason: last_lines(stderr),
    }
}

/// The last few non-empty lines of a tool's stderr, joined: enough to explain, never a flood.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect();
    let start = lines.len().saturating_sub(3);
    let joined = lines[start..].join("; ");
    if joined.is_empty() {
        "no message".into()
    } else {
        joined
    }
}

/// A copy of `known_hosts` in a private temporary directory, for a dry run: keys learned during
/// it are recorded in the copy, which is thrown away, so a dry run changes nothing.
pub fn scratch_known_hosts(known_hosts: &Path) -> std::io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("known_hosts");
    match std::fs::copy(known_hosts, &copy) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok((dir, copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh() -> Ssh {
        Ssh {
            user: "ubuntu".into(),
            port: 22,
            key: "/k".into(),
            known_hosts: "/kh".into(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn hosts_that_could_be_options_are_refused() {
        for ok in ["10.0.0.1", "fd00::1", "node-1.maas", "a"] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "-oProxyCommand=x",
            "",
            "a b",
            "a;b",
            ".x",
            "x\n",
            "[::1]",
            "user@host",
        ] {
            assert!(!valid_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn argv_ends_with_the_host_after_a_double_dash_and_checks_host_keys() {
        let a = ssh().argv("10.0.0.1", "sh -s");
        assert_eq!(&a[a.len() - 3..], ["--", "10.0.0.1", "sh -s"]);
        assert!(a.contains(&"StrictHostKeyChecking=accept-new".to_string()));
        assert!(!a.iter().any(|x| x.contains("StrictHostKeyChecking=no")));
    }

    #[test]
    fn failures_are_told_apart_by_what_ssh_printed() {
        let s = ssh();
        let e = classify_ssh_failure(
            "h".into(),
            "@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n",
            &s,
        );
        assert!(matches!(e, SshError::HostKeyChanged { .. }), "{e}");
        let e = classify_ssh_failure("h".into(), "ubuntu@h: Permission denied (publickey).\n", &s);
        assert!(matches!(e, SshError::KeyRefused { .. }), "{e}");
        let e = classify_ssh_failure(
            "h".into(),
            "ssh: connect to host h port 22: Connection refused\n",
            &s,
        );
        assert!(e.is_unreachable(), "{e}");
        let e = classify_ssh_failure(
            "h".into(),
            "Connection timed out during banner exchange\n",
            &s,
        );
        assert!(e.is_unreachable(), "{e}");
    }
}
