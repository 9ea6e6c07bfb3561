//! A lab of "machines" for tests that SSH from one host to others: each [`Host`] is a network
//! namespace wired into the lab's own bridge (which lives in a private hub namespace, so nothing
//! is added to the machine's network namespace), with a private mount namespace in which it has
//! its own `/var/lib/juju`, `/home`, `/var/log`, `/run` and an `ubuntu` user (passwordless sudo),
//! and can run a real sshd on its address.
//!
//! ```ignore
//! let lab = Lab::new();
//! let mut server = lab.host("m0");
//! let client = lab.host("client");
//! let (key, public) = Lab::keypair(dir);
//! server.start_sshd(&public);
//! std::fs::write(dir.join("known_hosts"), server.known_hosts_line() + "\n")?;
//! client.command("ssh").args(["-i", KEY, "-o", "UserKnownHostsFile=...", "ubuntu@IP", "..."]);
//! ```
//!
//! Everything (processes, namespaces, the temp dir) goes when the lab and its hosts are dropped;
//! dropping a host kills its processes and deletes its namespace. Needs root and the Debian
//! packages iproute2, openssh-server, openssh-client, sudo and util-linux (./test.sh installs
//! them); [`Lab::new`] panics naming what is missing.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::{poll_until, require_debian, require_root};

/// The start of every namespace name a lab makes: `jbrdlab-PID-N-` (see [`Lab::prefix`]).
const NAME_ROOT: &str = "jbrdlab";

const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to answer after it is started.
const SSHD_READY_WITHIN: Duration = Duration::from_secs(10);

/// How long a setup command (ip, mount, ssh-keygen) may take.
const SETUP_WITHIN: Duration = Duration::from_secs(30);

/// How long killing a namespace's processes, or a process's exit, may take.
const KILL_WITHIN: Duration = Duration::from_secs(5);

/// Numbers the labs of this process, for unique names and subnets.
static LABS: AtomicU32 = AtomicU32::new(0);

/// A lab: its hub namespace with a bridge, its subnet, its temp dir. Its hosts hold a share of
/// it, so it may be dropped before them: what is left goes when the last of them does.
pub struct Lab {
    shared: Arc<Shared>,
}

/// What the lab and its hosts share; dropping it removes whatever of the lab is left.
struct Shared {
    prefix: String,
    /// The first three octets of the lab's /24.
    net: [u8; 3],
    dir: tempfile::TempDir,
    /// The uid and gid of the hosts' `ubuntu` user.
    ubuntu_id: u32,
    /// Host names taken so far, in order: host `i` has address `.(i + 2)` (`.1` is left free).
    names: Mutex<Vec<String>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Hosts clean up after themselves; this takes the hub and anything a panic left half made.
        for ns in namespaces_named(&self.prefix) {
            clear_namespace(&ns);
        }
    }
}

impl Lab {
    /// A new lab with its hub namespace and bridge; panics unless root and the tools are there.
    pub fn new() -> Lab {
        require_tools();
        sweep_dead_labs();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("{NAME_ROOT}-{pid}-{n}-");
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir().unwrap();
        // sshd reads authorized keys as the user, so the user must be able to reach them.
        set_mode(dir.path(), 0o755);
        let shared = Shared {
            net: subnet(pid, n),
            ubuntu_id: free_id(&read("/etc/passwd"), &read("/etc/group")),
            prefix,
            dir,
            names: Mutex::new(Vec::new()),
        };
        let lab = Lab {
            shared: Arc::new(shared),
        };
        lab.make_hub();
        lab
    }

    /// The start of every namespace name of this lab (it ends with `-`).
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The lab's subnet, e.g. `10.17.3.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.shared.net;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The uid (and gid) of the hosts' `ubuntu` user.
    pub fn ubuntu_id(&self) -> u32 {
        self.shared.ubuntu_id
    }

    /// An ed25519 key pair without passphrase in `dir` (`id_ed25519`, or `id_ed25519-N` when
    /// taken): the private key's path and the public key's line.
    pub fn keypair(dir: &Path) -> (PathBuf, String) {
        let key = (1..)
            .map(|i| match i {
                1 => dir.join("id_ed25519"),
                _ => dir.join(format!("id_ed25519-{i}")),
            })
            .find(|p| !p.exists())
            .unwrap();
        ssh_keygen(&key, "juju-brd-lab");
        let public = read(key.with_extension("pub"));
        (key, public.trim_end().to_string())
    }

