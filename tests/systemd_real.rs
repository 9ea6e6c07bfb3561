//! The built package under a real systemd as PID 1 (issue 14, item 3).
//!
//! A minimal Debian root of the host's own suite and architecture (`debootstrap --variant=minbase`
//! from the mirror in the host's apt sources, plus systemd, curl and sqlite3; no procps) is cached
//! as a tarball under `/var/cache/juju-brd-tests/` and unpacked afresh onto a tmpfs for each run,
//! booted with `systemd-nspawn -b --register=no --keep-unit --private-network`, and driven through
//! `nsenter` into the container's PID 1. Inside: a fake Juju state-server (the fixture's tree; a
//! `jujud-machine-0` unit holding its SQLite database open in WAL mode and writing to it, a
//! `juju-db` unit), the `.deb` that `packaging/build-deb.sh` builds (or `$JUJU_BRD_DEB`), and:
//!
//! - `dpkg -i`, `systemctl enable --now juju-brd`: active (so READY=1 arrived), status text naming
//!   the next run;
//! - a backup triggered with curl on the API socket, under the shipped hardening;
//! - `systemctl reload` with a good config (the sqlite engine) and with a broken one;
//! - the sqlite engine on the live WAL database and on an idle one (no `-shm` yet: SQLite must
//!   create it under ProtectSystem=strict);
//! - `systemctl stop` during a pre hook (the hook gets the grace; the backup completes) and during
//!   a dump waiting on a locked database (cancelled after the grace; nothing left behind);
//! - a watchdog stall (SIGSTOP past WatchdogSec) and `kill -9`: both restarted;
//! - `juju-brd restore` with the default stop and start commands: the agent is running after it;
//! - `dpkg -r` and `dpkg -P`: the archives stay.
//!
//! Each step's time is printed; README.md records what the whole run costs.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// Where the debootstrapped roots are cached, one tarball per suite, architecture and package set.
const CACHE_DIR: &str = "/var/cache/juju-brd-tests";
/// What the root gets beyond minbase: systemd as init, curl for the API, sqlite3 for the fake
/// agent's live database. Not procps: the unit must not need /bin/kill.
const INCLUDE: &[&str] = &["systemd", "systemd-sysv", "curl", "sqlite3"];
const SOCKET: &str = "/run/juju-brd/juju-brd.sock";
const CONFIG: &str = "/etc/juju-brd/juju-brd.toml";
const ARCHIVES: &str = "/var/lib/juju-brd/archives";
const DB: &str = "/var/lib/juju/db/state.db";

/// Runs `cmd` in its own process group with both pipes drained; kills the group and panics naming
/// `what` if it has not finished within `limit` (the lab's bounded runner).
fn bounded(what: &str, cmd: &mut Command, limit: Duration) -> Output {
    common::lab::output_within(cmd, limit).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn kill_group(child: &Child) {
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The host's suite (`VERSION_CODENAME`) and dpkg architecture.
fn host_suite_and_arch() -> (String, String) {
    let os = std::fs::read_to_string("/etc/os-release").expect("/etc/os-release");
    let suite = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .expect("VERSION_CODENAME in /etc/os-release: this test debootstraps the host's suite");
    let arch = bounded(
        "dpkg --print-architecture",
        Command::new("dpkg").arg("--print-architecture"),
        Duration::from_secs(10),
    );
    (suite, text(&arch.stdout).trim().to_string())
}

/// The first `deb` source for `suite` in apt's one-line lists or deb822 `.sources` files:
/// `(URI, suite)` pairs in file order.
fn apt_sources() -> Vec<(String, String)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut more: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    more.sort();
    files.extend(more);
    let mut found = Vec::new();
    for f in files {
        let Ok(body) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            found.extend(deb822_sources(&body));
        } else if name.ends_with(".list") {
            found.extend(one_line_sources(&body));
        }
    }
    found
}

/// `deb [options] URI SUITE COMPONENTS...` lines.
fn one_line_sources(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim();
            // Options in brackets may hold spaces: skip past the closing one.
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1.trim(),
                None => rest,
            };
            let mut words = rest.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

