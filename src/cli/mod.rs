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

mod agents;
mod archives;
mod backup;
mod docs;
mod restore;
mod service;
mod stream;
mod workstation;

use archives::{list, list_remote, remote_named, show, verify_cmd};
use backup::{backup_offline, backup_via_daemon, drill, prune};
use restore::{fetch_remote_archive, restore};
use service::{check_config, daemon, status};

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
    /// Take a backup now and print the archive's path (last line of stdout). On a machine
    /// without a juju-brd config (a workstation), or with --client: ask the current Juju
    /// environment's state-server over SSH (JUJU_ENV names another) and copy the archive into
    /// the current directory, printing its name last, as `juju backup` did.
    Backup {
        /// Take the backup in this process instead of asking the running daemon (when a daemon
        /// runs, it holds the state lock and is asked after all, and this says so).
        #[arg(long)]
        offline: bool,
        /// Free text stored in the archive's metadata.
        #[arg(long, default_value = "")]
        notes: String,
        #[command(flatten)]
        client: workstation::ClientFlags,
    },
    /// The state-server's half of a backup taken from a workstation: reads the request on
    /// stdin, asks the daemon for a backup, writes a header and the archive to stdout.
    #[command(name = "_stream-backup", hide = true)]
    StreamBackup,
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
        /// Verify every archive now, reading each one completely (a cached result cannot see
        /// bit rot since it was recorded).
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
        /// Restore setuid/setgid bits and file capabilities (`security.capability`) as archived;
        /// without it they are stripped, and the plan lists the files.
        #[arg(long)]
        keep_privileges: bool,
        /// Restore the files even though this host cannot restore the archive's database (the
        /// plan and the summary say so); without it such a restore is refused before any change.
        #[arg(long)]
        skip_database: bool,
        /// Do not re-point the environment's other machines at this host at the end (run
        /// `update-agents` later); by default every machine in the archive's inventory is.
        #[arg(long)]
        no_update_agents: bool,
        #[command(flatten)]
        ssh: agents::SshFlags,
    },
    /// Restore an archive into a private scratch root on this host and prove it usable (files
    /// against the manifest, the database's own check, agent.conf, the inventory); print the
    /// time the restore took. Changes nothing outside the scratch root, which is removed. Exit 0
    /// when the drill passed, 1 when it failed.
    Drill {
        /// The archive [default: the newest verified archive in archive_dir].
        archive: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-point every other machine of the environment at this state-server, over SSH: stop
    /// its agents, rewrite their agent.conf addresses, start them. Exit 0 when every machine is
    /// done, 3 when some are unreachable or failed (run it again: done ones are left alone).
    UpdateAgents {
        /// Take the machines from this archive's inventory [default: the newest archive].
        #[arg(long, value_name = "FILE", conflicts_with = "machines")]
        archive: Option<PathBuf>,
        /// Take the machines from FILE: JSON (`[{"id": "1", "addresses": ["10.0.0.2"]}]`) or one
        /// `ID ADDRESS [ADDRESS...]` per line.
        #[arg(long, value_name = "FILE")]
        machines: Option<PathBuf>,
        /// The address to point the agents at [default: this host's, detected].
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        ssh: agents::SshFlags,
        /// age identity file, to read an encrypted (`.age`) archive.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Connect and show what would change on each machine; change nothing (host keys
        /// learned go to a throwaway copy of known_hosts).
        #[arg(long)]
        dry_run: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL to stdout.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: docs::CompletionShell,
    },
    /// Print the juju-brd(1) man page to stdout, or with --dir write it and one page per
    /// subcommand (juju-brd-backup.1, ...) into DIR.
    Man {
        /// Write every page into this directory (created if missing) and print their paths.
        #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
        dir: Option<PathBuf>,
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
        Command::Backup {
            offline,
            notes,
            client,
        } => {
            if workstation::is_client_mode(&client, offline, config_flag) {
                if !client.client {
                    eprintln!(
                        "juju-brd: no juju-brd config on this machine; backing up the Juju environment from here over SSH"
                    );
                }
                return workstation::backup_from_workstation(&client, notes);
            }
            let stray = client.client_only_flags();
            anyhow::ensure!(
                stray.is_empty(),
                "{} only apply to a backup from a workstation (--client)",
                stray.join(", ")
            );
            let cfg = load_config(config_flag)?;
            cfg.check_juju_env().map_err(anyhow::Error::msg)?;
            if offline {
                backup_offline(&cfg, notes)
            } else {
                backup_via_daemon(&cfg, notes)
            }
        }
        Command::StreamBackup => stream::stream_backup(config_flag),
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
            keep_privileges,
            skip_database,
            no_update_agents,
            ssh,
        } => {
            let cfg = load_config(config_flag)?;
            let file = fetch_remote_archive(&cfg, &file, remote.as_deref())?;
            let opts = crate::restore::RestoreOptions {
                archive: file,
                constraints,
                environment: {
                    cfg.check_juju_env().map_err(anyhow::Error::msg)?;
                    cfg.check_environment(environment.as_deref(), "-e")
                        .map_err(anyhow::Error::msg)?;
                    cfg.effective_environment()
                },
                force,
                target_root,
                address,
                identities: load_identities(identity)?,
                keep_privileges,
                model_uuid: cfg.model_uuid(),
                skip_database,
                no_update_agents,
                drill: false,
                // A dry run only verifies; a restore verifies and extracts in one pass.
                single_pass: !dry_run,
            };
            restore(&cfg, &opts, &ssh, dry_run, yes)
        }
        Command::Drill { archive, json } => drill(&load_config(config_flag)?, archive, json),
        Command::UpdateAgents {
            archive,
            machines,
            address,
            ssh,
            identity,
            dry_run,
            json,
        } => {
            let cfg = load_config(config_flag)?;
            agents::update_agents(
                &cfg, archive, machines, address, &ssh, identity, dry_run, json,
            )
        }
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { dir } => docs::man(dir.as_deref()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
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
