//! `juju-brd backup` on the operator's own machine, as `juju backup` was: the environment is
//! `JUJU_ENV`, else the current one Juju's client records (`juju_client`); the state-server is
//! reached over SSH as `ubuntu` with Juju's client key, as `juju ssh` does; there the daemon is
//! asked for a backup (`_stream-backup`, see `stream`), and the archive streams back into the
//! current directory under the daemon's name, through `NAME.part`, checked against the
//! sidecar's SHA-256 and verified before it gets its name. The name is the last line of stdout.

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use sha2::Digest;

use super::stream::{self, Header, StreamRequest};
use super::*;
use crate::juju_client::{ClientFiles, Environment, Selection};
use crate::ssh::{Ssh, SshError};

/// Set when SIGINT, SIGTERM or SIGHUP asked this process to stop; ssh is then killed, so the
/// transfer ends and what it wrote is removed.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Which signal it was.
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Ctrl-C (or SIGTERM, SIGHUP) during a backup ends it cleanly: the signals are blocked here
/// (before any thread starts, so every thread has them blocked) and a thread waits for them.
fn catch_stop_signals() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    if set.thread_block().is_ok() {
        std::thread::spawn(move || {
            if let Ok(sig) = set.wait() {
                STOP_SIGNAL.store(sig as i32, std::sync::atomic::Ordering::SeqCst);
                STOP.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
}

/// How many times a state-server may send the backup on to another node.
const MAX_REDIRECTS: usize = 3;

/// The flags of `backup` that concern a backup taken from a workstation.
#[derive(clap::Args, Debug, Default, Clone)]
pub(super) struct ClientFlags {
    /// Back up from this machine over SSH even though it has a juju-brd config (the default
    /// when it has none: no JUJU_BRD_CONFIG, no --config, no /etc/juju-brd/juju-brd.toml).
    #[arg(long, conflicts_with = "offline")]
    pub client: bool,
    /// Private key to log in to the state-server as `ubuntu` [default: Juju's client key,
    /// ~/.local/share/juju/ssh/juju_id_rsa (Juju 2+) or ~/.juju/ssh/juju_id_rsa (1.x)].
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// SSH port of the state-servers (the recorded addresses are the API's; ssh goes to this
    /// port of the same hosts) [default: 22].
    #[arg(long, value_name = "N")]
    pub ssh_port: Option<u16>,
    /// The state-servers' host keys: an unknown one is recorded here and reported, a changed
    /// one refused [default: ssh/known_hosts beside Juju's client key].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// How long to wait for each SSH connection [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// The most the whole backup may take, the state-server's backup and the transfer included;
    /// past it the connection is closed and nothing is left under the archive's name
    /// [default: 2h].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The juju-brd program on the state-server [default: juju-brd, found by sudo's PATH].
    #[arg(long, value_name = "PATH")]
    pub remote_juju_brd: Option<String>,
    /// The config file on the state-server [default: its own default,
    /// /etc/juju-brd/juju-brd.toml].
    #[arg(long, value_name = "PATH")]
    pub remote_config: Option<String>,
}

impl ClientFlags {
    /// The flags given that make sense only from a workstation (to refuse them elsewhere).
    pub(super) fn client_only_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                v.push(name)
            }
        };
        add(self.ssh_key.is_some(), "--ssh-key");
        add(self.ssh_port.is_some(), "--ssh-port");
        add(self.known_hosts.is_some(), "--known-hosts");
        add(self.connect_timeout.is_some(), "--connect-timeout");
        add(self.timeout.is_some(), "--timeout");
        add(self.remote_juju_brd.is_some(), "--remote-juju-brd");
        add(self.remote_config.is_some(), "--remote-config");
        v
    }
}

/// Whether `backup` runs in client mode: asked for, or no daemon config is to be found here
/// (neither --config nor JUJU_BRD_CONFIG, and no file at the default path).
pub(super) fn is_client_mode(
    flags: &ClientFlags,
    offline: bool,
    config_flag: Option<&Path>,
) -> bool {
    if flags.client {
        return true;
    }
    let named =
        config_flag.is_some() || std::env::var_os("JUJU_BRD_CONFIG").is_some_and(|v| !v.is_empty());
    !offline && !named && !Path::new(crate::config::DEFAULT_CONFIG_PATH).exists()
}

/// A word safe inside the remote shell's command line: an absolute or bare path of plain
/// characters.
fn shell_word(flag: &str, value: &str) -> Result<String> {
    anyhow::ensure!(
        !value.is_empty()
            && value.len() <= 4096
            && !value.starts_with('-')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+')),
        "{flag} {value:?}: only letters, digits and / . _ - + are allowed"
    );
    Ok(value.to_string())
}

