//! Self-tests of the lab harness (tests/common/lab.rs): real sshds in network namespaces, a real
//! ssh client in another one, no mocks.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lab::{namespaces_named, output_within, Host, Lab};
use common::poll_until;

/// `ssh` from `client` to `login` (`user@ip`) with `key`, trusting only the keys in
/// `known_hosts`, running `remote`: no agent, no config files, no prompts, 2 s to connect.
fn ssh(client: &Host, key: &Path, known_hosts: &Path, login: &str, remote: &str) -> Output {
    let mut cmd = client.command("ssh");
    cmd.env_remove("SSH_AUTH_SOCK")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=2"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(key)
        .args([login, remote]);
    output_within(&mut cmd, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"))
}

/// A known_hosts file in `dir` holding the lines of `hosts`.
fn known_hosts(dir: &Path, hosts: &[&Host]) -> PathBuf {
    let path = dir.join("known_hosts");
    let lines: String = hosts.iter().map(|h| h.known_hosts_line() + "\n").collect();
    std::fs::write(&path, lines).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The links of the machine's own network namespace.
fn root_links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    text(&out.stdout)
}

/// A lab with `server` running sshd for the returned key, `client`, and a known_hosts file
/// trusting the server, all in `dir`.
fn one_server(lab: &Lab, dir: &Path) -> (Host, Host, PathBuf, PathBuf) {
    let (key, public) = Lab::keypair(dir);
    let mut server = lab.host("server");
    let client = lab.host("client");
    server.start_sshd(&public);
    let known = known_hosts(dir, &[&server]);
    (server, client, key, known)
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn three_hosts_each_show_their_own_var_lib_juju_over_ssh_and_sudo() {
    let machine_had_juju = Path::new("/var/lib/juju").exists();
    let links_before = root_links();
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = Lab::keypair(tmp.path());
    let mut machines: Vec<Host> = ["m0", "m1", "m2"].iter().map(|n| lab.host(n)).collect();
    let client = lab.host("client");
    for m in &mut machines {
        let marker = m.juju_dir().join("marker");
        std::fs::write(&marker, format!("I am {}\n", m.name())).unwrap();
        // Root's only, as Juju's own files are: reading it takes sudo.
        std::fs::set_permissions(&marker, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        m.start_sshd(&public);
    }
    let known = known_hosts(tmp.path(), &machines.iter().collect::<Vec<_>>());

    for m in &machines {
        let out = ssh(
            &client,
            &key,
            &known,
            &format!("ubuntu@{}", m.ip()),
            "id -un && sudo -n cat /var/lib/juju/marker && touch ~/was-here",
        );
        assert!(out.status.success(), "{}: {}", m.name(), text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("ubuntu\nI am {}\n", m.name()));
        // The login's home is the host's home_dir, and what it writes there is ubuntu's.
        let touched = std::fs::metadata(m.home_dir().join("was-here")).unwrap();
        assert_eq!(touched.uid(), lab.ubuntu_id());
        // Host::command sees the same view as the sshd's sessions.
        let out = m
            .command("cat")
            .arg("/var/lib/juju/marker")
            .output()
            .unwrap();
        assert_eq!(text(&out.stdout), format!("I am {}\n", m.name()));
    }

    // No way out of the lab: a host knows its subnet and nothing else.
    let routes = client.command("ip").args(["route"]).output().unwrap();
    assert_eq!(
        text(&routes.stdout).trim(),
        format!(
            "{} dev eth0 proto kernel scope link src {}",
            lab.subnet(),
            client.ip()
        )
    );
    // Nothing was added to the machine: no link in its namespace, no /var/lib/juju.
    assert_eq!(root_links(), links_before);
    assert_eq!(Path::new("/var/lib/juju").exists(), machine_had_juju);
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn a_wrong_key_and_root_are_refused() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let (server, client, key, known) = one_server(&lab, tmp.path());
    let (other_key, _) = Lab::keypair(tmp.path());
    let ubuntu = format!("ubuntu@{}", server.ip());

    let ok = ssh(&client, &key, &known, &ubuntu, "true");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let wrong = ssh(&client, &other_key, &known, &ubuntu, "true");
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&wrong.stderr)
    );
    // The key is ubuntu's alone.
    let root = ssh(
        &client,
        &key,
        &known,
        &format!("root@{}", server.ip()),
        "true",
    );
    assert!(!root.status.success());
    assert!(
        text(&root.stderr).contains("Permission denied (publickey)"),
        "{}",
        text(&root.stderr)
    );
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn a_regenerated_host_key_is_refused_by_strict_host_key_checking() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, client, key, known) = one_server(&lab, tmp.path());
    let ubuntu = format!("ubuntu@{}", server.ip());
    let old_line = server.known_hosts_line();

    server.regenerate_host_key();
    assert_ne!(server.known_hosts_line(), old_line);
    let out = ssh(&client, &key, &known, &ubuntu, "true");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Host key verification failed"),
        "{}",
        text(&out.stderr)
    );
    // Trusting the new key lets the client in again.
    let known = known_hosts(tmp.path(), &[&server]);
    let out = ssh(&client, &key, &known, &ubuntu, "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn a_frozen_sshd_times_out_a_stopped_one_refuses_and_both_come_back() {
    let lab = Lab::new();
    let tmp = tempfile::tempdir().unwrap();
    let (mut server, client, key, known) = one_server(&lab, tmp.path());
    let ubuntu = format!("ubuntu@{}", server.ip());

    server.freeze_sshd();
    let start = Instant::now();
    let out = ssh(&client, &key, &known, &ubuntu, "true");
    let took = start.elapsed();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    // ConnectTimeout=2 also bounds the wait for the banner that never comes.
    assert!(took < Duration::from_secs(8), "ssh gave up after {took:?}");
    server.thaw_sshd();
    let out = ssh(&client, &key, &known, &ubuntu, "true");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let line = server.known_hosts_line();
    server.stop_sshd();
    let out = ssh(&client, &key, &known, &ubuntu, "true");
    assert!(
        text(&out.stderr).contains("Connection refused"),
        "{}",
        text(&out.stderr)
    );
    // A restart keeps the host key, so the client still trusts it, and takes the keys given.
    let (new_key, public) = Lab::keypair(tmp.path());
    server.start_sshd(&public);
    assert_eq!(server.known_hosts_line(), line);
    let out = ssh(&client, &new_key, &known, &ubuntu, "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn dropping_the_lab_kills_its_processes_and_deletes_its_namespaces_and_files() {
    // A crashed run's leftovers: a lab namespace of a pid that cannot exist, with a process in it,
    // and its temp dir.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let stale = format!("jbrdlab-{}-0-hub", pid_max.trim());
    let st = Command::new("ip").args(["netns", "add", &stale]).status();
    assert!(st.unwrap().success());
    let stale_dir = std::env::temp_dir().join(format!("jbrdlab-{}-0-x", pid_max.trim()));
    std::fs::create_dir_all(stale_dir.join("m0/juju")).unwrap();
    let mut stale_sleeper = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "1000"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let lab = Lab::new();
    // Lab::new swept it (or a lab of a test running beside this one did).
    assert!(namespaces_named(&stale).is_empty());
    assert!(!stale_dir.exists());
    assert!(poll_until(Duration::from_secs(5), || stale_sleeper
        .try_wait()
        .unwrap()
        .is_some()));

    let prefix = lab.prefix().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = Lab::keypair(tmp.path());
    let mut host = lab.host("m0");
    host.start_sshd(&public);
    let mut sleeper = host.spawn(&["sleep", "1000"]);
    let host_dir = host.juju_dir();
    let mut names = namespaces_named(&prefix);
    names.sort();
    assert_eq!(names, [format!("{prefix}hub"), format!("{prefix}m0")]);

    drop(host);
    drop(lab);
    assert_eq!(namespaces_named(&prefix), Vec::<String>::new());
    assert!(poll_until(Duration::from_secs(5), || sleeper
        .try_wait()
        .unwrap()
        .is_some()));
    assert!(!host_dir.exists());
}