    /// A new machine named `name` (lowercase letters, digits, `-`), wired into the lab.
    pub fn host(&self, name: &str) -> Host {
        let number = self.reserve(name);
        let [a, b, c] = self.shared.net;
        let ip = format!("{a}.{b}.{c}.{}", number + 2);
        let ns = format!("{}{name}", self.shared.prefix);
        let dir = self.shared.dir.path().join(name);
        self.wire(&ns, &ip, &format!("p{number}"));
        make_host_dir(&dir, self.shared.ubuntu_id);
        let holder = spawn_holder(&ns);
        let host = Host {
            _lab: self.shared.clone(),
            name: name.to_string(),
            ns,
            ip,
            dir,
            holder,
            sshd: None,
        };
        host.mount_view();
        host
    }

    fn hub(&self) -> String {
        format!("{}hub", self.shared.prefix)
    }

    /// The hub namespace and its bridge, which every host's veth joins.
    fn make_hub(&self) {
        let hub = self.hub();
        // A crashed run whose pid came back may have left one of that name.
        clear_namespace(&hub);
        run(Command::new("ip").args(["netns", "add", &hub]));
        ip_in(&hub, &["link", "add", "br0", "type", "bridge"]);
        ip_in(&hub, &["link", "set", "br0", "up"]);
    }

    /// Takes `name` and returns its number in the lab (from 0), which gives its address.
    fn reserve(&self, name: &str) -> usize {
        assert!(
            !name.is_empty()
                && name.len() <= 20
                && name != "hub"
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "host name {name:?}: want 1 to 20 of a-z, 0-9, - (and not \"hub\")"
        );
        let mut names = self.shared.names.lock().unwrap();
        assert!(!names.iter().any(|n| n == name), "host {name:?} exists");
        assert!(names.len() < 250, "a lab has room for 250 hosts");
        names.push(name.to_string());
        names.len() - 1
    }

    /// Namespace `ns` with loopback up and `eth0` at `ip`, a veth whose other end, `port`, is on
    /// the hub's bridge.
    fn wire(&self, ns: &str, ip: &str, port: &str) {
        let hub = self.hub();
        // A crashed run whose pid came back may have left one of that name.
        clear_namespace(ns);
        run(Command::new("ip").args(["netns", "add", ns]));
        ip_in(ns, &["link", "set", "lo", "up"]);
        // Made in the hub with its peer sent straight to the host: neither end ever exists in
        // the machine's own namespace.
        ip_in(
            &hub,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        ip_in(&hub, &["link", "set", port, "master", "br0", "up"]);
        ip_in(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ip_in(ns, &["link", "set", "eth0", "up"]);
    }
}

/// One machine of a lab. Dropping it kills its processes and deletes its namespace.
pub struct Host {
    /// Keeps the hub and the temp dir for as long as this host lives.
    _lab: Arc<Shared>,
    name: String,
    ns: String,
    ip: String,
    /// Host-side: `juju/`, `home/`, `log/`, `etc/`, `ssh/`, `varlib/` (see [`make_host_dir`]).
    dir: PathBuf,
    /// `sleep infinity` in the host's namespaces: holds its mount namespace for every command.
    holder: Child,
    sshd: Option<Child>,
}

impl Drop for Host {
    fn drop(&mut self) {
        clear_namespace(&self.ns);
        // Reap what was ours, killed above with the rest of the namespace.
        reap(&mut self.holder);
        if let Some(mut sshd) = self.sshd.take() {
            reap(&mut sshd);
        }
    }
}

impl Host {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address in the lab's subnet.
    pub fn ip(&self) -> String {
        self.ip.clone()
    }

    /// Its network namespace's name (for `ip -n`).
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Host-side path of what the host sees as `/var/lib/juju`.
    pub fn juju_dir(&self) -> PathBuf {
        self.dir.join("juju")
    }

    /// Host-side path of what the host sees as `/home/ubuntu`.
    pub fn home_dir(&self) -> PathBuf {
        self.dir.join("home/ubuntu")
    }

    /// Host-side path of what the host sees as `/var/log`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The argv prefix that runs a program inside this host (its network namespace and file
    /// system view), e.g. as the wrapper of [`super::Env::run_bounded_with`].
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--target={}", self.holder.id()),
            "--mount".into(),
            "--net".into(),
            "--".into(),
        ]
    }

