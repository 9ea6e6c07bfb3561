//! Shared fixtures for the end-to-end tests: a generated state-server tree and a config for it,
//! bounded polling, the checks behind `#[ignore = "needs ..."]`, a real S3 server, (in `daemon`)
//! the harness for the real daemon, and (in `lab`) machines as network namespaces running sshd.
#![allow(dead_code)]

pub mod daemon;
pub mod juju_reader;
pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_juju-brd");
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_juju-brd-fixture");

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A temp dir with `root/` holding a generated state-server tree of `size_mib`.
    pub fn new(size_mib: u64) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(FIXTURE)
            .arg(dir.path().join("root"))
            .args(["--size-mib", &size_mib.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "fixture: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Env { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn root(&self) -> PathBuf {
        self.path("root")
    }

    pub fn archives(&self) -> PathBuf {
        self.path("archives")
    }

    /// Writes `config.toml` for this tree; `extra` is appended (TOML sections).
    pub fn config(&self, top: &str, extra: &str) -> PathBuf {
        let text = format!(
            "environment = \"test-env\"\narchive_dir = \"archives\"\nstate_dir = \"state\"\n{top}\n\
             [files]\nroot = \"root\"\n\n{extra}\n"
        );
        let p = self.path("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The config a restore test uses: the SQLite engine, nothing to stop or start, probes of
    /// the recorded addresses on `ports` with a short timeout; `extra` (TOML) follows.
    pub fn restore_config(&self, ports: &[u16], extra: &str) -> PathBuf {
        self.config(
            "",
            &format!(
                "{}\n[restore]\nstop_commands = []\nstart_commands = []\nprobe_ports = {ports:?}\nprobe_timeout = \"300ms\"\n{extra}",
                self.sqlite_section()
            ),
        )
    }

    pub fn sqlite_section(&self) -> String {
        "[database]\nengine = \"sqlite\"\npath = \"root/var/lib/juju/db/state.db\"\n".into()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("JUJU_BRD_CONFIG", self.path("config.toml"))
            .env_remove("JUJU_ENV")
            .output()
            .unwrap()
    }

    /// As [`Env::run`], in its own process group, killing the whole group if it has not finished
    /// within `limit`: its output, or (killed) an error naming the command, with its stderr.
    pub fn run_bounded(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        self.run_bounded_with(&[], &[], args, limit)
    }

    /// As [`Env::run_bounded`], with `vars` added to the environment and run as `WRAPPER...
    /// juju-brd ARGS` (a tracer, say; empty for none). Killing the group at `limit` stops a
    /// tracee that would outlive its killed tracer.
    pub fn run_bounded_with(
        &self,
        wrapper: &[String],
        vars: &[(&str, &str)],
        args: &[&str],
        limit: Duration,
    ) -> Result<Output, String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .args(args)
            .env("JUJU_BRD_CONFIG", self.path("config.toml"))
            .env_remove("JUJU_ENV")
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        // Drain both pipes so a chatty child never blocks on a full pipe.
        let mut out_pipe = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let out_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out_pipe, &mut v);
            v
        });
        let err_reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err_pipe, &mut v);
            v
        });
        let end = Instant::now() + limit;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() >= end {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                let err = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
                return Err(format!(
                    "`juju-brd {}` still running after {limit:?}; killed. stderr:\n{err}",
                    args.join(" ")
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Output {
            status,
            stdout: out_reader.join().unwrap(),
            stderr: err_reader.join().unwrap(),
        })
    }

    /// Runs `restore --yes --address 10.20.30.40 --target-root TARGET` with `args` after it
    /// (flags, then the archive).
    pub fn restore_into(&self, target: &Path, args: &[&str]) -> Output {
        let mut all = vec![
            "restore",
            "--yes",
            "--address",
            "10.20.30.40",
            "--target-root",
            target.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Runs `backup --offline` and returns the archive path it printed.
    pub fn backup(&self) -> PathBuf {
        let out = self.run(&["backup", "--offline"]);
        assert!(
            out.status.success(),
            "backup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let path = PathBuf::from(stdout.lines().last().expect("archive path printed"));
        // Every gzip archive the tests make must be one Juju itself reads.
        if path.to_string_lossy().ends_with(".tar.gz") {
            juju_reader::assert_juju_readable(&path);
        }
        path
    }

    /// Names in the archive directory (archives, sidecars, anything else).
    pub fn archive_dir_listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.archives())
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Extracts a .tar.gz with the system tar into `dest`.
pub fn system_untar(archive: &Path, dest: &Path, extra: &[&str]) {
    std::fs::create_dir_all(dest).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dest)
        .args(extra)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xf {}", archive.display());
}

/// Everything about a tree that a restore could change: per path its type, mode, owner, mtime
/// (files and directories), content hash or link target. Paths starting with `skip` are left out.
pub fn tree_state(root: &Path, skip: &[&str]) -> std::collections::BTreeMap<String, String> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        if skip.iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        let m = e.path().symlink_metadata().unwrap();
        let what = if m.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(e.path()).unwrap().display())
        } else if m.is_dir() {
            format!("dir mtime={}", m.mtime())
        } else {
            let h = sha2::Sha256::digest(std::fs::read(e.path()).unwrap());
            format!("file {} mtime={}", hex::encode(h), m.mtime())
        };
        out.insert(
            rel,
            format!("{what} mode={:o} owner={}:{}", m.mode(), m.uid(), m.gid()),
        );
    }
    out
}

