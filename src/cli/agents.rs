//! `update-agents`, and the same step at the end of `restore`: which machines, with which SSH
//! settings, then the table and the exit status.

use super::*;
use crate::agents::{self, Report, Settings, Target};

/// Exit status when the command ran but some machines are not done (unreachable or failed).
pub(super) const NOT_ALL_UPDATED: u8 = 3;

/// The `update-agents` flags that override `[agents]`.
#[derive(clap::Args, Debug, Default, Clone)]
pub(super) struct SshFlags {
    /// Private key to log in with [default: agents.ssh_key, /var/lib/juju/system-identity].
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// User to log in as [default: agents.ssh_user, ubuntu].
    #[arg(long, value_name = "USER")]
    pub ssh_user: Option<String>,
    /// SSH port [default: agents.ssh_port, 22].
    #[arg(long, value_name = "N")]
    pub ssh_port: Option<u16>,
    /// Host keys of the machines: unknown ones are recorded here (and reported), changed ones
    /// refused [default: agents.known_hosts, STATE_DIR/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// How long to wait for each connection [default: agents.connect_timeout, 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<std::time::Duration>,
    /// How many machines to update at once [default: agents.parallel, 8].
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
}

/// The settings for one run: `[agents]` with the flags over it. `key_root` is where a restored
/// key lives (the restore's target root; `/` otherwise).
pub(super) fn settings(
    cfg: &Config,
    flags: &SshFlags,
    key_root: &Path,
    address: String,
    dry_run: bool,
) -> Result<Settings> {
    let a = &cfg.agents;
    let key = match &flags.ssh_key {
        Some(k) => k.clone(),
        None => key_root.join(a.ssh_key.strip_prefix("/").unwrap_or(&a.ssh_key)),
    };
    let user = flags.ssh_user.clone().unwrap_or_else(|| a.ssh_user.clone());
    anyhow::ensure!(
        agents::valid_user(&user),
        "--ssh-user {user:?} is not a user name"
    );
    let parallel = flags.parallel.unwrap_or(a.parallel);
    anyhow::ensure!((1..=256).contains(&parallel), "--parallel must be 1 to 256");
    let connect_timeout = flags.connect_timeout.unwrap_or(a.connect_timeout);
    anyhow::ensure!(
        !connect_timeout.is_zero() && connect_timeout <= std::time::Duration::from_secs(600),
        "--connect-timeout must be more than 0s and at most 10m"
    );
    Ok(Settings {
        ssh: crate::ssh::Ssh {
            user,
            port: flags.ssh_port.unwrap_or(a.ssh_port),
            key,
            known_hosts: flags
                .known_hosts
                .clone()
                .or_else(|| a.known_hosts.clone())
                .unwrap_or_else(|| cfg.state_dir.join("known_hosts")),
            connect_timeout,
        },
        address,
        commands: a.commands.clone(),
        parallel,
        machine_timeout: a.machine_timeout,
        dry_run,
    })
}