    /// `program` run inside this host. It starts in `/` (entering a mount namespace moves
    /// there): a directory set on the `Command` is lost; use `sh -c 'cd DIR && ...'`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let wrapper = self.wrapper();
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(program);
        cmd
    }

    /// A long-running `argv` inside this host, stdin from /dev/null, output inherited; killed
    /// when the host is dropped.
    pub fn spawn(&self, argv: &[&str]) -> Child {
        self.command(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {}: {e}", self.name))
    }

    /// Starts sshd on `<ip>:22` letting in `ubuntu` with `authorized_keys` (lines), and waits
    /// until it answers with its host key. The host key is made on the first start and kept.
    pub fn start_sshd(&mut self, authorized_keys: &str) {
        std::fs::write(self.ssh_path("authorized_keys.ubuntu"), authorized_keys).unwrap();
        self.launch_sshd();
    }

    /// Stops sshd (SIGTERM, SIGKILL after 5 s) and waits for it. Existing sessions live on,
    /// as with `systemctl stop ssh`.
    pub fn stop_sshd(&mut self) {
        let mut sshd = self
            .sshd
            .take()
            .unwrap_or_else(|| panic!("sshd is not running on {}", self.name));
        let pid = Pid::from_raw(sshd.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        // A frozen sshd must run to act on the SIGTERM.
        let _ = kill(pid, Signal::SIGCONT);
        if !poll_until(KILL_WITHIN, || sshd.try_wait().unwrap().is_some()) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        reap(&mut sshd);
    }

    /// Stops the listening sshd (SIGSTOP): the kernel still accepts connections, nobody answers.
    pub fn freeze_sshd(&self) {
        let pid = self.sshd_pid();
        kill(pid, Signal::SIGSTOP).unwrap();
        // The signal is delivered asynchronously: return once it has taken hold.
        assert!(
            poll_until(KILL_WITHIN, || process_state(pid) == Some('T')),
            "sshd on {} did not stop",
            self.name
        );
    }

    /// Lets a frozen sshd go on (SIGCONT).
    pub fn thaw_sshd(&self) {
        kill(self.sshd_pid(), Signal::SIGCONT).unwrap();
    }

    /// A new host key; sshd, if it was running, is restarted with it.
    pub fn regenerate_host_key(&mut self) {
        let running = self.sshd.is_some();
        if running {
            self.stop_sshd();
        }
        let key = self.ssh_path("ssh_host_ed25519_key");
        for path in [key.clone(), key.with_extension("pub")] {
            if path.exists() {
                std::fs::remove_file(path).unwrap();
            }
        }
        ssh_keygen(&key, &self.name);
        if running {
            self.launch_sshd();
        }
    }

    /// The `known_hosts` line of its sshd: `<ip> ssh-ed25519 AAAA...`.
    pub fn known_hosts_line(&self) -> String {
        let public = read(self.ssh_path("ssh_host_ed25519_key.pub"));
        let mut fields = public.split_whitespace();
        let (kind, blob) = (fields.next().unwrap(), fields.next().unwrap());
        format!("{} {kind} {blob}", self.ip)
    }

    /// What its sshd has logged (all starts so far).
    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.ssh_path("sshd.log")).unwrap_or_default()
    }

    fn ssh_path(&self, name: &str) -> PathBuf {
        self.dir.join("ssh").join(name)
    }

    fn sshd_pid(&self) -> Pid {
        let sshd = self
            .sshd
            .as_ref()
            .unwrap_or_else(|| panic!("sshd is not running on {}", self.name));
        // nsenter execs sshd (it forks only to enter a pid namespace): the child is the listener.
        Pid::from_raw(sshd.id() as i32)
    }

    /// Starts sshd on the existing config and keys, and waits until it answers.
    fn launch_sshd(&mut self) {
        assert!(self.sshd.is_none(), "sshd is running on {}", self.name);
        let key = self.ssh_path("ssh_host_ed25519_key");
        if !key.exists() {
            ssh_keygen(&key, &self.name);
        }
        let config = self.ssh_path("sshd_config");
        std::fs::write(&config, self.sshd_config()).unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.ssh_path("sshd.log"))
            .unwrap();
        let child = self
            .command(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.sshd = Some(child);
        self.wait_sshd_answers();
    }

    fn sshd_config(&self) -> String {
        let ssh = self.dir.join("ssh");
        let ssh = ssh.display();
        // %u: only ubuntu has a key file, so root (prohibit-password) has no way in.
        // StrictModes no: the key files are under /tmp, world-writable, which it refuses.
        // sftp: scp speaks it since OpenSSH 9.
        format!(
            "ListenAddress {ip}:22\n\
             HostKey {ssh}/ssh_host_ed25519_key\n\
             PidFile {ssh}/sshd.pid\n\
             AuthorizedKeysFile {ssh}/authorized_keys.%u\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PermitRootLogin prohibit-password\n\
             StrictModes no\n\
             PrintMotd no\n\
             LogLevel VERBOSE\n\
             Subsystem sftp internal-sftp\n",
            ip = self.ip
        )
    }

    /// Waits until sshd, from inside the host, hands out this host's key; panics with its log if
    /// it exits or takes longer than [`SSHD_READY_WITHIN`].
    fn wait_sshd_answers(&mut self) {
        let want = self.known_hosts_line();
        let mut exited = None;
        let answered = poll_until(SSHD_READY_WITHIN, || {
            exited = self.sshd.as_mut().unwrap().try_wait().unwrap();
            exited.is_some() || self.keyscan().lines().any(|l| l == want)
        });
        assert!(
            answered && exited.is_none(),
            "sshd on {} {} within {SSHD_READY_WITHIN:?}; log:\n{}",
            self.name,
            exited.map_or("did not answer".to_string(), |st| format!("exited ({st})")),
            self.sshd_log()
        );
    }

    /// The ed25519 key sshd at this host's address hands out, as `ssh-keyscan` prints it.
    fn keyscan(&self) -> String {
        let mut cmd = self.command("ssh-keyscan");
        cmd.args(["-T", "2", "-t", "ed25519", &self.ip]);
        output_within(&mut cmd, Duration::from_secs(5))
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Runs `argv` in the holder's mount namespace (the host's file system view); panics if it
    /// fails.
    fn in_view(&self, argv: &[&str]) {
        run(self.command(argv[0]).args(&argv[1..]));
    }

    /// The host's own file system view, made once in the holder's mount namespace.
    fn mount_view(&self) {
        let d = |p: &str| self.dir.join(p).display().to_string();
        // The namespace was copied with the netns mounts of the moment, other labs' too; those
        // copies would keep their namespaces alive as long as this host: let them go.
        self.in_view(&["umount", "--recursive", "--lazy", "/run/netns"]);
        // A machine's own /run: sshd's privilege-separation dir, and no way to the machine's
        // systemd (a test restarting "agents" must never reach it).
        self.in_view(&["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"]);
        self.in_view(&["mkdir", "-m", "0755", "/run/sshd"]);
        // /var/lib copy-on-write over the machine's (upper layer in a tmpfs), so /var/lib/juju
        // can be made whether or not the machine has one, and nothing is written to the machine.
        self.in_view(&["mount", "-t", "tmpfs", "tmpfs", &d("varlib")]);
        self.in_view(&["mkdir", &d("varlib/upper"), &d("varlib/work")]);
        let layers = format!(
            "lowerdir=/var/lib,upperdir={},workdir={}",
            d("varlib/upper"),
            d("varlib/work")
        );
        self.in_view(&[
            "mount", "-t", "overlay", "overlay", "-o", &layers, "/var/lib",
        ]);
        self.in_view(&["mkdir", "-p", "/var/lib/juju"]);
        self.in_view(&["mount", "--bind", &d("juju"), "/var/lib/juju"]);
        self.in_view(&["mount", "--bind", &d("home"), "/home"]);
        // Its own logs, wtmp included, so logins to it leave nothing in the machine's.
        self.in_view(&["mount", "--bind", &d("log"), "/var/log"]);
        for f in ["passwd", "shadow", "group", "sudoers"] {
            self.in_view(&[
                "mount",
                "--bind",
                &d(&format!("etc/{f}")),
                &format!("/etc/{f}"),
            ]);
        }
    }
}