/// deb822 stanzas with `Types: deb`, one pair per URI and suite; `Enabled: no` ones skipped.
fn deb822_sources(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in body.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let (uris, suites) = (
            field("URIs").unwrap_or_default(),
            field("Suites").unwrap_or_default(),
        );
        for u in uris.split_whitespace() {
            for s in suites.split_whitespace() {
                out.push((u.to_string(), s.to_string()));
            }
        }
    }
    out
}

/// The tarball of a minimal root of the host's suite, debootstrapped on the first run.
fn cached_root() -> (PathBuf, bool) {
    let (suite, arch) = host_suite_and_arch();
    let key = hex::encode(&sha2::Sha256::digest(format!("minbase {}", INCLUDE.join(",")))[..6]);
    let tarball = Path::new(CACHE_DIR).join(format!("debian-{suite}-{arch}-{key}.tar"));
    if tarball.is_file() {
        return (tarball, true);
    }
    let mirror = apt_sources()
        .into_iter()
        .find(|(uri, s)| *s == suite && (uri.starts_with("http://") || uri.starts_with("https://")))
        .map(|(uri, _)| uri)
        .unwrap_or_else(|| {
            panic!(
                "no http(s) `deb` source for {suite} in /etc/apt/sources.list or \
                 /etc/apt/sources.list.d/: debootstrap needs the host's mirror"
            )
        });
    std::fs::create_dir_all(CACHE_DIR).unwrap();
    let build = tempfile::Builder::new()
        .prefix(".debootstrap-")
        .tempdir_in(CACHE_DIR)
        .unwrap();
    let root = build.path().join("root");
    println!("debootstrap {suite} ({arch}) from {mirror}: not cached yet");
    let out = bounded(
        "debootstrap",
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", INCLUDE.join(",")))
            .arg(format!("--arch={arch}"))
            .args([suite.as_str(), root.to_str().unwrap(), mirror.as_str()]),
        Duration::from_secs(1200),
    );
    assert!(
        out.status.success(),
        "debootstrap failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // What apt downloaded is not needed to boot.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let partial = build.path().join("root.tar");
    let out = bounded(
        "tar (caching the root)",
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&root)
            .arg("-cf")
            .arg(&partial)
            .arg("."),
        Duration::from_secs(600),
    );
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    std::fs::rename(&partial, &tarball).unwrap();
    (tarball, false)
}

/// The package: `$JUJU_BRD_DEB` (CI builds it first), else built now by packaging/build-deb.sh.
fn package() -> PathBuf {
    if let Some(p) = std::env::var_os("JUJU_BRD_DEB") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "JUJU_BRD_DEB={} is not a file", p.display());
        return p;
    }
    common::require_program(
        "cargo-deb",
        "`cargo install cargo-deb` (or set JUJU_BRD_DEB to a .deb built by packaging/build-deb.sh)",
    );
    let out = bounded(
        "packaging/build-deb.sh",
        &mut Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/build-deb.sh"
        )),
        Duration::from_secs(3600),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "packaging/build-deb.sh failed:\n{stdout}{}",
        text(&out.stderr)
    );
    let deb = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deb OK: "))
        .expect("build-deb.sh names the package it built");
    PathBuf::from(deb)
}

/// The directory of one run, with a tmpfs on it: the root unpacks and goes in moments, whatever
/// else the disk is doing. Unmounted and removed when dropped.
struct RunDir(tempfile::TempDir);

impl RunDir {
    fn new() -> RunDir {
        let dir = tempfile::Builder::new()
            .prefix("juju-brd-nspawn-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let out = bounded(
            "mount -t tmpfs",
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs"])
                .arg(dir.path()),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "mount: {}", text(&out.stderr));
        RunDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let out = bounded(
            "umount",
            Command::new("umount").arg(self.0.path()),
            Duration::from_secs(60),
        );
        if !out.status.success() {
            // Still busy (a process of a container that would not die): detach it.
            let _ = bounded(
                "umount --lazy",
                Command::new("umount").arg("--lazy").arg(self.0.path()),
                Duration::from_secs(60),
            );
        }
    }
}

/// A booted container; killed when dropped.
struct Container {
    /// Holds `root/` (the container's) and nspawn's log.
    root: Option<RunDir>,
    nspawn: Child,
    pid1: i32,
    log: PathBuf,
}