/// The command the state-server's shell runs: the stream subcommand as root, through `sudo -n`
/// (the `ubuntu` user Juju provisions has passwordless sudo; the daemon's socket, config and
/// archives are root's).
fn remote_command(flags: &ClientFlags) -> Result<String> {
    let bin = shell_word(
        "--remote-juju-brd",
        flags.remote_juju_brd.as_deref().unwrap_or("juju-brd"),
    )?;
    let mut cmd = format!("sudo -n -- {bin}");
    if let Some(c) = &flags.remote_config {
        cmd.push_str(&format!(" --config {}", shell_word("--remote-config", c)?));
    }
    cmd.push_str(" _stream-backup");
    Ok(cmd)
}

/// Removes the files it holds when dropped, unless [`Staged::keep`] was called: what a failed
/// or interrupted transfer leaves behind goes.
struct Staged {
    paths: Vec<PathBuf>,
}

impl Staged {
    fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What one transfer received, still under its `.part` name.
struct Received {
    name: String,
    size: u64,
    sha256: String,
    header_sha256: String,
    sidecar: String,
    created: bool,
    /// From the header to the last byte.
    transfer: Duration,
    staged: Staged,
}

enum Attempt {
    Received(Received),
    Redirect { node: String, reason: String },
}

/// Progress on stderr when it is a terminal: bytes, share and rate, at most 5 times a second.
struct ProgressLine {
    tty: bool,
    name: String,
    total: u64,
    started: Instant,
    last: Option<Instant>,
}

impl ProgressLine {
    fn show(&mut self, done: u64) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if done < self.total
            && self
                .last
                .is_some_and(|l| now - l < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let secs = (now - self.started).as_secs_f64().max(0.001);
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        eprint!(
            "\r{}: {} of {} ({pct}%), {}/s   ",
            self.name,
            human_bytes(done),
            human_bytes(self.total),
            human_bytes((done as f64 / secs) as u64)
        );
        let _ = std::io::stderr().flush();
    }

    fn end(&self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
    }
}

/// Reads the stream of one state-server: the header, then the archive into `dir/NAME.part`.
fn receive(
    from: &mut dyn Read,
    dir: &Path,
    header_seen: &std::cell::Cell<bool>,
) -> std::io::Result<Attempt> {
    let mut r = std::io::BufReader::with_capacity(1 << 16, from);
    let header = stream::read_header(&mut r)?;
    let (name, size, header_sha256, sidecar, created) = match header {
        Header::Redirect { node, reason } => return Ok(Attempt::Redirect { node, reason }),
        Header::Archive {
            name,
            size,
            sha256,
            sidecar,
            created,
        } => (name, size, sha256, sidecar, created),
    };
    header_seen.set(true);
    let transfer_started = Instant::now();
    // Two environments backed up into one directory in the same second share a name: the
    // second gets `-2` (as the daemon does), and its sidecar is rewritten to name it.
    let name = local_name(dir, &name);
    let part = dir.join(format!("{name}.part"));
    // A part left by an earlier run killed outright is stale: replaced.
    match std::fs::remove_file(&part) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)?;
    let staged = Staged {
        paths: vec![part.clone()],
    };
    let mut progress = ProgressLine {
        tty: std::io::stderr().is_terminal(),
        name: name.clone(),
        total: size,
        started: Instant::now(),
        last: None,
    };
    let mut hasher = sha2::Sha256::new();
    let copied = crate::ssh::copy_exact(
        &mut r,
        &mut file,
        size,
        &mut |chunk| hasher.update(chunk),
        &mut |done| progress.show(done),
    );
    progress.end();
    copied?;
    let mut extra = [0u8; 1];
    if r.read(&mut extra)? != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the state-server sent more than the {size} bytes it announced"),
        ));
    }
    file.sync_all()?;
    Ok(Attempt::Received(Received {
        name,
        size,
        sha256: hex::encode(hasher.finalize()),
        header_sha256,
        sidecar,
        created,
        transfer: transfer_started.elapsed(),
        staged,
    }))
}

/// `name`, or when it (or its sidecar) is already in `dir`, the first free `-N` of its second.
fn local_name(dir: &Path, name: &str) -> String {
    use crate::archive::name::{ArchiveName, SIDECAR_SUFFIX};
    let taken = |n: &str| {
        dir.join(n).symlink_metadata().is_ok()
            || dir
                .join(format!("{n}{SIDECAR_SUFFIX}"))
                .symlink_metadata()
                .is_ok()
    };
    if !taken(name) {
        return name.to_string();
    }
    match ArchiveName::parse(name) {
        Some(p) => {
            let mut n =
                ArchiveName::first_free(dir, p.started.and_utc(), p.compression, p.encrypted);
            while taken(&n.to_string()) {
                n = ArchiveName::new(p.started.and_utc(), n.seq + 1, p.compression, p.encrypted);
            }
            n.to_string()
        }
        None => name.to_string(),
    }
}

