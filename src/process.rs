//! Runs configured commands (hooks, dump and restore commands) safely.
//!
//! Each child gets its own process group so a timeout or cancellation kills the whole tree, its
//! stderr tail is kept (bounded) for the error message with known secrets redacted, and messages name
//! only the program, never the full argv.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const STDERR_TAIL: usize = 2048;

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
        }
    }
}

pub fn run(spec: ChildSpec<'_>) -> Result<(), ProcessError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..])
        .stdin(spec.stdin)
        .stdout(spec.stdout)
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    if let Some(d) = spec.dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|err| ProcessError::Spawn {
        what: spec.what.into(),
        program: program.clone(),
        err,
    })?;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        // Keep only the tail: a chatty tool must not grow our memory.
        let mut tail: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > STDERR_TAIL {
                tail.drain(..tail.len() - STDERR_TAIL);
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let pgid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let mut delay = Duration::from_millis(2);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|err| ProcessError::Spawn {
            what: spec.what.into(),
            program: program.clone(),
            err,
        })? {
            break status;
        }
        let cancelled = spec.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
        if cancelled || started.elapsed() >= spec.timeout {
            kill_group(pgid, &mut child);
            let _ = reader.join();
            return Err(if cancelled {
                ProcessError::Cancelled {
                    what: spec.what.into(),
                }
            } else {
                ProcessError::Timeout {
                    what: spec.what.into(),
                    program,
                    after: spec.timeout,
                }
            });
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".into(),
    };
    Err(ProcessError::Failed {
        what: spec.what.into(),
        program,
        status,
        stderr: redact(&stderr, spec.env),
    })
}

/// SIGTERM to the group, a grace period, then SIGKILL.
fn kill_group(pgid: Pid, child: &mut std::process::Child) {
    let _ = killpg(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let _ = killpg(pgid, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
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
}
