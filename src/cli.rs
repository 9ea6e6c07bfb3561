//! The `juju-brd` command line. Each subcommand parses its flags, loads the config and calls the
//! library; this is the only place errors become exit codes and text for a person.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::archive::encryption::Identities;
use crate::archive::verify::{self, VerifyOptions};
use crate::catalog;
use crate::config::Config;
use crate::snapshot::{self, BackupRequest, Progress};

/// Backup and restore for Juju state-servers (controllers).
#[derive(Parser, Debug)]
#[command(name = "juju-brd", version, about, max_term_width = 100)]
pub struct Cli {
    /// Config file [default: $JUJU_BRD_CONFIG, then /etc/juju-brd/juju-brd.toml].
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More log output (also: JUJU_BRD_LOG=debug).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take a backup now and print the archive's path (last line of stdout).
    Backup {
        /// Take the backup in this process instead of asking the running daemon (when a daemon
        /// runs, it holds the state lock and is asked after all, and this says so).
        #[arg(long)]
        offline: bool,
        /// Free text stored in the archive's metadata.
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Check an archive completely; exit 0 if sound, 1 naming the first problem otherwise.
    Verify {
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Refuse archives that decompress beyond this ratio (compression bombs).
        #[arg(long, default_value_t = crate::archive::reader::DEFAULT_MAX_RATIO)]
        max_ratio: u64,
        /// age identity file, to read an encrypted (`.age`) archive.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Print an archive's metadata.
    Show {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// age identity file, to read an encrypted (`.age`) archive.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// List archives in the configured directory, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// Verify archives not verified yet (reads each one completely).
        #[arg(long)]
        verify: bool,
        /// List the archives on this `[[remote]]` instead.
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
    },
    /// Validate a config file and print the effective settings.
    CheckConfig,
    /// Apply the retention policy to the archive directory (through the daemon when it runs).
    Prune {
        /// Only print what would be deleted and why.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the service: scheduled backups, the local API, retention (normally started by systemd).
    Daemon,
    /// Show what the running daemon is doing: last backup, next run, archives, off-host copies.
    Status {
        /// Print the daemon's `/v1/status` document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild this host's state-server from an archive (run on the replacement host).
    Restore {
        /// The archive to restore: a local file, `s3://BUCKET/KEY`, or with `--remote` an
        /// archive name on that remote. Remote archives are downloaded into `archive_dir` first.
        file: PathBuf,
        /// Download FILE (an archive name) from this `[[remote]]` first.
        #[arg(long, value_name = "NAME")]
        remote: Option<String>,
        /// Juju constraints the host must meet, e.g. "mem=4G cores=2 root-disk=20G arch=amd64".
        #[arg(long)]
        constraints: Option<String>,
        /// The environment the archive must belong to [default: $JUJU_ENV, then the config's].
        #[arg(short = 'e', long = "environment")]
        environment: Option<String>,
        /// Run every check, print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Restore even though a recorded state-server answers (logged with a warning).
        #[arg(long)]
        force: bool,
        /// Where to restore the files.
        #[arg(long, default_value = "/")]
        target_root: PathBuf,
        /// This host's address for agent.conf [default: detected].
        #[arg(long)]
        address: Option<String>,
        /// age identity file, to read an encrypted (`.age`) archive.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.verbose);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("juju-brd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(flag: Option<&Path>) -> Result<Config> {
    let path = Config::resolve_path(flag);
    Ok(Config::load(&path)?)
}

fn load_identities(flag: Option<PathBuf>) -> Result<Option<Arc<Identities>>> {
    flag.map(|p| {
        Identities::load(&p)
            .map(Arc::new)
            .map_err(anyhow::Error::msg)
    })
    .transpose()
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let config_flag = cli.config.as_deref();
    match cli.command {
        Command::Backup { offline, notes } => {
            let cfg = load_config(config_flag)?;
            if offline {
                backup_offline(&cfg, notes)
            } else {
                backup_via_daemon(&cfg, notes)
            }
        }
        Command::Verify {
            file,
            json,
            max_ratio,
            identity,
        } => verify_cmd(
            config_flag,
            &file,
            json,
            max_ratio,
            load_identities(identity)?,
        ),
        Command::Show {
            file,
            json,
            identity,
        } => show(&file, json, load_identities(identity)?.as_deref()),
        Command::List {
            json,
            verify,
            remote: None,
        } => list(&load_config(config_flag)?, json, verify),
        Command::List {
            json,
            remote: Some(name),
            ..
        } => list_remote(&load_config(config_flag)?, &name, json),
        Command::CheckConfig => check_config(config_flag),
        Command::Prune { dry_run } => prune(&load_config(config_flag)?, dry_run),
        Command::Daemon => daemon(config_flag),
        Command::Status { json } => status(&load_config(config_flag)?, json),
        Command::Restore {
            file,
            remote,
            constraints,
            environment,
            dry_run,
            yes,
            force,
            target_root,
            address,
            identity,
        } => {
            let cfg = load_config(config_flag)?;
            let file = fetch_remote_archive(&cfg, &file, remote.as_deref())?;
            let opts = crate::restore::RestoreOptions {
                archive: file,
                constraints,
                environment: environment.unwrap_or_else(|| cfg.effective_environment()),
                force,
                target_root,
                address,
                identities: load_identities(identity)?,
            };
            restore(&cfg, &opts, dry_run, yes)
        }
    }
}

/// Takes the state lock for work that must not run beside the daemon, or says that the daemon
/// holds it (`None`): the caller then goes through the daemon instead.
fn lock_or_daemon(cfg: &Config, what: &str) -> Result<Option<crate::state::StateLock>> {
    match crate::state::lock(&cfg.state_dir) {
        Ok(lock) => {
            tracing::info!(state_dir = %cfg.state_dir.display(), "no daemon holds the state lock; {what} in this process");
            Ok(Some(lock))
        }
        Err(crate::state::StateError::Locked(_)) => {
            eprintln!("juju-brd: the daemon is running (it holds the state lock); asking it for the {what} instead");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn backup_offline(cfg: &Config, notes: String) -> Result<ExitCode> {
    let Some(_lock) = lock_or_daemon(cfg, "backup")? else {
        return backup_via_daemon(cfg, notes);
    };
    let progress = Arc::new(Progress::default());
    let req = BackupRequest {
        notes,
        environment: cfg.effective_environment(),
    };
    let outcome = snapshot::take(&cfg.backup_settings(), &req, &progress)?;
    tracing::info!(
        archive = %outcome.archive.path.display(),
        bytes = outcome.archive.size,
        "backup complete"
    );
    if !cfg.remotes.is_empty() {
        let runs = runtime()?.block_on(crate::remote::replicate::run(&cfg.site(), &cfg.remotes));
        for (remote, run) in runs {
            match run.error {
                None => {
                    tracing::info!(remote = %remote, copied = run.uploaded.len(), "off-host copies up to date")
                }
                Some(e) => eprintln!(
                    "juju-brd: warning: not every archive reached remote `{remote}` ({e}); \
                     local retention keeps them until they do"
                ),
            }
        }
    }
    println!("{}", outcome.archive.path.display());
    Ok(ExitCode::SUCCESS)
}

/// For `restore`: a local path as it is; `s3://BUCKET/KEY` or `--remote NAME ARCHIVE` downloaded
/// (with its sidecar) into `archive_dir`, for `restore` to verify like any other archive.
fn fetch_remote_archive(cfg: &Config, file: &Path, remote: Option<&str>) -> Result<PathBuf> {
    let text = file.to_string_lossy();
    let (rc, key) = match (remote, crate::remote::parse_s3_url(&text)) {
        (Some(name), _) => (remote_named(cfg, name)?, None),
        (None, Some((bucket, key))) => {
            let rc = cfg
                .remotes
                .iter()
                .find(|r| r.bucket == bucket)
                .with_context(|| {
                    format!("no [[remote]] in the config uses bucket `{bucket}` (its endpoint and credentials are needed)")
                })?;
            (rc, Some(key))
        }
        (None, None) => return Ok(file.to_path_buf()),
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| crate::archive::name::ArchiveName::parse(n).is_some())
        .with_context(|| format!("`{text}` does not name a juju-brd archive"))?
        .to_string();
    let remote = crate::remote::Remote::from_config(rc)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.archive_dir)
        .with_context(|| format!("creating {}", cfg.archive_dir.display()))?;
    eprintln!(
        "downloading {name} from remote `{}` into {}",
        rc.name,
        cfg.archive_dir.display()
    );
    let key = match key {
        Some(k) => object_store::path::Path::from(k.as_str()),
        None => remote.key(&name),
    };
    let path = runtime()?.block_on(remote.fetch(&key, &cfg.archive_dir))?;
    Ok(path)
}

fn list_remote(cfg: &Config, name: &str, json: bool) -> Result<ExitCode> {
    let rc = remote_named(cfg, name)?;
    let remote = crate::remote::Remote::from_config(rc)?;
    let archives = runtime()?.block_on(remote.list())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&archives)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<_> = archives
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.size,
                a.started,
                format!("s3://{}/{}", rc.bucket, a.key),
            )
        })
        .collect();
    print_archive_table(
        &rows,
        "KEY",
        &format!("no archives on remote `{name}` (bucket {})", rc.bucket),
    );
    Ok(ExitCode::SUCCESS)
}

/// The table `list` prints, local or remote: name, size, age, and one column of `last`.
fn print_archive_table(
    rows: &[(&str, u64, chrono::DateTime<chrono::Utc>, String)],
    last: &str,
    empty: &str,
) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let now = chrono::Utc::now();
    println!("{:<width$} {:>12} {:>10}  {last}", "NAME", "SIZE", "AGE");
    for (name, size, started, extra) in rows {
        println!(
            "{name:<width$} {:>12} {:>10}  {extra}",
            human_bytes(*size),
            human_age(now - *started)
        );
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn backup_via_daemon(cfg: &Config, notes: String) -> Result<ExitCode> {
    use crate::api::types::{JobState, TriggerRequest};
    let client = crate::api::client::Client::new(&cfg.api.socket);
    let resp = runtime()?.block_on(client.trigger(&TriggerRequest { notes }, true))?;
    if !resp.created {
        eprintln!(
            "a backup was already running (job {}); waited for it",
            resp.job.id
        );
    }
    match (resp.job.state, resp.job.archive) {
        (JobState::Succeeded, Some(a)) => {
            println!("{}", a.path);
            Ok(ExitCode::SUCCESS)
        }
        _ => anyhow::bail!(
            "backup failed: {}",
            resp.job.error.unwrap_or_else(|| "unknown error".into())
        ),
    }
}

fn prune(cfg: &Config, dry_run: bool) -> Result<ExitCode> {
    let decisions: Vec<(String, bool, String)> = match lock_or_daemon(cfg, "prune")? {
        Some(_lock) => catalog::prune(&cfg.site(), dry_run)?
            .into_iter()
            .map(|d| (d.name, d.keep, d.reason))
            .collect(),
        None => {
            let client = crate::api::client::Client::new(&cfg.api.socket);
            runtime()?
                .block_on(client.prune(dry_run))?
                .decisions
                .into_iter()
                .map(|d| (d.name, d.keep, d.reason))
                .collect()
        }
    };
    for (name, keep, reason) in &decisions {
        let verb = match (keep, dry_run) {
            (true, _) => "keep",
            (false, true) => "would delete",
            (false, false) => "deleted",
        };
        println!("{verb:<13} {name}  ({reason})");
    }
    Ok(ExitCode::SUCCESS)
}

fn status(cfg: &Config, json: bool) -> Result<ExitCode> {
    let client = crate::api::client::Client::new(&cfg.api.socket);
    let s = runtime()?.block_on(client.status())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("never".to_string(), |t| {
            format!(
                "{} ({} ago)",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                human_age(chrono::Utc::now() - t)
            )
        })
    };
    println!("environment:   {}", s.environment);
    println!("daemon:        juju-brd {}, {}", s.version, s.state);
    if let Some(j) = &s.current_job {
        println!(
            "current job:   {} ({:?}, {} of ~{})",
            j.id,
            j.state,
            human_bytes(j.bytes_done),
            human_bytes(j.bytes_estimated)
        );
    }
    println!("last success:  {}", when(s.last_success));
    println!("last attempt:  {}", when(s.last_attempt));
    if let Some(a) = &s.last_archive {
        println!("last archive:  {a}");
    }
    if let Some(e) = &s.last_error {
        println!("last error:    {e}");
    }
    println!(
        "next run:      {}",
        s.next_run.map_or("none scheduled".into(), |t| t
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string())
    );
    println!(
        "archives:      {} ({} free)",
        s.archive_count,
        human_bytes(s.free_space_bytes)
    );
    for r in &s.remotes {
        let health = match (&r.last_error, r.last_success) {
            (Some(e), _) => format!("FAILING: {e}"),
            (None, Some(_)) => "ok".into(),
            (None, None) => "no copy yet".into(),
        };
        println!(
            "remote {}:  bucket {}, {} pending, last copy {}, {health}",
            r.name,
            r.bucket,
            r.pending,
            when(r.last_success)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn daemon(config_flag: Option<&Path>) -> Result<ExitCode> {
    let path = Config::resolve_path(config_flag);
    let cfg = Config::load(&path)?;
    let _lock = crate::state::lock(&cfg.state_dir)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = crate::daemon::bind_socket(&cfg.api.socket, cfg.api.socket_mode.0)?;
        let tcp = match (&cfg.api.tcp_listen, &cfg.api.token_file) {
            (Some(addr), Some(token_file)) => {
                let token = std::fs::read_to_string(token_file)
                    .with_context(|| format!("reading api.token_file {}", token_file.display()))?
                    .trim()
                    .to_string();
                anyhow::ensure!(
                    token.len() >= 16,
                    "the token in {} is shorter than 16 characters",
                    token_file.display()
                );
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding api.tcp_listen {addr}"))?;
                Some((l, token))
            }
            _ => None,
        };
        let socket = cfg.api.socket.clone();
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let result = crate::daemon::run(path, cfg, listener, tcp, shutdown).await;
        let _ = std::fs::remove_file(&socket);
        Ok(result?)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn restore(
    cfg: &Config,
    opts: &crate::restore::RestoreOptions,
    dry_run: bool,
    yes: bool,
) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let plan = crate::restore::plan(&cfg.restore, &cfg.database, opts)?;
    print!("{plan}");
    if dry_run {
        println!("dry run: every check passed; nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not confirmed: pass --yes to restore without a terminal");
        }
        print!("{}\nType `yes` to restore: ", crate::restore::HA_WARNING);
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("not confirmed; nothing was changed");
        }
    }
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut progress = |files: u64, bytes: u64| {
        let every = std::time::Duration::from_millis(if tty { 200 } else { 5000 });
        if last.elapsed() >= every {
            if tty {
                eprint!("\rextracting: {files} files, {}   ", human_bytes(bytes));
            } else {
                tracing::info!(files, bytes, "extracting");
            }
            last = std::time::Instant::now();
        }
    };
    let summary = crate::restore::execute(&cfg.restore, &plan, &mut progress)?;
    if tty {
        eprintln!();
    }
    tracing::info!(
        files = summary.files,
        bytes = summary.bytes,
        "files restored"
    );
    println!(
        "Restored {} files ({}) under {}.",
        summary.files,
        human_bytes(summary.bytes),
        plan.target_root.display()
    );
    println!(
        "agent.conf: {} addresses now point at {}.",
        summary.repointed, plan.address
    );
    println!(
        "The files that were replaced are in {}.",
        summary.rollback_dir.display()
    );
    println!("Next: check `juju status`; for HA, run `juju enable-ha` (or `juju ensure-availability`) again.");
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(
    config_flag: Option<&Path>,
    file: &Path,
    json: bool,
    max_ratio: u64,
    identities: Option<Arc<Identities>>,
) -> Result<ExitCode> {
    let opts = VerifyOptions {
        max_ratio,
        identities,
        ..VerifyOptions::default()
    };
    let result = verify::verify(file, &opts);
    // Remember the result when the archive is in the configured directory (best effort).
    if let Ok(cfg) = load_config(config_flag) {
        if file.parent().map(|p| p.canonicalize().ok()) == Some(cfg.archive_dir.canonicalize().ok())
        {
            let _ = crate::state::VerificationCache::record(&cfg.state_dir, file, result.is_ok());
        }
    }
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: OK ({} root members, {} bytes of files, dump: {}, sidecar: {:?}, sha256 {})",
                    file.display(),
                    report.root_members,
                    report.root_bytes,
                    if report.dump_files.is_empty() { "none".to_string() } else { report.dump_files.join(", ") },
                    report.sidecar,
                    report.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("juju-brd: verify failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn show(file: &Path, json: bool, identities: Option<&Identities>) -> Result<ExitCode> {
    let m = verify::read_metadata(file, identities)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = |d: Option<chrono::DateTime<chrono::Utc>>| d.map_or("-".into(), |d| d.to_rfc3339());
    println!("ID:             {}", m.id);
    println!("Environment:    {}", m.environment_name());
    println!("Model UUID:     {}", m.model_uuid);
    println!("Controller:     {}", m.controller_uuid);
    println!("Machine:        {}", m.machine);
    println!("Hostname:       {}", m.hostname);
    println!("Juju version:   {}", m.version);
    println!("Started:        {}", t(m.started));
    println!("Finished:       {}", t(m.finished));
    println!("HA nodes:       {}", m.ha_nodes);
    println!("Notes:          {}", m.notes);
    if let Some(b) = &m.brd {
        println!("Addresses:      {}", b.state_server_addresses.join(", "));
        println!(
            "Database:       {} ({} bytes)",
            b.database_engine, b.dump_bytes
        );
        println!(
            "Files:          {} ({} bytes of root.tar)",
            b.files, b.root_tar_bytes
        );
        println!(
            "Made by:        juju-brd {} (config {})",
            b.tool_version, b.config_digest
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(cfg: &Config, json: bool, verify_now: bool) -> Result<ExitCode> {
    let mut archives = catalog::list(&cfg.archive_dir, &cfg.state_dir)
        .with_context(|| format!("listing {}", cfg.archive_dir.display()))?;
    if verify_now {
        for a in archives
            .iter_mut()
            .filter(|a| a.verification != catalog::VerifyState::Verified)
        {
            let ok = verify_listed(cfg, a)?;
            let _ = crate::state::VerificationCache::record(&cfg.state_dir, &a.path, ok);
            a.verification = if ok {
                catalog::VerifyState::Verified
            } else {
                catalog::VerifyState::Failed
            };
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&archives)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<_> = archives
        .iter()
        .map(|a| {
            let state = match a.verification {
                catalog::VerifyState::Verified => "verified",
                catalog::VerifyState::Failed => "FAILED",
                catalog::VerifyState::Unverified => "unverified",
            };
            (a.name.as_str(), a.size, a.started, state.to_string())
        })
        .collect();
    print_archive_table(
        &rows,
        "STATUS",
        &format!("no archives in {}", cfg.archive_dir.display()),
    );
    Ok(ExitCode::SUCCESS)
}

/// `list --verify` of one archive: completely, or for an encrypted archive without
/// `encryption.identity_file`, its checksum against the sidecar and its age header.
fn verify_listed(cfg: &Config, a: &catalog::ArchiveInfo) -> Result<bool> {
    let opts = VerifyOptions {
        identities: crate::archive::encryption::configured(&cfg.encryption, a.parsed.encrypted)
            .map_err(anyhow::Error::msg)?,
        ..VerifyOptions::default()
    };
    let sha256 = crate::archive::sidecar::read(&a.path).map(|(sha, _)| sha);
    Ok(verify::verify_readable(&a.path, sha256.as_deref(), &opts).is_ok())
}

/// The `[[remote]]` called `name`.
fn remote_named<'a>(cfg: &'a Config, name: &str) -> Result<&'a crate::config::RemoteConfig> {
    cfg.remote(name)
        .with_context(|| format!("no [[remote]] named `{name}` in the config"))
}

fn check_config(config_flag: Option<&Path>) -> Result<ExitCode> {
    let path = Config::resolve_path(config_flag);
    let cfg = Config::load(&path)?;
    println!("# {} is valid; effective settings:", path.display());
    print!(
        "{}",
        toml::to_string_pretty(&cfg).context("rendering the config")?
    );
    Ok(ExitCode::SUCCESS)
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn human_age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