/// Panics unless this runs as root with every program a lab runs.
fn require_tools() {
    require_root("a lab makes network namespaces, mounts and runs sshd");
    for (program, package) in [
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ssh-keyscan", "openssh-client"),
        ("sudo", "sudo"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("sleep", "coreutils"),
    ] {
        require_debian(program, package);
    }
    assert!(
        Path::new(SSHD).is_file(),
        "this test needs {SSHD}: Debian package openssh-server, which ./test.sh installs"
    );
}

/// `10.a.b` from the pid and the lab's number: distinct for the labs of a process, rarely equal
/// across processes (harmless then: each lab is a world of its own). Never 10.0.x.
fn subnet(pid: u32, n: u32) -> [u8; 3] {
    let k = u64::from(pid) * 64 + u64::from(n);
    [10, 1 + ((k / 256) % 254) as u8, (k % 256) as u8]
}

/// The lowest id from 1000 that no user other than `ubuntu` has as uid and no group other than
/// `ubuntu` has as gid.
fn free_id(passwd: &str, group: &str) -> u32 {
    let taken = |text: &str, id: u32| {
        text.lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() > 2 && f[0] != "ubuntu" && f[2] == id.to_string()
        })
    };
    (1000..)
        .find(|&id| !taken(passwd, id) && !taken(group, id))
        .unwrap()
}

