//! `juju-brd backup` from the operator's own machine, as `juju backup` was (issue 16). Two
//! state-servers and a workstation are network namespaces of a lab (tests/common/lab.rs): each
//! state-server runs the real daemon (inside its host) and a real sshd letting in `ubuntu` with
//! Juju's client key; the workstation holds Juju client files of both eras, a Juju 1.x
//! `current-environment` + `prod.jenv` for the first state-server and a Juju 2
//! `controllers.yaml` for the second (`other`), and runs `juju-brd backup` with no juju-brd
//! config, in a directory of its own. On the state-server the stream subcommand runs through
//! `sudo -n`, as in a real deployment (the daemon's socket, config and archives are root's).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::lab::{output_within, Host, Lab};
use common::{stderr, wait_until, Env, BIN};

const NEEDS: &str =
    "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo";

/// How long one `juju-brd backup` from the workstation may take in these tests.
const BACKUP_WITHIN: Duration = Duration::from_secs(300);

/// A state-server: its host (sshd), its generated state tree and config, its daemon.
struct Server {
    host: Host,
    env: Env,
    daemon: Child,
}

/// Where every state-server keeps its juju-brd config, as in a real deployment: one path on
/// each host (the host's own /var/lib/juju), so one `--remote-config` serves them all.
const REMOTE_CONFIG: &str = "/var/lib/juju/juju-brd.toml";

impl Server {
    /// A state-server of environment `name` on a new host of the lab.
    fn new(lab: &Lab, host_name: &str, name: &str, blob_mib: u64, authorized: &str) -> Server {
        Server::on(lab.host(host_name), name, blob_mib, authorized, "")
    }