/// `juju-brd backup` from a workstation.
pub(super) fn backup_from_workstation(flags: &ClientFlags, notes: String) -> Result<ExitCode> {
    crate::archive::metadata::check_notes(&notes).map_err(anyhow::Error::msg)?;
    let files = ClientFiles::from_env();
    let env = files.resolve(&Selection::from_env())?;
    if !env.refused.is_empty() {
        eprintln!(
            "juju-brd: warning: {} records addresses that are not hosts, left out: {}",
            env.source.display(),
            env.refused.join(", ")
        );
    }
    let key = flags
        .ssh_key
        .clone()
        .unwrap_or_else(|| files.ssh_key(env.era));
    anyhow::ensure!(
        key.exists(),
        "the SSH key {} does not exist; pass --ssh-key (Juju's client key is {} for Juju 1.x, {} for Juju 2+)",
        key.display(),
        files.ssh_key(crate::juju_client::Era::Juju1).display(),
        files.ssh_key(crate::juju_client::Era::Juju2).display()
    );
    let connect_timeout = flags.connect_timeout.unwrap_or(Duration::from_secs(10));
    anyhow::ensure!(
        !connect_timeout.is_zero() && connect_timeout <= Duration::from_secs(600),
        "--connect-timeout must be more than 0s and at most 10m"
    );
    let timeout = flags.timeout.unwrap_or(Duration::from_secs(2 * 3600));
    anyhow::ensure!(
        !timeout.is_zero() && timeout <= Duration::from_secs(7 * 86400),
        "--timeout must be more than 0s and at most 7 days"
    );
    let ssh = Ssh {
        user: "ubuntu".into(),
        port: flags.ssh_port.unwrap_or(22),
        key,
        known_hosts: flags
            .known_hosts
            .clone()
            .unwrap_or_else(|| files.known_hosts(env.era)),
        connect_timeout,
    };
    let command = remote_command(flags)?;
    let request = serde_json::to_vec(&StreamRequest {
        environment: env.name.clone(),
        uuid: env.uuid.clone(),
        notes,
    })?;
    let dir = std::env::current_dir().context("the current directory")?;
    catch_stop_signals();
    let deadline = Instant::now() + timeout;
    let received = fetch(&env, &ssh, &command, &request, &dir, deadline)?;
    finish(received, &dir)
}

/// Tries each recorded state-server in turn (following a node that says another takes the
/// backups) until one streams an archive.
fn fetch(
    env: &Environment,
    ssh: &Ssh,
    command: &str,
    request: &[u8],
    dir: &Path,
    deadline: Instant,
) -> Result<(Received, String)> {
    let mut queue: VecDeque<String> = env.hosts.iter().cloned().collect();
    let mut tried: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut redirects = 0;
    while let Some(host) = queue.pop_front() {
        if tried.contains(&host) {
            continue;
        }
        tried.push(host.clone());
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "--timeout reached before a state-server answered"
        );
        eprintln!(
            "asking {host} ({} environment `{}`) for a backup; the state-server takes it, then it is copied here",
            env.era, env.name
        );
        let header_seen = std::cell::Cell::new(false);
        let started = Instant::now();
        let result = ssh.stream(&host, command, request, left, Some(&STOP), |out| {
            receive(out, dir, &header_seen)
        });
        match result {
            Ok(s) => {
                if s.learned_host_key {
                    eprintln!(
                        "the host key of {host} was seen for the first time and recorded in {}",
                        ssh.known_hosts.display()
                    );
                }
                match s.value {
                    Attempt::Received(r) => {
                        let secs = started.elapsed().as_secs_f64();
                        let t = r.transfer.as_secs_f64().max(0.001);
                        eprintln!(
                            "received {} ({}) from {host} in {secs:.1}s (transfer {t:.1}s, {}/s){}",
                            r.name,
                            human_bytes(r.size),
                            human_bytes((r.size as f64 / t) as u64),
                            if r.created { "" } else { "; a backup already running there" }
                        );
                        return Ok((r, host));
                    }
                    Attempt::Redirect { node, reason } => {
                        redirects += 1;
                        anyhow::ensure!(
                            redirects <= MAX_REDIRECTS,
                            "state-servers sent the backup on more than {MAX_REDIRECTS} times; last to {node}"
                        );
                        anyhow::ensure!(
                            crate::ssh::valid_host(&node),
                            "{host} sent the backup to {node:?}, which is not a host"
                        );
                        eprintln!("{host} does not take backups ({reason}); going to {node}");
                        queue.push_front(node);
                    }
                }
            }
            Err(e) if STOP.load(std::sync::atomic::Ordering::SeqCst) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "interrupted by signal {}; nothing is left under the archive's name (a backup the state-server finished stays there)",
                    STOP_SIGNAL.load(std::sync::atomic::Ordering::SeqCst)
                )))
            }
            Err(e) if e.is_unreachable() && !header_seen.get() => {
                eprintln!("{host}: {e}; trying the next address");
                failures.push(e.to_string());
            }
            Err(e) if header_seen.get() => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the transfer from {host} was interrupted; nothing is left under the archive's name, run the backup again"
                )))
            }
            Err(e @ SshError::HostKeyChanged { .. }) => return Err(e.into()),
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "no state-server of `{}` could be reached ({})",
        env.name,
        failures.join("; ")
    )
}