/// The host's directory: what it sees as /var/lib/juju, /home (with ubuntu's home), /var/log,
/// its /etc files with the `ubuntu` user, its sshd's files, and a mount point for /var/lib's
/// writable layer.
fn make_host_dir(dir: &Path, id: u32) {
    for sub in ["juju", "home/ubuntu", "log", "etc", "ssh", "varlib"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for sub in ["", "juju", "home", "log", "etc", "ssh"] {
        set_mode(&dir.join(sub), 0o755);
    }
    std::os::unix::fs::chown(dir.join("home/ubuntu"), Some(id), Some(id)).unwrap();
    let etc = dir.join("etc");
    let user = format!("ubuntu:x:{id}:{id}:Ubuntu:/home/ubuntu:/bin/sh");
    with_ubuntu("/etc/passwd", &etc.join("passwd"), &user);
    with_ubuntu("/etc/group", &etc.join("group"), &format!("ubuntu:x:{id}:"));
    // `*`: no password, yet not locked (sshd without PAM refuses keys of `!` accounts); empty
    // ageing fields: never expires.
    with_ubuntu("/etc/shadow", &etc.join("shadow"), "ubuntu:*:::::::");
    with_ubuntu(
        "/etc/sudoers",
        &etc.join("sudoers"),
        "ubuntu ALL=(ALL) NOPASSWD:ALL",
    );
}

/// Copies `src` to `dst` (mode and owner too: sudo insists on its file's) without any `ubuntu`
/// entry of the machine, then adds `line`.
fn with_ubuntu(src: &str, dst: &Path, line: &str) {
    use std::os::unix::fs::MetadataExt;
    let kept: String = read(Path::new(src))
        .lines()
        .filter(|l| !l.starts_with("ubuntu:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dst, format!("{kept}{line}\n")).unwrap();
    let meta = std::fs::metadata(src).unwrap();
    std::fs::set_permissions(dst, meta.permissions()).unwrap();
    std::os::unix::fs::chown(dst, Some(meta.uid()), Some(meta.gid())).unwrap();
}

/// `sleep infinity` in namespace `ns` with a private mount namespace of its own, which every
/// command of the host then enters; returns once it is in place.
fn spawn_holder(ns: &str) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(["unshare", "--mount", "--propagation", "private"])
        .args(["sleep", "infinity"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // ip and unshare exec in turn: once it is `sleep`, the mount namespace is the final one.
    let comm = format!("/proc/{}/comm", child.id());
    let ready = poll_until(KILL_WITHIN, || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c == "sleep\n")
    });
    if !ready {
        let _ = child.kill();
        panic!("the holder of {ns} did not start (`ip netns exec ... unshare ... sleep`)");
    }
    child
}

/// Generates an ed25519 key without passphrase at `path` (and `path.pub`).
fn ssh_keygen(path: &Path, comment: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
}

/// `ip -n NS ARGS`, which must succeed.
fn ip_in(ns: &str, args: &[&str]) {
    run(Command::new("ip").args(["-n", ns]).args(args));
}

/// Runs a setup command, which must succeed within [`SETUP_WITHIN`].
fn run(cmd: &mut Command) {
    let out = output_within(cmd, SETUP_WITHIN).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` (stdin from /dev/null) in a process group of its own and returns its output, or,
/// if it or a descendant holding its output is still there after `limit`, kills the group and
/// says so with what it wrote to stderr.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    use std::os::unix::process::CommandExt;
    let end = Instant::now() + limit;
    let left = || end.saturating_duration_since(Instant::now());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let group = Pid::from_raw(child.id() as i32);
    let stdout = on_thread(child.stdout.take().unwrap(), read_all);
    let stderr = on_thread(child.stderr.take().unwrap(), read_all);
    // Waited for on threads, so that each ends the wait the moment it is there.
    let status = on_thread(child, |mut c| c.wait());
    let status = status.recv_timeout(left());
    let out = stdout.recv_timeout(left());
    let err = stderr.recv_timeout(left());
    match (status, out, err) {
        (Ok(Ok(status)), Ok(stdout), Ok(stderr)) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        (_, _, err) => {
            let _ = killpg(group, Signal::SIGKILL);
            // Killed, the group lets go of its stderr.
            let err = err
                .or_else(|_| stderr.recv_timeout(Duration::from_secs(1)))
                .unwrap_or_default();
            Err(format!(
                "{cmd:?} still running after {limit:?}; killed. stderr:\n{}",
                String::from_utf8_lossy(&err)
            ))
        }
    }
}

/// `f(value)` on a thread of its own; the result arrives on the receiver.
fn on_thread<T: Send + 'static, R: Send + 'static>(
    value: T,
    f: impl FnOnce(T) -> R + Send + 'static,
) -> mpsc::Receiver<R> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f(value));
    });
    rx
}

/// Everything `pipe` gives until its end.
fn read_all(mut pipe: impl Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = pipe.read_to_end(&mut bytes);
    bytes
}

/// Network namespaces whose names start with `prefix` (e.g. [`Lab::prefix`]).
pub fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = output_within(Command::new("ip").args(["netns", "list"]), SETUP_WITHIN);
    let text = out.map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Kills every process in namespace `ns`, then deletes it, if it exists. Never panics (it runs in
/// `Drop`): what fails is said on stderr.
fn clear_namespace(ns: &str) {
    if !Path::new("/run/netns").join(ns).exists() {
        return;
    }
    // Processes first: `ip netns del` only removes the name, the namespace lives on with them.
    let emptied = poll_until(KILL_WITHIN, || {
        let pids = netns_pids(ns);
        for pid in &pids {
            let _ = kill(*pid, Signal::SIGKILL);
        }
        pids.is_empty()
    });
    if !emptied {
        eprintln!("lab: processes of {ns} still there after {KILL_WITHIN:?}");
    }
    match output_within(Command::new("ip").args(["netns", "del", ns]), SETUP_WITHIN) {
        Ok(o) if o.status.success() => {}
        // Another lab's sweep may have deleted it first.
        _ if !Path::new("/run/netns").join(ns).exists() => {}
        Ok(o) => eprintln!(
            "lab: ip netns del {ns}: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("lab: {e}"),
    }
}

/// The processes in namespace `ns` (`ip netns pids`); none when it is gone.
fn netns_pids(ns: &str) -> Vec<Pid> {
    let out = output_within(Command::new("ip").args(["netns", "pids", ns]), SETUP_WITHIN);
    let text = out.map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Clears the namespaces and temp dirs of labs whose process is gone (a test binary that crashed
/// or was killed): they would pile up otherwise, each with its sshds.
fn sweep_dead_labs() {
    for ns in namespaces_named(&format!("{NAME_ROOT}-")) {
        if lab_process_gone(&ns) {
            clear_namespace(&ns);
        }
    }
    let temp = std::env::temp_dir();
    for entry in std::fs::read_dir(&temp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // Nothing is mounted there from the machine's side: the mounts were the hosts' own.
        if name.starts_with(&format!("{NAME_ROOT}-")) && lab_process_gone(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the process that made `name` (`jbrdlab-PID-...`) is gone.
fn lab_process_gone(name: &str) -> bool {
    let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
    pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists())
}

/// Waits (bounded) for a child that was killed or told to stop.
fn reap(child: &mut Child) {
    if !poll_until(KILL_WITHIN, || !matches!(child.try_wait(), Ok(None))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The state letter of process `pid` (`R`, `S`, `T` for stopped...), if it exists.
fn process_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the state follows its closing one.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