    /// A state-server of environment `name` on `host`, with `blob_mib` MiB of incompressible
    /// data among its tools (so the archive has a known, large size) and `extra` config (TOML
    /// tables).
    fn on(host: Host, name: &str, blob_mib: u64, authorized: &str, extra: &str) -> Server {
        let env = Env::new(2);
        if blob_mib > 0 {
            let blob = env
                .root()
                .join("var/lib/juju/tools/2.9.42-focal-amd64/blob");
            let st = std::process::Command::new("sh")
                .args([
                    "-c",
                    &format!("head -c {}M /dev/urandom > \"$0\"", blob_mib),
                ])
                .arg(&blob)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let d = env.dir.path().display();
        let text = format!(
            "environment = \"{name}\"\narchive_dir = \"{d}/archives\"\nstate_dir = \"{d}/state\"\n\
             [controller]\nmodel_uuid = \"{}\"\n\
             [backup]\nlevel = 1\n\
             [files]\nroot = \"{d}/root\"\n\n\
             [database]\nengine = \"sqlite\"\npath = \"{d}/root/var/lib/juju/db/state.db\"\n\
             [api]\nsocket = \"{d}/juju-brd.sock\"\nsocket_mode = \"0600\"\n\
             [schedule]\ncron = \"\"\n[retention]\nkeep_last = 10\n{extra}",
            uuid_of(name),
        );
        std::fs::write(host.juju_dir().join("juju-brd.toml"), text).unwrap();
        let log = std::fs::File::create(env.path("daemon.log")).unwrap();
        let daemon = host
            .command(BIN)
            .args(["--config", REMOTE_CONFIG, "daemon"])
            .env_remove("JUJU_ENV")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let sock = env.path("juju-brd.sock");
        let mut d = Server { host, env, daemon };
        let mut exited = None;
        wait_until(Duration::from_secs(30), "the daemon's socket", || {
            exited = d.daemon.try_wait().unwrap();
            exited.is_some() || std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        assert!(
            exited.is_none(),
            "the daemon exited: {}",
            std::fs::read_to_string(d.env.path("daemon.log")).unwrap_or_default()
        );
        d.host.start_sshd(authorized);
        d
    }

    fn archives(&self) -> Vec<String> {
        self.env
            .archive_dir_listing()
            .into_iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .collect()
    }

    /// SIGKILL to every sshd of the host, the sessions' too (after the listener is stopped).
    fn kill_all_sshd(&mut self) {
        self.host.stop_sshd();
        let out = output_within(
            std::process::Command::new("ip").args(["netns", "pids", self.host.netns()]),
            Duration::from_secs(10),
        )
        .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim().starts_with("sshd") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid.parse().unwrap()),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn uuid_of(name: &str) -> String {
    match name {
        "prod" => "0b5b3c4e-aaaa-4bbb-8ccc-111111111111".into(),
        _ => "7f1c2d3e-0000-4000-8000-333333333333".into(),
    }
}

/// The workstation: an operator's home with Juju's client files and key, and a working
/// directory where archives land.
struct Workstation {
    host: Host,
    dir: tempfile::TempDir,
}

impl Workstation {
    fn new(lab: &Lab, key: &Path, prod: &Server, other: &Server) -> Workstation {
        Workstation::with(lab, key, &[prod.host.ip()], &other.host.ip())
    }

    /// A workstation whose `prod` environment records `prod_ips` and `other` `other_ip`.
    fn with(lab: &Lab, key: &Path, prod_ips: &[String], other_ip: &str) -> Workstation {
        let host = lab.host("ws");
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let juju1 = home.join(".juju");
        let juju2 = home.join(".local/share/juju");
        for d in [
            juju1.join("environments"),
            juju1.join("ssh"),
            juju2.join("ssh"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Juju 1.x: `juju switch prod` wrote current-environment; bootstrap wrote prod.jenv.
        std::fs::write(juju1.join("current-environment"), "prod\n").unwrap();
        std::fs::write(
            juju1.join("environments/prod.jenv"),
            format!(
                "user: admin\npassword: not-used-here\nenviron-uuid: {}\n\
                 state-servers:\n{}ca-cert: |\n  -----BEGIN CERTIFICATE-----\n  MIIB\n  -----END CERTIFICATE-----\n\
                 bootstrap-config:\n  name: prod\n  type: manual\n",
                uuid_of("prod"),
                prod_ips
                    .iter()
                    .map(|ip| format!("- {ip}:17070\n"))
                    .collect::<String>()
            ),
        )
        .unwrap();
        // Juju 2: a controller `other`, not the current one (the 1.x one is).
        std::fs::write(
            juju2.join("controllers.yaml"),
            format!(
                "controllers:\n  other:\n    uuid: {}\n    api-endpoints: ['{}:17070']\n    ca-cert: |\n      -----BEGIN CERTIFICATE-----\n      -----END CERTIFICATE-----\n    cloud: manual\n",
                uuid_of("other"),
                other_ip
            ),
        )
        .unwrap();
        for d in [&juju1, &juju2] {
            let k = d.join("ssh/juju_id_rsa");
            std::fs::copy(key, &k).unwrap();
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::create_dir(dir.path().join("cwd")).unwrap();
        Workstation { host, dir }
    }

    fn cwd(&self) -> PathBuf {
        self.dir.path().join("cwd")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cwd())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The `sh -c` line that runs `juju-brd backup ARGS` in the working directory, as an
    /// operator would: no juju-brd config, HOME with the Juju client files.
    fn line(&self, remote_bin: &str, args: &str) -> String {
        // The machine running the tests has no /etc/juju-brd/juju-brd.toml, so no flag is needed
        // to be a workstation; where it has one, --client says so.
        let client = if Path::new("/etc/juju-brd/juju-brd.toml").exists() {
            " --client"
        } else {
            ""
        };
        format!(
            "cd '{}' && exec '{BIN}' backup{client} --remote-juju-brd '{remote_bin}' --remote-config {REMOTE_CONFIG} {args}",
            self.cwd().display(),
        )
    }

    fn backup(&self, remote_bin: &str, vars: &[(&str, &str)]) -> Output {
        let mut cmd = self.host.command("sh");
        cmd.args(["-c", &self.line(remote_bin, "")])
            .env("HOME", self.home())
            .env_remove("JUJU_BRD_CONFIG")
            .env_remove("JUJU_ENV")
            .env_remove("JUJU_HOME")
            .env_remove("JUJU_DATA")
            .env_remove("XDG_DATA_HOME")
            .env_remove("JUJU_CONTROLLER")
            .envs(vars.iter().copied());
        output_within(&mut cmd, BACKUP_WITHIN).unwrap_or_else(|e| panic!("{e}"))
    }
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn sha256_of(path: &Path) -> String {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The archive arrived whole: in the working directory under the daemon's name (or its `-2`
/// when another environment's archive of the same second is already there), mode 0600, the
/// same bytes as the state-server's copy, its sidecar beside it, and `juju-brd verify` passes.
fn assert_landed(ws: &Workstation, server: &Server, name: &str) {
    assert!(
        name.starts_with("juju-backup-") && name.ends_with(".tar.gz"),
        "{name}"
    );
    let here = ws.cwd().join(name);
    let mode = std::fs::metadata(&here).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{name}");
    let sha = sha256_of(&here);
    assert!(
        server
            .archives()
            .iter()
            .any(|a| sha256_of(&server.env.archives().join(a)) == sha),
        "{name}: not the bytes of any of the state-server's archives {:?}",
        server.archives()
    );
    assert!(ws.cwd().join(format!("{name}.sha256")).exists());
    let out = std::process::Command::new(BIN)
        .arg("verify")
        .arg(&here)
        .env("JUJU_BRD_CONFIG", "/nonexistent/juju-brd.toml")
        .output()
        .unwrap();
    assert!(out.status.success(), "verify {name}: {}", stderr(&out));
}

/// Slows the state-server's outgoing traffic to 16 Mbit/s (a token bucket on its link, `tc` of
/// iproute2), so a transfer can be cut in the middle; `None` lifts it.
fn throttle(host: &Host, rate: Option<&str>) {
    let mut cmd = host.command("tc");
    match rate {
        Some(r) => cmd.args([
            "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", r, "burst", "64kb",
            "latency", "2s",
        ]),
        None => cmd.args(["qdisc", "del", "dev", "eth0", "root"]),
    };
    let out = output_within(&mut cmd, Duration::from_secs(10)).unwrap();
    assert!(out.status.success(), "tc: {}", stderr(&out));
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn backup_from_a_workstation_current_env_juju_env_unknown_env_and_changed_host_key() {
    let _ = NEEDS;
    let lab = Lab::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = Lab::keypair(keys.path());
    let mut prod = Server::new(&lab, "prod-0", "prod", 0, &public);
    let other = Server::new(&lab, "other-0", "other", 0, &public);
    let ws = Workstation::new(&lab, &key, &prod, &other);

    // The current environment (Juju 1.x `juju switch prod`): the archive lands here.
    let started = Instant::now();
    let out = ws.backup(BIN, &[]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let name = last_line(&out);
    assert_landed(&ws, &prod, &name);
    let err = stderr(&out);
    assert!(err.contains("no juju-brd config on this machine") || err.contains("--client"));
    assert!(
        err.contains("seen for the first time and recorded in")
            && err.contains(".juju/ssh/known_hosts"),
        "{err}"
    );
    assert_eq!(ws.files(), [name.clone(), format!("{name}.sha256")]);
    eprintln!(
        "current environment: {name} in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // JUJU_ENV=other: the Juju 2 controller's state-server, not prod's.
    let before_prod = prod.archives();
    let out = ws.backup(BIN, &[("JUJU_ENV", "other")]);
    assert!(
        out.status.success(),
        "backup JUJU_ENV=other: {}",
        stderr(&out)
    );
    let other_name = last_line(&out);
    assert_landed(&ws, &other, &other_name);
    assert_eq!(prod.archives(), before_prod, "prod was asked");
    assert!(stderr(&out).contains(&other.host.ip()), "{}", stderr(&out));
    let known =
        std::fs::read_to_string(ws.home().join(".local/share/juju/ssh/known_hosts")).unwrap();
    assert!(known.contains(&other.host.ip()), "{known}");

    // An unknown environment: refused, naming the known ones; nothing written.
    let files = ws.files();
    let out = ws.backup(BIN, &[("JUJU_ENV", "staging")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("unknown environment `staging` (JUJU_ENV)")
            && err.contains("prod (Juju 1.x), other (Juju 2+)"),
        "{err}"
    );
    assert_eq!(ws.files(), files);

    // The state-server's host key changed (rebuilt, or someone in between): refused, no
    // backup asked for, nothing written.
    prod.host.regenerate_host_key();
    let before = prod.archives();
    let out = ws.backup(BIN, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is not the one recorded in") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(ws.files(), files);
    assert_eq!(prod.archives(), before);
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn ctrl_c_or_sshd_killed_mid_transfer_leaves_no_archive_and_a_rerun_succeeds() {
    let lab = Lab::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = Lab::keypair(keys.path());
    let mut prod = Server::new(&lab, "prod-0", "prod", 24, &public);
    let other = Server::new(&lab, "other-0", "other", 0, &public);
    let ws = Workstation::new(&lab, &key, &prod, &other);
    throttle(&prod.host, Some("16mbit"));

    // Ctrl-C on the workstation mid-transfer: nothing left.
    let (child, cut_at) = start_and_wait_for_part(&ws);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the interrupted transfer succeeded");
    let err = stderr(&out);
    assert!(err.contains("interrupted by signal 2"), "{err}");
    assert!(ws.files().is_empty(), "left after Ctrl-C: {:?}", ws.files());
    eprintln!(
        "Ctrl-C at {cut_at} bytes: {}",
        err.lines().last().unwrap_or("")
    );

    // Every sshd of the state-server killed mid-transfer: nothing left.
    let (child, cut_at) = start_and_wait_for_part(&ws);
    prod.kill_all_sshd();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the cut transfer succeeded");
    let err = stderr(&out);
    assert!(err.contains("interrupted"), "{err}");
    assert!(
        ws.files().is_empty(),
        "left after the cut (at {cut_at} bytes): {:?}",
        ws.files()
    );
    eprintln!(
        "cut at {cut_at} bytes: {}",
        err.lines().last().unwrap_or("")
    );

    // Again, with sshd back (and the link at full speed): succeeds.
    throttle(&prod.host, None);
    prod.host.start_sshd(&public);
    let out = ws.backup(BIN, &[]);
    assert!(out.status.success(), "re-run: {}", stderr(&out));
    let name = last_line(&out);
    assert_landed(&ws, &prod, &name);
    assert_eq!(ws.files(), [name.clone(), format!("{name}.sha256")]);
}

/// Starts `juju-brd backup` on the workstation and returns once more than 2 MiB of the archive
/// have arrived (in its `.part`), with how much.
fn start_and_wait_for_part(ws: &Workstation) -> (Child, u64) {
    let mut cmd = ws.host.command("sh");
    cmd.args(["-c", &ws.line(BIN, "")])
        .env("HOME", ws.home())
        .env_remove("JUJU_BRD_CONFIG")
        .env_remove("JUJU_ENV")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let part = || {
        ws.files()
            .into_iter()
            .find(|f| f.ends_with(".part"))
            .map(|f| std::fs::metadata(ws.cwd().join(f)).map_or(0, |m| m.len()))
    };
    let mut ended = None;
    wait_until(Duration::from_secs(120), "2 MiB of the transfer", || {
        ended = child.try_wait().unwrap();
        ended.is_some() || part().is_some_and(|n| n > 2 << 20)
    });
    if ended.is_some() {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the backup ended before the cut ({}): {}",
            out.status,
            stderr(&out)
        );
    }
    let at = part().unwrap_or(0);
    (child, at)
}

/// The closing figures: a ~200 MiB archive from the state-server to the workstation, its
/// transfer time and the workstation process's peak RSS (VmHWM, read until it exits).
#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn figures_a_200_mib_archive_to_the_workstation() {
    let lab = Lab::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = Lab::keypair(keys.path());
    let prod = Server::new(&lab, "prod-0", "prod", 200, &public);
    let other = Server::new(&lab, "other-0", "other", 0, &public);
    let ws = Workstation::new(&lab, &key, &prod, &other);

    let mut cmd = ws.host.command("sh");
    cmd.args(["-c", &ws.line(BIN, "")])
        .env("HOME", ws.home())
        .env_remove("JUJU_BRD_CONFIG")
        .env_remove("JUJU_ENV")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut peak_kib = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let is_us = status.lines().any(|l| l == "Name:\tjuju-brd");
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                if is_us {
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        assert!(started.elapsed() < BACKUP_WITHIN, "backup still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = started.elapsed();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let name = last_line(&out);
    assert_landed(&ws, &prod, &name);
    let size = std::fs::metadata(ws.cwd().join(&name)).unwrap().len();
    let err = stderr(&out);
    let transfer = err
        .lines()
        .find(|l| l.starts_with("received "))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "FIGURES: archive {:.1} MiB; {transfer}; whole command {:.1}s; workstation juju-brd peak RSS {:.1} MiB",
        size as f64 / 1048576.0,
        total.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    assert!(size > 190 << 20, "archive only {size} bytes");
    assert!(peak_kib > 0, "peak RSS never read");
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB: buffered?");
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn under_ha_a_node_that_does_not_take_backups_sends_the_workstation_to_the_one_that_does() {
    let lab = Lab::new();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = Lab::keypair(keys.path());
    let (a, b) = (lab.host("prod-0"), lab.host("prod-1"));
    let (a_ip, b_ip) = (a.ip(), b.ip());
    // Two state-servers of `prod`; prod-1 is `ha.prefer` (its address answers: its sshd).
    let ha = |me: &str| format!("[ha]\nself_address = \"{me}:22\"\nprefer = \"{b_ip}:22\"\n");
    let first = Server::on(a, "prod", 0, &public, &ha(&a_ip));
    let second = Server::on(b, "prod", 0, &public, &ha(&b_ip));
    let other = Server::new(&lab, "other-0", "other", 0, &public);
    // The .jenv lists prod-0 first, so it is asked first.
    let ws = Workstation::with(&lab, &key, &[a_ip.clone(), b_ip.clone()], &other.host.ip());
    let out = ws.backup(BIN, &[]);
    assert!(out.status.success(), "backup: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{a_ip} does not take backups (the preferred node {b_ip}:22 is up); going to {b_ip}"
        )),
        "{err}"
    );
    let name = last_line(&out);
    assert_landed(&ws, &second, &name);
    assert!(first.archives().is_empty(), "prod-0 took a backup");
}