/// Updates `targets`, printing each machine as it finishes (stderr) and the table (stdout).
pub(super) fn run_and_report(targets: &[Target], settings: &Settings, json: bool) -> Vec<Report> {
    if !settings.ssh.key.exists() {
        eprintln!(
            "juju-brd: warning: the SSH key {} does not exist; every machine will refuse",
            settings.ssh.key.display()
        );
    }
    let verb = if settings.dry_run {
        "checking"
    } else {
        "updating"
    };
    eprintln!(
        "{verb} {} machine(s), {} at a time, to point at {}",
        targets.len(),
        settings.parallel,
        settings.address
    );
    let started = std::time::Instant::now();
    let reports = agents::update_all(targets, settings, &|r: &Report| {
        eprintln!("  machine {}: {}", r.machine, short(&r.outcome));
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    } else {
        print!("{}", agents::table(&reports));
    }
    let learned: Vec<&str> = reports
        .iter()
        .filter(|r| r.learned_host_key)
        .map(|r| r.address.as_str())
        .collect();
    if !learned.is_empty() {
        eprintln!(
            "host keys seen for the first time were recorded in {}: {}",
            settings.ssh.known_hosts.display(),
            learned.join(", ")
        );
    }
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
    reports
}

fn short(o: &agents::Outcome) -> String {
    match o {
        agents::Outcome::Updated { agents } => format!("updated {} agent(s)", agents.len()),
        agents::Outcome::AlreadyCurrent { .. } => "already current".into(),
        agents::Outcome::WouldUpdate { agents } => {
            format!("would update {} agent(s)", agents.len())
        }
        agents::Outcome::Unreachable { .. } => "unreachable".into(),
        agents::Outcome::Failed { .. } => "failed".into(),
    }
}

/// The machines an archive recorded (every one that is not a state-server).
pub(super) fn targets_from_archive(
    path: &Path,
    identities: Option<&Identities>,
) -> Result<Vec<Target>> {
    let m = verify::read_metadata(path, identities)
        .with_context(|| format!("reading {}", path.display()))?;
    let brd = m.brd.as_ref();
    match brd.and_then(|b| b.inventory.as_ref()) {
        Some(inv) => agents::machines::from_inventory(inv).map_err(anyhow::Error::msg),
        None => anyhow::bail!(
            "{} records no inventory of machines ({}); give them with --machines FILE",
            path.display(),
            brd.and_then(|b| b.inventory_error.as_deref())
                .unwrap_or("it was not made by juju-brd, or before inventories")
        ),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn update_agents(
    cfg: &Config,
    archive: Option<PathBuf>,
    machines: Option<PathBuf>,
    address: Option<String>,
    flags: &SshFlags,
    identity: Option<PathBuf>,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let targets = match (&machines, &archive) {
        (Some(file), _) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            agents::machines::parse_file(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        }
        (None, Some(path)) => {
            let ids = load_identities(identity)?;
            targets_from_archive(path, ids.as_deref())?
        }
        (None, None) => {
            let newest = catalog::list(&cfg.archive_dir, &cfg.state_dir)
                .with_context(|| format!("listing {}", cfg.archive_dir.display()))?
                .into_iter()
                .next()
                .with_context(|| {
                    format!(
                        "no archive in {} to take the machines from; pass --archive or --machines",
                        cfg.archive_dir.display()
                    )
                })?;
            eprintln!("machines from the newest archive, {}", newest.name);
            let ids = load_identities(identity.or(cfg.encryption.identity_file.clone()))?;
            targets_from_archive(&newest.path, ids.as_deref())?
        }
    };
    let address = match address {
        Some(a) => a,
        None => crate::restore::detect_address()
            .context("cannot detect this host's address; pass --address")?,
    };
    anyhow::ensure!(
        crate::ssh::valid_host(&address),
        "--address {address:?} is not an address"
    );
    if targets.is_empty() {
        println!("no machines to update (the inventory lists only state-servers)");
        return Ok(ExitCode::SUCCESS);
    }
    let settings = settings(cfg, flags, Path::new("/"), address, dry_run)?;
    // A dry run learns host keys into a throwaway copy, so it changes nothing.
    let (_scratch, settings) = if dry_run {
        let (dir, copy) = crate::ssh::scratch_known_hosts(&settings.ssh.known_hosts)
            .context("copying known_hosts for the dry run")?;
        let mut s = settings;
        s.ssh.known_hosts = copy;
        (Some(dir), s)
    } else {
        (None, settings)
    };
    let reports = run_and_report(&targets, &settings, json);
    Ok(exit_for(&reports))
}

/// 0 when every machine is done, [`NOT_ALL_UPDATED`] otherwise (and which, on stderr).
pub(super) fn exit_for(reports: &[Report]) -> ExitCode {
    let left: Vec<&str> = reports
        .iter()
        .filter(|r| !r.outcome.done())
        .map(|r| r.machine.as_str())
        .collect();
    if left.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "juju-brd: {} machine(s) not updated: {}; run update-agents again once they are reachable (machines already done are left alone)",
        left.len(),
        left.join(", ")
    );
    ExitCode::from(NOT_ALL_UPDATED)
}