/// Checks what arrived against the sidecar, verifies it like any archive, and only then gives it
/// its name (and its sidecar beside it); prints the name last.
fn finish((r, host): (Received, String), dir: &Path) -> Result<ExitCode> {
    let part = dir.join(format!("{}.part", r.name));
    anyhow::ensure!(
        r.sha256.eq_ignore_ascii_case(&r.header_sha256),
        "the archive from {host} has SHA-256 {} but its sidecar says {}; discarded",
        r.sha256,
        r.header_sha256
    );
    let part_sidecar = dir.join(format!(
        "{}.part{}",
        r.name,
        crate::archive::name::SIDECAR_SUFFIX
    ));
    let mut staged = r.staged;
    staged.paths.push(part_sidecar.clone());
    let _ = std::fs::remove_file(&part_sidecar);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part_sidecar)
        .and_then(|mut f| {
            f.write_all(r.sidecar.as_bytes())
                .and_then(|()| f.sync_all())
        })
        .with_context(|| format!("writing {}", part_sidecar.display()))?;
    let report =
        crate::archive::verify::verify_readable(&part, Some(&r.sha256), &VerifyOptions::default())
            .map_err(|e| {
                anyhow::anyhow!("the archive from {host} does not verify: {}", e.message)
            })?;
    let final_path = dir.join(&r.name);
    let final_sidecar = dir.join(format!(
        "{}{}",
        r.name,
        crate::archive::name::SIDECAR_SUFFIX
    ));
    anyhow::ensure!(
        !final_path.exists(),
        "{} already exists here; left as it is",
        final_path.display()
    );
    std::fs::rename(&part_sidecar, &final_sidecar)
        .with_context(|| format!("renaming {}", part_sidecar.display()))?;
    std::fs::rename(&part, &final_path).with_context(|| format!("renaming {}", part.display()))?;
    staged.keep();
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    match report {
        Some(_) => eprintln!("{}: SHA-256 matches the sidecar; verified", r.name),
        None => eprintln!(
            "{}: encrypted; SHA-256 matches the sidecar and the age header is sound (`juju-brd verify --identity FILE` reads it all)",
            r.name
        ),
    }
    println!("{}", r.name);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remote_command_is_sudo_and_refuses_shell_characters() {
        let mut f = ClientFlags::default();
        assert_eq!(
            remote_command(&f).unwrap(),
            "sudo -n -- juju-brd _stream-backup"
        );
        f.remote_juju_brd = Some("/usr/local/bin/juju-brd".into());
        f.remote_config = Some("/etc/juju-brd/prod.toml".into());
        assert_eq!(
            remote_command(&f).unwrap(),
            "sudo -n -- /usr/local/bin/juju-brd --config /etc/juju-brd/prod.toml _stream-backup"
        );
        for bad in ["x; rm -rf /", "$(id)", "-oops", "a b", ""] {
            f.remote_config = Some(bad.into());
            assert!(remote_command(&f).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_interrupted_stream_leaves_nothing_under_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        let name = "juju-backup-20261125-101500.tar.gz";
        let text = format!(
            "{}\n{}\n0123",
            stream::MAGIC,
            serde_json::json!({"kind": "archive", "name": name, "size": 10, "sha256": sha,
                "sidecar": format!("{sha}  {name}\n"), "created": true})
        );
        let seen = std::cell::Cell::new(false);
        let e = receive(&mut text.as_bytes(), dir.path(), &seen)
            .err()
            .unwrap();
        assert!(e.to_string().contains("ended after 4 of 10 bytes"), "{e}");
        assert!(seen.get());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Too many bytes is refused too.
        let text = text.replace("0123", "0123456789X");
        let e = receive(&mut text.as_bytes(), dir.path(), &seen)
            .err()
            .unwrap();
        assert!(e.to_string().contains("more than the 10 bytes"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