/// Polls `cond` every 25 ms until it holds (true) or `limit` has passed without it (false).
/// Callers that want their own panic message use this; everyone else uses [`wait_until`].
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Bounded polling: returns as soon as `cond` holds, panics naming `what` once `limit` has passed.
pub fn wait_until(limit: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, cond),
        "timed out after {limit:?} waiting for {what}"
    );
}

// A test that cannot run without something outside the Rust toolchain is
// `#[ignore = "needs X: where X comes from"]` and starts with one of these, so that
// `cargo test -- --include-ignored` on a machine without X fails saying so instead of passing.

/// Panics unless the test runs as root.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}): run it as root (sudo ./test.sh; CI runs as root)"
    );
}

/// `program` as found on PATH, if it is there and executable.
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The path of `program` on PATH; panics saying where it comes from (`from`) when it is missing.
pub fn require_program(program: &str, from: &str) -> PathBuf {
    find_program(program).unwrap_or_else(|| panic!("this test needs `{program}` on PATH: {from}"))
}

/// [`require_program`] for a program from a Debian package, which ./test.sh installs.
pub fn require_debian(program: &str, package: &str) -> PathBuf {
    require_program(
        program,
        &format!("Debian package {package}, which ./test.sh installs"),
    )
}

/// A two-thread tokio runtime for talking to the daemon's socket.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A tmpfs of `size` (e.g. "6m") mounted on `dir` (which must exist) until dropped. Needs root.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

// A real S3 server: s3s-fs on loopback (installed by ./test.sh).

pub const ACCESS_KEY: &str = "jujubrdtestaccess";
pub const SECRET_KEY: &str = "jujubrd-test-SECRET-7f3a9c";
pub const BUCKET: &str = "juju-backups";

/// A running s3s-fs with one bucket, stopped (and waited for) when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
    data: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const S3S_FS_INSTALL: &str = "cargo install s3s-fs@0.14.1 --locked --features binary";

/// The s3s-fs binary (on PATH, else in ~/.cargo/bin); panics saying how to install it.
pub fn require_s3s_fs() -> PathBuf {
    let in_cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"));
    find_program("s3s-fs")
        .or(in_cargo.filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("this test needs s3s-fs, a real S3 server: {S3S_FS_INSTALL} (./test.sh does)")
        })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl S3Server {
    pub fn start(data: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(data.join(BUCKET)).unwrap();
        let child = Command::new(require_s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Built before the wait, so a server that never answers is still killed when we panic.
        let server = S3Server {
            child,
            port,
            data: data.to_path_buf(),
        };
        wait_until(
            Duration::from_secs(20),
            &format!("s3s-fs on port {port}"),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        );
        server
    }

    /// Where the server keeps `key` of our bucket on disk (s3s-fs maps keys to files).
    pub fn object(&self, key: &str) -> PathBuf {
        self.data.join(BUCKET).join(key)
    }

    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let dir = self.data.join(BUCKET).join(prefix);
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("juju-backup-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}