impl Container {
    fn boot(root: RunDir, name: &str) -> Container {
        let log = root.path().join("nspawn.log");
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(root.path().join("root"))
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=read-only",
            ])
            .arg(format!("--machine={name}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("systemd-nspawn");
        let mut c = Container {
            root: Some(root),
            nspawn,
            pid1: 0,
            log,
        };
        // The container's init: nspawn's child whose pid in its own namespace is 1.
        let nspawn_pid = c.nspawn.id() as i32;
        let found = common::poll_until(Duration::from_secs(30), || {
            if let Ok(Some(st)) = c.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({st}):\n{}", c.boot_log());
            }
            // Once it has exec'd systemd, its namespaces and root are the container's.
            c.pid1 = init_of(nspawn_pid).unwrap_or(0);
            c.pid1 != 0
                && std::fs::read_to_string(format!("/proc/{}/comm", c.pid1))
                    .is_ok_and(|comm| comm.trim() == "systemd")
        });
        assert!(found, "no container init after 30 s:\n{}", c.boot_log());
        // Until systemd answers on its socket, systemctl fails at once: ask again.
        let mut state = String::new();
        let booted = common::poll_until(Duration::from_secs(90), || {
            let out = c.sh(
                "systemctl is-system-running --wait",
                Duration::from_secs(90),
            );
            state = text(&out.stdout).trim().to_string();
            if !matches!(state.as_str(), "running" | "degraded") {
                state = format!("{state} {}", text(&out.stderr).trim());
                std::thread::sleep(Duration::from_millis(200));
                return false;
            }
            true
        });
        assert!(booted, "not booted after 90 s ({state}):\n{}", c.boot_log());
        if state != "running" {
            let failed = c.sh("systemctl --failed --no-legend", Duration::from_secs(10));
            println!("booted {state}; failed units: {}", text(&failed.stdout));
        }
        c
    }

    fn boot_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn rootfs(&self) -> PathBuf {
        self.root.as_ref().expect("running").path().join("root")
    }

    /// `script` run by /bin/sh inside the container (every namespace of its PID 1) with a clean
    /// environment.
    fn sh(&self, script: &str, limit: Duration) -> Output {
        bounded(
            script,
            Command::new("nsenter")
                .args(["--target", &self.pid1.to_string(), "--all", "--"])
                .args([
                    "/usr/bin/env",
                    "-i",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "LANG=C.UTF-8",
                    "SYSTEMD_PAGER=",
                    "SYSTEMD_COLORS=0",
                    "/bin/sh",
                    "-c",
                    script,
                ]),
            limit,
        )
    }

    /// As [`Container::sh`], which must succeed; its stdout.
    fn ok(&self, script: &str) -> String {
        self.ok_within(script, Duration::from_secs(60))
    }

    fn ok_within(&self, script: &str, limit: Duration) -> String {
        let out = self.sh(script, limit);
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}{}\njournal of juju-brd:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.journal(0)
        );
        text(&out.stdout)
    }

    /// One property of the juju-brd unit.
    fn show(&self, prop: &str) -> String {
        self.ok(&format!("systemctl show -p {prop} --value juju-brd"))
            .trim()
            .to_string()
    }

    /// juju-brd's journal (its own lines and systemd's about it), from line `from` on.
    fn journal(&self, from: usize) -> String {
        let out = self.sh(
            "journalctl -u juju-brd -o cat --no-pager",
            Duration::from_secs(30),
        );
        text(&out.stdout)
            .lines()
            .skip(from)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn journal_mark(&self) -> usize {
        self.journal(0).lines().count()
    }

    /// A `POST /v1/backups` with curl on the API socket; with `wait`, until the job is done.
    fn trigger(&self, wait: bool) -> serde_json::Value {
        let query = if wait { "?wait=true" } else { "" };
        let body = self.ok_within(
            &format!(
                "curl -sS --fail-with-body --max-time 300 --unix-socket {SOCKET} \
                 -X POST 'http://localhost/v1/backups{query}'"
            ),
            Duration::from_secs(310),
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// A backup that must succeed; the archive's path, checked by `juju-brd verify`.
    fn backup(&self) -> String {
        let r = self.trigger(true);
        assert_eq!(r["job"]["state"], "succeeded", "{r}\n{}", self.journal(0));
        let path = r["job"]["archive"]["path"].as_str().unwrap().to_string();
        self.ok(&format!("juju-brd verify {path}"));
        path
    }

    /// The archive directory's entries.
    fn archive_dir(&self) -> Vec<String> {
        self.ok(&format!("ls -A {ARCHIVES}"))
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn archives(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .archive_dir()
            .into_iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .collect();
        v.sort();
        v
    }

    /// Nothing an interrupted backup leaves: no staging folder, no `.part`.
    fn assert_no_leftovers(&self) {
        let entries = self.archive_dir();
        assert!(
            !entries
                .iter()
                .any(|n| n.starts_with(".staging-") || n.ends_with(".part")),
            "left behind in {ARCHIVES}: {entries:?}"
        );
    }

    /// Waits until juju-brd is active under a main PID other than `old` (restarted).
    fn wait_restarted(&self, old: &str, limit: Duration) -> String {
        let mut pid = String::new();
        let up = common::poll_until(limit, || {
            pid = self.show("MainPID");
            pid != old && pid != "0" && self.show("ActiveState") == "active"
        });
        assert!(up, "not restarted within {limit:?}:\n{}", self.journal(0));
        pid
    }

    /// Replaces the config's first line that is `line_now` with `line_new`.
    fn set(&self, line_now: &str, line_new: &str) {
        let path = self.rootfs().join(CONFIG.trim_start_matches('/'));
        let config = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = config.lines().collect();
        let at = lines
            .iter()
            .position(|l| *l == line_now)
            .unwrap_or_else(|| panic!("no line `{line_now}` in {CONFIG}"));
        lines[at] = line_new;
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
}

impl Container {
    /// Ends the container; its root directory is removed when the returned value is dropped.
    fn kill(mut self) -> RunDir {
        self.end();
        self.root.take().expect("the root is kept until now")
    }

    /// No clean shutdown (nothing in it is kept): killing the namespace's init ends every process
    /// in it, and nspawn with them.
    fn end(&mut self) {
        if self.pid1 != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid1),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let end = Instant::now() + Duration::from_secs(30);
        while !matches!(self.nspawn.try_wait(), Ok(Some(_))) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            kill_group(&self.nspawn);
            let _ = self.nspawn.wait();
        }
        self.pid1 = 0;
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.end();
    }
}

/// The child of `parent` that is PID 1 of its own PID namespace.
fn init_of(parent: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if field("PPid:").first().map(String::as_str) == Some(&parent.to_string())
            && field("NSpid:").last().map(String::as_str) == Some("1")
            && field("NSpid:").len() > 1
        {
            return Some(pid);
        }
    }
    None
}

/// The fake state-server the package is installed on: the fixture's tree, an agent unit that
/// holds the SQLite database open in WAL mode and commits twice a second (as jujud does), and a
/// juju-db unit. Neither unit is enabled: once stopped, nothing references them and systemd
/// unloads them, which is what made `systemctl start jujud-machine-*` start nothing.
fn furnish(root: &Path) {
    let write = |rel: &str, body: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(
        "usr/local/bin/fake-jujud",
        &format!(
            "#!/bin/sh\n# Holds the state database open in WAL mode and commits to it twice a second.\n\
             {{ echo 'PRAGMA journal_mode=WAL;'; while :; do \
             echo \"INSERT INTO txns(ts, doc) VALUES (strftime('%s','now'), 'tick');\"; \
             sleep 0.5; done; }} | exec sqlite3 -batch {DB}\n"
        ),
        0o755,
    );
    write(
        "etc/systemd/system/jujud-machine-0.service",
        "[Unit]\nDescription=fake juju agent for machine-0\n\n[Service]\nExecStart=/usr/local/bin/fake-jujud\n",
        0o644,
    );
    write(
        "etc/systemd/system/juju-db.service",
        "[Unit]\nDescription=fake juju-db\n\n[Service]\nExecStart=/bin/sleep infinity\n",
        0o644,
    );
    let out = bounded(
        "juju-brd-fixture",
        Command::new(common::FIXTURE)
            .arg(root)
            .args(["--size-mib", "4"]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "fixture: {}", text(&out.stderr));
}

/// Prints how long each step took, as it goes.
struct Steps {
    started: Instant,
    step: Instant,
}

impl Steps {
    fn done(&mut self, what: &str) {
        println!("{:>6.1} s  {what}", self.step.elapsed().as_secs_f64());
        self.step = Instant::now();
    }
}

#[test]
#[ignore = "needs root, debootstrap and systemd-nspawn: Debian packages debootstrap, systemd-container"]
fn the_package_under_a_booted_systemd() {
    common::require_root("debootstraps and boots a container");
    common::require_debian("debootstrap", "debootstrap");
    common::require_debian("systemd-nspawn", "systemd-container");
    common::require_debian("nsenter", "util-linux");
    common::require_debian("tar", "tar");
    let mut steps = Steps {
        started: Instant::now(),
        step: Instant::now(),
    };
    let deb = package();
    steps.done(&format!("package {}", deb.display()));
    let (tarball, warm) = cached_root();
    steps.done(&format!(
        "root {} ({})",
        tarball.display(),
        if warm { "cached" } else { "debootstrapped now" }
    ));

    // A fresh copy of the root for this run.
    let dir = RunDir::new();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let out = bounded(
        "tar (unpacking the root)",
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
            .arg(&root)
            .arg("-xf")
            .arg(&tarball),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    steps.done("root unpacked");
    assert!(
        !root.join("bin/kill").exists() && !root.join("usr/bin/kill").exists(),
        "the root has /bin/kill (procps): the reload check would not mean anything"
    );
    let name = format!("jbrd-{}", std::process::id());
    std::fs::write(root.join("etc/hostname"), format!("{name}\n")).unwrap();
    furnish(&root);
    std::fs::copy(&deb, root.join("root/juju-brd.deb")).unwrap();
    steps.done("fake state-server and package put in");

    let c = Container::boot(dir, &name);
    steps.done("booted");

    // Install, start the fake state-server, enable and start juju-brd.
    c.ok_within("dpkg -i /root/juju-brd.deb", Duration::from_secs(120));
    c.ok("test -f /lib/systemd/system/juju-brd.service || test -f /usr/lib/systemd/system/juju-brd.service");
    c.ok("systemctl start jujud-machine-0 juju-db");
    common::wait_until(Duration::from_secs(20), "the agent's -shm file", || {
        c.sh(&format!("test -e {DB}-shm"), Duration::from_secs(10))
            .status
            .success()
    });
    c.ok("systemctl enable --now juju-brd");
    // Type=notify: active only once READY=1 came.
    assert_eq!(c.show("ActiveState"), "active");
    assert_eq!(c.show("SubState"), "running");
    let status = c.show("StatusText");
    assert!(
        status.starts_with("idle, no backup yet, next "),
        "status at start-up: {status}"
    );
    steps.done("dpkg -i; systemctl enable --now: active, READY=1, status names the next run");

    // A backup triggered with curl, the shipped config (engine none), the shipped hardening.
    let first = c.backup();
    let status = c.show("StatusText");
    assert!(
        status.starts_with("idle, last backup ok ") && status.contains(", next "),
        "{status}"
    );
    steps.done("curl backup (shipped config)");

    // A good reload: the sqlite engine on the agent's live WAL database.
    c.set("engine = \"none\"", "engine = \"sqlite\"");
    c.set(&format!("# path = \"{DB}\""), &format!("path = \"{DB}\""));
    let pid = c.show("MainPID");
    let mark = c.journal_mark();
    c.ok("systemctl reload juju-brd");
    common::wait_until(Duration::from_secs(10), "the reload to be logged", || {
        c.journal(mark).contains("configuration reloaded")
    });
    assert_eq!(c.show("MainPID"), pid, "reload restarted the daemon");
    assert_eq!(c.show("ActiveState"), "active");
    let live = c.backup();
    c.ok(&format!(
        "tar -xzOf {live} juju-backup/juju-brd-manifest.json | grep -q 'state.db'"
    ));
    steps.done("systemctl reload (good config); sqlite backup of the live WAL database");

    // An idle WAL database (closed cleanly: no -wal, no -shm): SQLite must create the -shm in
    // /var/lib/juju/db, which ProtectSystem=strict makes read-only unless the unit says otherwise.
    c.ok("systemctl stop jujud-machine-0");
    c.ok(&format!(
        "sqlite3 {DB} 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null && rm -f {DB}-wal {DB}-shm"
    ));
    let started = Instant::now();
    let r = c.trigger(true);
    assert_eq!(r["job"]["state"], "succeeded", "the idle WAL database: {r}");
    assert!(started.elapsed() < Duration::from_secs(60));
    c.ok("systemctl start jujud-machine-0");
    steps.done(
        "sqlite backup of an idle WAL database (the -shm created under ProtectSystem=strict)",
    );

    // A broken reload: rejected, the old config kept, the daemon still backs up.
    let config = std::fs::read_to_string(c.rootfs().join(CONFIG.trim_start_matches('/'))).unwrap();
    c.set("keep_last = 7", "keep_last = \"many\"");
    let mark = c.journal_mark();
    c.ok("systemctl reload juju-brd");
    common::wait_until(
        Duration::from_secs(10),
        "the rejection to be logged",
        || c.journal(mark).contains("new configuration rejected"),
    );
    assert_eq!(c.show("MainPID"), pid);
    assert_eq!(c.show("ActiveState"), "active");
    c.backup();
    std::fs::write(c.rootfs().join(CONFIG.trim_start_matches('/')), &config).unwrap();
    c.ok("systemctl reload juju-brd");
    steps.done("systemctl reload (broken config): rejected, old one kept, backups go on");

    // Stop during a pre hook: the hook is not signalled by systemd (KillMode=mixed), the backup
    // completes within the grace, and the daemon exits cleanly.
    c.set("pre = []", "pre = [\"sleep\", \"4\"]");
    c.ok("systemctl reload juju-brd");
    let before = c.archives().len();
    let mark = c.journal_mark();
    let job = c.trigger(false);
    assert_eq!(job["created"], true, "{job}");
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    c.ok_within("systemctl stop juju-brd", Duration::from_secs(150));
    let took = started.elapsed();
    let log = c.journal(mark);
    assert!(log.contains("backup complete"), "{log}");
    assert!(!log.contains("killed by signal"), "{log}");
    assert_eq!(c.archives().len(), before + 1, "{log}");
    assert_eq!(c.show("Result"), "success");
    assert_eq!(c.show("ActiveState"), "inactive");
    c.assert_no_leftovers();
    assert!(took < Duration::from_secs(30), "{took:?}");
    c.set("pre = [\"sleep\", \"4\"]", "pre = []");
    steps.done(&format!(
        "systemctl stop during a pre hook: the backup completed, stopped in {:.1} s",
        took.as_secs_f64()
    ));

    // Stop while the dump waits for a locked database: after the 60 s grace the backup is
    // cancelled, inside TimeoutStopSec; nothing is left behind.
    c.ok("systemctl stop jujud-machine-0");
    c.ok(&format!(
        "systemd-run --unit=jbrd-test-locker --quiet sh -c \"{{ echo 'PRAGMA locking_mode=EXCLUSIVE; \
         BEGIN EXCLUSIVE; INSERT INTO txns(ts) VALUES (1);'; sleep 600; }} | sqlite3 {DB}\""
    ));
    c.ok("systemctl start juju-brd");
    let before = c.archives().len();
    let mark = c.journal_mark();
    c.trigger(false);
    common::wait_until(
        Duration::from_secs(30),
        "the dump to wait for the lock",
        || c.journal(mark).contains("database is locked"),
    );
    let started = Instant::now();
    c.ok_within("systemctl stop juju-brd", Duration::from_secs(150));
    let took = started.elapsed();
    let log = c.journal(mark);
    assert!(log.contains("cancelling it"), "{log}");
    assert!(log.contains("cancelled"), "{log}");
    assert_eq!(c.show("Result"), "success", "{log}");
    assert!(took < Duration::from_secs(90), "{took:?}\n{log}");
    assert_eq!(c.archives().len(), before);
    c.assert_no_leftovers();
    c.ok("systemctl stop jbrd-test-locker");
    c.ok("systemctl start jujud-machine-0");
    steps.done(&format!(
        "systemctl stop while the dump waits for a lock: cancelled after the grace, stopped in {:.1} s",
        took.as_secs_f64()
    ));

    // A watchdog stall and a kill -9: both restarted. (A shorter watchdog and restart delay, and
    // no core dump, for the test.)
    c.ok(
        "mkdir -p /etc/systemd/system/juju-brd.service.d && printf '[Service]\\nWatchdogSec=3s\\n\
         RestartSec=1s\\nLimitCORE=0\\n' > /etc/systemd/system/juju-brd.service.d/test.conf && \
         systemctl daemon-reload && systemctl start juju-brd",
    );
    let restarts: u32 = c.show("NRestarts").parse().unwrap();
    let pid = c.show("MainPID");
    let mark = c.journal_mark();
    c.ok(&format!("kill -STOP {pid}"));
    let pid = c.wait_restarted(&pid, Duration::from_secs(30));
    assert!(
        c.journal(mark).contains("Watchdog timeout"),
        "{}",
        c.journal(mark)
    );
    assert_eq!(c.show("NRestarts").parse::<u32>().unwrap(), restarts + 1);
    assert!(
        c.show("StatusText").contains(", next "),
        "{}",
        c.show("StatusText")
    );
    steps.done("watchdog stall (SIGSTOP past WatchdogSec=3s): killed and restarted");
    c.ok(&format!("kill -9 {pid}"));
    c.wait_restarted(&pid, Duration::from_secs(30));
    assert_eq!(c.show("NRestarts").parse::<u32>().unwrap(), restarts + 2);
    c.backup();
    steps.done("kill -9: restarted, backs up");

    // Restore with the default stop and start commands: the agent runs again afterwards.
    c.ok("systemctl is-active jujud-machine-0 juju-db");
    let out = c.sh(
        &format!("juju-brd restore --yes --address 10.0.0.9 {live} 2>&1"),
        Duration::from_secs(300),
    );
    assert!(out.status.success(), "restore: {}", text(&out.stdout));
    let states = c.sh(
        "systemctl is-active jujud-machine-0 juju-db",
        Duration::from_secs(10),
    );
    assert_eq!(
        text(&states.stdout).split_whitespace().collect::<Vec<_>>(),
        ["active", "active"],
        "after the restore:\n{}",
        text(&out.stdout)
    );
    steps.done("restore with the default stop/start commands: both units active again");

    // Removing and purging the package keeps the archives.
    let kept = c.archives();
    assert!(kept.len() >= 5, "{kept:?}");
    assert!(kept.iter().any(|a| first.ends_with(a.as_str())));
    c.ok_within("dpkg -r juju-brd", Duration::from_secs(120));
    assert_ne!(c.show("ActiveState"), "active");
    c.ok("! test -e /usr/bin/juju-brd");
    assert_eq!(c.archives(), kept);
    c.ok(&format!("test -f {CONFIG}"));
    c.ok_within("dpkg -P juju-brd", Duration::from_secs(120));
    assert_eq!(c.archives(), kept);
    c.ok(&format!("! test -e {CONFIG}"));
    steps.done("dpkg -r, dpkg -P: the archives stay");

    let dir = c.kill();
    steps.done("container killed");
    drop(dir);
    steps.done("its root removed");
    println!(
        "total {:.1} s ({} root)",
        steps.started.elapsed().as_secs_f64(),
        if warm { "cached" } else { "cold" }
    );
}

#[test]
fn apt_sources_in_both_formats() {
    let one = "# comment\ndeb http://deb.debian.org/debian bookworm main\n\
               deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] https://mirror.example/debian bookworm main contrib\n\
               deb-src http://deb.debian.org/debian bookworm main\n";
    assert_eq!(
        one_line_sources(one),
        [
            (
                "http://deb.debian.org/debian".to_string(),
                "bookworm".to_string()
            ),
            (
                "https://mirror.example/debian".to_string(),
                "bookworm".to_string()
            ),
        ]
    );
    let deb822 = "Types: deb\n# a note\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                  Types: deb-src\nURIs: http://src.example\nSuites: bookworm\n\n\
                  Types: deb\nURIs: http://off.example\nSuites: bookworm\nEnabled: no\n";
    assert_eq!(
        deb822_sources(deb822),
        [
            (
                "http://deb.debian.org/debian".to_string(),
                "bookworm".to_string()
            ),
            (
                "http://deb.debian.org/debian".to_string(),
                "bookworm-updates".to_string()
            ),
        ]
    );
}
