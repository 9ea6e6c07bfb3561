//! `juju-brd restore FILE`: rebuild a lost state-server on a fresh replacement host.
//!
//! [`plan`] checks everything and changes nothing: the archive verifies completely, it belongs to
//! the expected environment, the host meets the constraints and has room, and no recorded
//! state-server answers. [`execute`] then stops the services, moves replaced files aside, extracts,
//! restores the database, re-points `agent.conf` at this host and starts the services again; any
//! failure in those steps rolls back to the previous tree and restarts what was stopped.

pub mod beneath;
pub mod constraints;
pub mod extract;
pub mod offload;
pub mod probe;
pub mod services;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::archive::manifest::Manifest;
use crate::archive::metadata::Metadata;
use crate::archive::verify::{self, VerifyOptions};
use crate::archive::{reader, DUMP_DIR, ROOT_TAR, TOP};
use crate::process::{self, ChildSpec};

/// The seed's warning, printed whenever an old state-server may still be alive.
pub const HA_WARNING: &str =
    "only run restore when no state-server of this environment is working: \
restoring while one runs takes them off-line and may cripple the environment";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("the archive is not sound: {0}")]
    Verify(verify::VerifyError),
    #[error("the archive belongs to environment {archive}, not `{expected}`; pass -e with its name or model UUID if it is the one to restore")]
    WrongEnvironment { archive: String, expected: String },
    #[error("this host does not meet the constraints:\n  {}", .0.join("\n  "))]
    Constraints(Vec<String>),
    #[error("{0}")]
    Refused(String),
    #[error("a recorded state-server still answers ({}); {HA_WARNING}. Use --force only if you are sure it is gone.", .0.join(", "))]
    OldServerAlive(Vec<String>),
    #[error("restore failed while {step}: {error}; {rollback}")]
    Failed {
        step: &'static str,
        error: StepError,
        rollback: String,
    },
}

impl From<verify::VerifyError> for RestoreError {
    fn from(e: verify::VerifyError) -> Self {
        RestoreError::Verify(e)
    }
}

/// What went wrong inside one step of `execute`; the step itself is named by [`RestoreError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{what} {}: {err}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{0}")]
    Archive(String),
    #[error(transparent)]
    Database(Box<crate::db::DbError>),
    #[error(transparent)]
    Process(Box<process::ProcessError>),
    #[error("not healthy after {}s: {last}", limit.as_secs())]
    Unhealthy {
        limit: Duration,
        last: Box<process::ProcessError>,
    },
}

impl From<crate::db::DbError> for StepError {
    fn from(e: crate::db::DbError) -> Self {
        StepError::Database(Box::new(e))
    }
}

impl From<process::ProcessError> for StepError {
    fn from(e: process::ProcessError) -> Self {
        StepError::Process(Box::new(e))
    }
}

impl StepError {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StepError + 'a {
        move |err| StepError::Io {
            what,
            path: path.to_path_buf(),
            err,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub archive: PathBuf,
    pub constraints: Option<String>,
    /// The environment the archive must belong to (`-e`, `JUJU_ENV` or the config's): a name,
    /// or a model UUID.
    pub environment: String,
    /// This environment's model UUID when the config knows it (`controller.model_uuid`), so a
    /// Juju-made archive, which records only the UUID, matches without `-e`.
    pub model_uuid: Option<String>,
    /// Restore the files even when this host cannot restore the database.
    pub skip_database: bool,
    pub force: bool,
    pub target_root: PathBuf,
    pub address: Option<String>,
    /// To read an encrypted archive.
    pub identities: Option<std::sync::Arc<crate::archive::encryption::Identities>>,
    /// Restore setuid/setgid bits and file capabilities as archived (stripped otherwise).
    pub keep_privileges: bool,
    /// Skip the last step, re-pointing the environment's other machines (`--no-update-agents`).
    pub no_update_agents: bool,
    /// A rehearsal into a scratch target (`juju-brd drill`): nothing outside the target is
    /// touched. No probes, no services, no re-pointing; the database is loaded only by an engine
    /// that writes beneath the target (sqlite), and the staged dump is kept for the caller.
    pub drill: bool,
    /// Verify and extract in one pass while planning, into a private staging directory under the
    /// target root (removed if anything is refused); execute then only moves the staged tree into
    /// place. Otherwise the plan only verifies and execute extracts in a second pass.
    pub single_pass: bool,
}

/// The staging directory of a single-pass plan (see [`RestoreOptions::single_pass`]); removed
/// when the plan is dropped.
pub struct Staged(pub std::sync::Mutex<extract::Staging>);

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Staged")
    }
}

/// The last step of a restore: which of the environment's other machines get re-pointed.
#[derive(Debug, Clone)]
pub enum AgentsStep {
    /// These machines, from the archive's inventory.
    Machines(Vec<crate::agents::Target>),
    /// None, for this reason (the plan and the summary say how to do it by hand).
    Skipped(String),
}

/// The database step of a restore, decided in the plan.
#[derive(Debug, Clone)]
pub enum DbStep {
    /// The archive holds no dump.
    None,
    /// The engine that reads the archive's dump loads it; `description` is the plan's line.
    Load {
        engine: std::sync::Arc<dyn crate::db::Engine>,
        description: String,
    },
    /// The dump stays unrestored, for this reason.
    NotRestored(String),
}

/// Everything `execute` will do, decided before anything changes.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub archive: PathBuf,
    pub metadata: Metadata,
    pub target_root: PathBuf,
    pub address: String,
    pub files: u64,
    pub bytes: u64,
    /// Dump files in the archive (relative to `dump/`), as verified.
    pub dump_files: Vec<String>,
    pub db: DbStep,
    pub stop: Vec<Vec<String>>,
    pub start: Vec<Vec<String>>,
    pub forced_past: Vec<String>,
    pub warnings: Vec<String>,
    pub identities: Option<std::sync::Arc<crate::archive::encryption::Identities>>,
    /// The archive as verified: held open, and read again only from this descriptor.
    pub archive_file: Arc<std::fs::File>,
    /// SHA-256 of the archive's bytes as verified; execute checks it read the same bytes.
    pub sha256: String,
    /// The verified manifest: every root.tar member extracted must match it.
    pub manifest: Option<Arc<Manifest>>,
    /// root.tar members with setuid/setgid or file capabilities, and whether to keep those.
    pub privileged: Vec<String>,
    pub keep_privileges: bool,
    /// Held from planning to the end of execute: one restore per target at a time.
    pub target_lock: Arc<TargetLock>,
    /// The environment's other machines, re-pointed at this host once it is up.
    pub agents: AgentsStep,
    /// A rehearsal (see [`RestoreOptions::drill`]).
    pub drill: bool,
    /// The archive already extracted (single pass), waiting to be moved into place.
    pub staged: Option<Arc<Staged>>,
}

/// An exclusive `flock` on the target root directory.
pub struct TargetLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

impl fmt::Debug for TargetLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TargetLock")
    }
}

impl TargetLock {
    /// Takes the lock without waiting; another restore on the same target is refused.
    fn take(target: &Path) -> Result<TargetLock, RestoreError> {
        let dir = std::fs::File::open(target).map_err(|e| {
            RestoreError::Refused(format!("cannot open target root {}: {e}", target.display()))
        })?;
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map(TargetLock)
            .map_err(|_| {
                RestoreError::Refused(format!(
                    "another restore is running on {}; wait for it to finish",
                    target.display()
                ))
            })
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.metadata;
        let date = m.started.map_or("unknown".into(), |d| d.to_rfc3339());
        writeln!(f, "Restore plan")?;
        writeln!(f, "  archive:      {}", self.archive.display())?;
        writeln!(
            f,
            "  taken:        {date} on {} (machine {})",
            m.hostname, m.machine
        )?;
        writeln!(f, "  environment:  {}", m.environment_name())?;
        writeln!(f, "  juju version: {}", m.version)?;
        let addrs = m
            .brd
            .as_ref()
            .map(|b| b.state_server_addresses.join(", "))
            .unwrap_or_default();
        writeln!(f, "  HA nodes:     {} ({addrs})", m.ha_nodes)?;
        writeln!(f, "  target root:  {}", self.target_root.display())?;
        for c in &self.stop {
            writeln!(f, "  stop:         {}", c.join(" "))?;
        }
        writeln!(f, "  replace:      {} members ({} bytes of files); replaced files are moved aside, not deleted", self.files, self.bytes)?;
        match &self.db {
            DbStep::None => writeln!(f, "  database:     none in the archive")?,
            DbStep::Load { description, .. } => writeln!(f, "  database:     {description}")?,
            DbStep::NotRestored(why) => writeln!(f, "  database:     NOT restored: {why}")?,
        }
        writeln!(
            f,
            "  re-point:     agent.conf addresses -> {}",
            self.address
        )?;
        for c in &self.start {
            writeln!(f, "  start:        {}", c.join(" "))?;
        }
        match &self.agents {
            AgentsStep::Machines(m) if m.is_empty() => writeln!(
                f,
                "  then:         no other machines to update (the inventory lists only state-servers)"
            )?,
            AgentsStep::Machines(m) => {
                writeln!(
                    f,
                    "  then:         update the agents of {} machine(s) over SSH to point at {}:",
                    m.len(),
                    self.address
                )?;
                for t in m.iter().take(20) {
                    writeln!(f, "                  machine {} ({})", t.id, t.addresses.join(", "))?;
                }
                if m.len() > 20 {
                    writeln!(f, "                  ... and {} more", m.len() - 20)?;
                }
            }
            AgentsStep::Skipped(why) => writeln!(f, "  then:         other machines NOT updated: {why}")?,
        }
        if !self.privileged.is_empty() {
            let what = if self.keep_privileges {
                "KEPT (--keep-privileges)"
            } else {
                "stripped (--keep-privileges keeps them)"
            };
            writeln!(
                f,
                "  privileges:   setuid/setgid/capabilities on {} file(s) {what}: {}",
                self.privileged.len(),
                self.privileged
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning:      {w}")?;
        }
        Ok(())
    }
}

/// All checks; changes nothing on the host.
pub fn plan(
    cfg: &RestoreConfig,
    database: &crate::db::DatabaseConfig,
    opts: &RestoreOptions,
) -> Result<RestorePlan, RestoreError> {
    if !opts.target_root.is_dir() {
        return Err(RestoreError::Refused(format!(
            "target root {} is not a directory",
            opts.target_root.display()
        )));
    }
    // It goes into every agent.conf (and to other machines): an IP address or a host name only.
    if let Some(a) = opts
        .address
        .as_deref()
        .filter(|a| !crate::ssh::valid_host(a))
    {
        return Err(RestoreError::Refused(format!(
            "--address {:?} is not an IP address or host name",
            a
        )));
    }
    let target_lock = Arc::new(TargetLock::take(&opts.target_root)?);
    let (archive_file, report, staged) = if opts.single_pass {
        let (f, r, s) = open_verify_and_stage(opts)?;
        (f, r, Some(Arc::new(Staged(std::sync::Mutex::new(s)))))
    } else {
        let (f, r) = open_and_verify(opts)?;
        (f, r, None)
    };
    let metadata = report.metadata.clone();
    let uuid = opts.model_uuid.as_deref().unwrap_or_default();
    if !metadata.belongs_to(&[&opts.environment, uuid]) {
        return Err(RestoreError::WrongEnvironment {
            archive: metadata.describe_environment(),
            expected: opts.environment.clone(),
        });
    }
    check_host_layout(&opts.target_root, &report)?;
    // What the staging directory already holds was free space before it.
    let staged_bytes = staged.as_ref().map_or(0, |_| {
        report.root_bytes + report.metadata.brd.as_ref().map_or(0, |b| b.dump_bytes)
    });
    let mut warnings = check_host(opts, &report, staged_bytes)?;
    // A drill runs beside the live state-server: probing it would only find it alive.
    let forced_past = if opts.drill {
        Vec::new()
    } else {
        probe_old_servers(cfg, opts, &report, &mut warnings)?
    };
    let db = plan_database(database, opts, &report, &mut warnings)?;
    let address = match &opts.address {
        Some(a) => a.clone(),
        None => detect_address().ok_or_else(|| {
            RestoreError::Refused("cannot detect this host's address; pass --address".into())
        })?,
    };
    let agents = plan_agents(opts, &metadata);
    Ok(RestorePlan {
        agents,
        archive: opts.archive.clone(),
        files: report.root_members,
        bytes: report.root_bytes,
        metadata,
        target_root: opts.target_root.clone(),
        address,
        dump_files: report.dump_files.clone(),
        db,
        stop: if opts.drill {
            Vec::new()
        } else {
            cfg.stop_commands.clone()
        },
        start: if opts.drill {
            Vec::new()
        } else {
            cfg.start_commands.clone()
        },
        drill: opts.drill,
        forced_past,
        warnings,
        identities: opts.identities.clone(),
        archive_file: Arc::new(archive_file),
        sha256: report.sha256.clone(),
        manifest: report.manifest.map(Arc::new),
        privileged: report.privileged,
        keep_privileges: opts.keep_privileges,
        target_lock,
        staged,
    })
}

/// Which other machines the restore re-points at the end, from the archive's inventory.
fn plan_agents(opts: &RestoreOptions, metadata: &Metadata) -> AgentsStep {
    let by_hand = "run `juju-brd update-agents --machines FILE` once the restore is done";
    if opts.drill {
        return AgentsStep::Skipped("a drill touches no other machine".into());
    }
    if opts.no_update_agents {
        return AgentsStep::Skipped(format!("--no-update-agents; {by_hand}"));
    }
    let brd = metadata.brd.as_ref();
    match brd.and_then(|b| b.inventory.as_ref()) {
        Some(inventory) => match crate::agents::machines::from_inventory(inventory) {
            Ok(targets) => AgentsStep::Machines(targets),
            Err(e) => AgentsStep::Skipped(format!(
                "the archive's inventory is not usable ({e}); {by_hand}"
            )),
        },
        None => AgentsStep::Skipped(format!(
            "the archive records no inventory of machines ({}); {by_hand}",
            brd.and_then(|b| b.inventory_error.as_deref())
                .unwrap_or("not made by juju-brd, or by an older one")
        )),
    }
}

/// The single pass: opens the archive once, and verifies it from that descriptor while extracting
/// it into a staging directory under the target root. On any refusal the staging directory is
/// removed again (the target root's mtime put back) before this returns.
fn open_verify_and_stage(
    opts: &RestoreOptions,
) -> Result<
    (
        std::fs::File,
        crate::archive::verify::VerifyReport,
        extract::Staging,
    ),
    RestoreError,
> {
    let (archive_file, reading) = open_archive(opts)?;
    let mut staging =
        extract::Staging::new(&opts.target_root, opts.keep_privileges).map_err(|e| {
            RestoreError::Refused(format!(
                "cannot create a staging directory under {}: {e}",
                opts.target_root.display()
            ))
        })?;
    let dump_dir = staging.dump_dir();
    let report = offload::offload(
        &mut staging,
        dump_dir,
        |stage| {
            verify::verify_open_staged(
                reading,
                &opts.archive,
                &VerifyOptions {
                    identities: opts.identities.clone(),
                    ..VerifyOptions::default()
                },
                Some(stage),
            )
            .map_err(RestoreError::from)
        },
        |m| RestoreError::Refused(format!("cannot stage the archive's files: {m}")),
    )?;
    staging
        .settle()
        .map_err(|e| RestoreError::Refused(format!("cannot stage the archive's files: {e}")))?;
    staging.sync().map_err(|e| {
        RestoreError::Refused(format!(
            "cannot flush the staging directory under {}: {e}",
            opts.target_root.display()
        ))
    })?;
    Ok((archive_file, report, staging))
}

/// The archive, opened once: the descriptor execute reads, and a second one onto the same open
/// file for verifying.
fn open_archive(opts: &RestoreOptions) -> Result<(std::fs::File, std::fs::File), RestoreError> {
    let archive_file = std::fs::File::open(&opts.archive).map_err(|e| {
        RestoreError::Refused(format!("cannot open {}: {e}", opts.archive.display()))
    })?;
    let reading = archive_file.try_clone().map_err(|e| {
        RestoreError::Refused(format!("cannot read {}: {e}", opts.archive.display()))
    })?;
    Ok((archive_file, reading))
}

/// Opens the archive once and verifies it from that descriptor; execute reads the same one.
fn open_and_verify(
    opts: &RestoreOptions,
) -> Result<(std::fs::File, crate::archive::verify::VerifyReport), RestoreError> {
    let (archive_file, reading) = open_archive(opts)?;
    let report = verify::verify_open(
        reading,
        &opts.archive,
        &VerifyOptions {
            scratch_dir: std::env::temp_dir()
                .exists()
                .then(std::env::temp_dir)
                .or(Some(opts.target_root.clone())),
            identities: opts.identities.clone(),
            ..VerifyOptions::default()
        },
    )?;
    Ok((archive_file, report))
}

/// The host against the archive: `--constraints`, series, an installed Juju version, room.
/// Every unmet one is listed; returns the warnings (constraints that cannot be checked).
fn check_host(
    opts: &RestoreOptions,
    report: &crate::archive::verify::VerifyReport,
    staged_bytes: u64,
) -> Result<Vec<String>, RestoreError> {
    let metadata = &report.metadata;
    let host = constraints::HostFacts::detect(&opts.target_root)
        .map_err(|e| RestoreError::Refused(format!("cannot inspect this host: {e}")))?;
    let dump_bytes = metadata.brd.as_ref().map_or(0, |b| b.dump_bytes);
    // Room for the extracted files and the dump (twice: staged, then in place), with 10% spare.
    let need_mib = (report.root_bytes + 2 * dump_bytes).div_ceil(1 << 20) * 11 / 10;
    let mut unmet = Vec::new();
    let mut warnings = Vec::new();
    if let Some(text) = &opts.constraints {
        let c = constraints::Constraints::parse(text).map_err(RestoreError::Refused)?;
        unmet = c.unmet(&host);
        for u in &c.unchecked {
            warnings.push(format!(
                "constraint {u} cannot be checked on the host; not checked"
            ));
        }
    }
    // Juju's restore refuses a series mismatch: the archived agent tools are built for one.
    if let Some((host_series, _)) = crate::snapshot::identity::os_release(&opts.target_root) {
        let archived = &metadata.series;
        if !archived.is_empty() && !host_series.is_empty() && *archived != host_series {
            unmet.push(format!(
                "series: the archive was taken on {archived}, this host runs {host_series} (the \
                 archived Juju agents are built for {archived})"
            ));
        }
    }
    // As juju-restore: a host already set up with another Juju version is not the one to restore.
    let installed = crate::snapshot::identity::tools_dirs(&opts.target_root);
    if !installed.is_empty()
        && !metadata.version.is_empty()
        && !installed.iter().any(|(v, _)| *v == metadata.version)
    {
        let have: Vec<&str> = installed.iter().map(|(v, _)| v.as_str()).collect();
        unmet.push(format!(
            "juju version: the archive is Juju {}, this host has Juju {} installed \
             (var/lib/juju/tools)",
            metadata.version,
            have.join(", ")
        ));
    }
    let free_mib = host.free_mib + (staged_bytes >> 20);
    if free_mib < need_mib {
        unmet.push(format!(
            "room for the restored state: need {need_mib}M, {} has {}M free",
            opts.target_root.display(),
            free_mib
        ));
    }
    if !unmet.is_empty() {
        return Err(RestoreError::Constraints(unmet));
    }
    Ok(warnings)
}

/// Probes every recorded state-server; refuses while one answers, unless `--force` (returned:
/// the addresses forced past).
fn probe_old_servers(
    cfg: &RestoreConfig,
    opts: &RestoreOptions,
    report: &crate::archive::verify::VerifyReport,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>, RestoreError> {
    // juju-brd records the state-servers; a Juju-made archive has them in its agent.conf.
    let recorded = report
        .metadata
        .brd
        .as_ref()
        .map(|b| b.state_server_addresses.clone())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| report.agent_addresses.clone());
    if recorded.is_empty() {
        warnings
            .push("the archive records no state-server addresses; nothing could be probed".into());
    }
    let targets = probe::targets(&recorded, &cfg.probe_ports);
    let alive = probe::answering(&targets, cfg.probe_timeout);
    if alive.is_empty() {
        return Ok(Vec::new());
    }
    if !opts.force {
        return Err(RestoreError::OldServerAlive(alive));
    }
    tracing::warn!(answering = %alive.join(", "), "--force: restoring although a recorded state-server answers; {HA_WARNING}");
    Ok(alive)
}

/// What happens to the dump: the engine that reads it plans the load, or says why this host
/// cannot, which refuses the restore unless `--skip-database`.
fn plan_database(
    database: &crate::db::DatabaseConfig,
    opts: &RestoreOptions,
    report: &crate::archive::verify::VerifyReport,
    warnings: &mut Vec<String>,
) -> Result<DbStep, RestoreError> {
    let metadata = &report.metadata;
    if report.dump_files.is_empty() {
        return Ok(DbStep::None);
    }
    let brd = metadata.brd.as_ref();
    let input = crate::db::RestoreInput {
        dump_files: &report.dump_files,
        recorded_path: brd.and_then(|b| b.database_path.as_deref()),
        recorded_version: brd.and_then(|b| b.database_version.as_deref()),
        target_root: &opts.target_root,
    };
    let db = match crate::db::for_archive(metadata.engine(), database, &opts.target_root) {
        None => DbStep::NotRestored(format!(
            "no restore engine for `{}` dumps",
            metadata.engine()
        )),
        Some(engine) if opts.drill && !engine.restores_beneath_target() => {
            DbStep::NotRestored(format!(
                "a drill does not load a `{}` dump into the live database server",
                engine.name()
            ))
        }
        Some(engine) => match engine.plan_restore(&input) {
            Ok(description) => DbStep::Load {
                engine: engine.into(),
                description,
            },
            Err(why) => DbStep::NotRestored(why),
        },
    };
    if let DbStep::NotRestored(why) = &db {
        if !opts.skip_database && !opts.drill {
            return Err(RestoreError::Refused(format!(
                "the database in this archive cannot be restored on this host: {why}. Nothing was \
                 changed. Fix that, or pass --skip-database to restore the files alone"
            )));
        }
        warnings.push(format!(
            "THE DATABASE WILL NOT BE RESTORED (--skip-database): {why}"
        ));
    }
    Ok(db)
}

/// Refuses, before anything changes, a host whose layout leads writes out of the target: a
/// directory the archive writes into (or the database's) that is a symlink pointing outside it.
/// Under `/` nothing can lead out (absolute links are the host's own layout); under another
/// target root, such a link would be followed to a place the operator did not name.
fn check_host_layout(
    target: &Path,
    report: &crate::archive::verify::VerifyReport,
) -> Result<(), RestoreError> {
    let fs = beneath::Beneath::open(target)
        .map_err(|e| RestoreError::Refused(format!("cannot open {}: {e}", target.display())))?;
    let db_dir = report
        .metadata
        .brd
        .as_ref()
        .and_then(|b| b.database_path.as_deref())
        .and_then(|p| {
            Path::new(p.trim_start_matches('/'))
                .parent()
                .map(Path::to_path_buf)
        });
    let dirs = report.root_dirs.iter().map(PathBuf::from).chain(db_dir);
    let mut leading_out = std::collections::BTreeSet::new();
    for dir in dirs {
        if let Some(link) = fs
            .escapes(&target.join(&dir))
            .map_err(|e| RestoreError::Refused(format!("cannot inspect this host: {e}")))?
        {
            leading_out.insert(link);
        }
    }
    if leading_out.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = leading_out
        .iter()
        .map(|l| match std::fs::read_link(l) {
            Ok(t) => format!("{} -> {}", l.display(), t.display()),
            Err(_) => l.display().to_string(),
        })
        .collect();
    Err(RestoreError::Refused(format!(
        "on this host {} leads outside the target root {}: restore writes only beneath the \
         target, never through such a link. Restore with --target-root / (where the host's \
         layout is kept), or replace the link with a bind mount",
        shown.join(", "),
        target.display()
    )))
}

/// The first non-loopback IPv4 address of an interface that is up, else any non-loopback one.
pub fn detect_address() -> Option<String> {
    let addrs: Vec<_> = nix::ifaddrs::getifaddrs().ok()?.collect();
    let pick = |v4: bool| {
        addrs.iter().find_map(|a| {
            let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            let sa = a.address.as_ref()?;
            let ip: std::net::IpAddr = if let Some(s) = sa.as_sockaddr_in() {
                std::net::IpAddr::V4(s.ip())
            } else {
                std::net::IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            (up && !ip.is_loopback() && ip.is_ipv4() == v4).then(|| ip.to_string())
        })
    };
    pick(true).or_else(|| pick(false))
}

#[derive(Debug)]
pub struct Summary {
    pub files: u64,
    pub bytes: u64,
    pub rollback_dir: PathBuf,
    pub repointed: usize,
    /// A drill's staged dump (the archive's `dump/`), left for the caller to check.
    pub staged_dump: Option<PathBuf>,
}

/// Carries out a plan. `progress` receives (files, bytes) as files are written.
pub fn execute(
    cfg: &RestoreConfig,
    plan: &RestorePlan,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Summary, RestoreError> {
    let timeout = Duration::from_secs(300);
    // The units a `systemctl stop` stops are the ones started again (see `services`).
    let mut services = services::Services::new(&plan.stop, &plan.start);
    if let Err(e) = services.stop(timeout) {
        let restarted = services.start(timeout);
        return Err(RestoreError::Failed {
            step: "stopping the services",
            error: e.into(),
            rollback: match restarted {
                Ok(()) => "nothing was changed; the services were started again".into(),
                Err(e2) => {
                    format!("nothing was changed; starting the services again failed too: {e2}")
                }
            },
        });
    }
    let mut journal =
        extract::Journal::new(&plan.target_root).map_err(|e| RestoreError::Failed {
            step: "preparing the rollback directory",
            error: StepError::io("create a rollback directory under", &plan.target_root)(e),
            rollback: "nothing was changed".into(),
        })?;
    let result = apply(cfg, plan, &mut journal, progress, &services);
    match result {
        Ok(mut summary) => {
            summary.rollback_dir = journal.rollback_dir.clone();
            Ok(summary)
        }
        Err((step, error)) => {
            let undone = journal.rollback();
            let restarted = services.start(timeout);
            let rollback = match (undone, restarted) {
                (Ok(()), Ok(())) => "rolled back: the previous files are back and the services were started again".to_string(),
                (Ok(()), Err(e)) => format!("rolled back the files, but starting the services failed: {e}"),
                (Err(e), _) => format!("ROLLBACK INCOMPLETE ({e}); the original files are in the .juju-brd-rollback-* directory under {}", plan.target_root.display()),
            };
            Err(RestoreError::Failed {
                step,
                error,
                rollback,
            })
        }
    }
}

/// A failed step of `apply`: which step, and why.
type Failure = (&'static str, StepError);

fn apply(
    cfg: &RestoreConfig,
    plan: &RestorePlan,
    journal: &mut extract::Journal,
    progress: &mut dyn FnMut(u64, u64),
    services: &services::Services,
) -> Result<Summary, Failure> {
    if let Some(staged) = &plan.staged {
        let step = "extracting the files";
        // The operator approved a plan for the bytes that were verified (and staged): an archive
        // edited since is refused, as the two-pass restore refuses it.
        check_unchanged(plan).map_err(|e| (step, e))?;
        let mut staging = staged.0.lock().unwrap_or_else(|e| e.into_inner());
        let extracted = staging
            .install(journal, progress)
            .map_err(|e| (step, StepError::io("install into", &plan.target_root)(e)))?;
        let incoming = staging.dump_dir();
        drop(staging);
        return finish_apply(cfg, plan, journal, &incoming, extracted, services);
    }
    let incoming = journal.rollback_dir.join(".incoming-dump");
    let staging = "staging the dump";
    journal
        .fs
        .mkdir(&incoming, 0o700)
        .map_err(|e| (staging, StepError::io("create", &incoming)(e)))?;
    // One pass over the archive as verified: root.tar extracted, dump files staged. The bytes
    // come from the descriptor verify read, and must hash to what verify saw.
    let extracted = {
        let step = "extracting the files";
        let archive = &plan.archive;
        let read = |e| (step, StepError::io("read", archive)(e));
        let mut file = plan.archive_file.try_clone().map_err(read)?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(read)?;
        let opened = reader::open_file(file, reader::DEFAULT_MAX_RATIO, plan.identities.as_deref())
            .map_err(|e| (step, StepError::Archive(e.to_string())))?;
        let raw = opened.raw.clone();
        let mut outer = tar::Archive::new(opened.reader);
        let mut extracted = None;
        let options = extract::ExtractOptions {
            keep_privileges: plan.keep_privileges,
        };
        for entry in outer.entries().map_err(read)? {
            let mut entry = entry.map_err(read)?;
            // The same normalisation as verify's: `juju-backup/./root.tar` is root.tar.
            let name = crate::archive::paths::safe_relative(&entry.path_bytes())
                .map_err(|e| (step, StepError::Archive(e)))?;
            let Ok(inner) = name.strip_prefix(TOP) else {
                continue;
            };
            if inner == Path::new(ROOT_TAR) {
                extracted = Some(
                    extract::extract(
                        &mut entry,
                        journal,
                        plan.manifest.as_deref(),
                        options,
                        progress,
                    )
                    .map_err(|e| (step, StepError::io("extract into", &plan.target_root)(e)))?,
                );
            } else if let Ok(rel) = inner.strip_prefix(DUMP_DIR) {
                if rel.as_os_str().is_empty() || entry.header().entry_type().is_dir() {
                    continue;
                }
                let dest = incoming.join(rel);
                let stage = |what| {
                    let dest = dest.clone();
                    move |e| (staging, StepError::io(what, &dest)(e))
                };
                if let Some(p) = dest.parent() {
                    journal
                        .fs
                        .create_dir_all(p, 0o700)
                        .map_err(stage("create the directory of"))?;
                }
                let mut f = journal
                    .fs
                    .create_file(&dest, 0o600)
                    .map_err(stage("create"))?;
                std::io::copy(&mut entry, &mut f).map_err(stage("write"))?;
                f.sync_all().map_err(stage("fsync"))?;
            }
        }
        // Read to the end, so the hash covers every byte verify hashed.
        std::io::copy(&mut outer.into_inner(), &mut std::io::sink()).map_err(read)?;
        if raw.hex() != plan.sha256 {
            return Err((
                step,
                StepError::Archive(format!(
                    "{} changed after it was verified (sha256 {} now, {} verified)",
                    plan.archive.display(),
                    raw.hex(),
                    plan.sha256
                )),
            ));
        }
        extracted.ok_or((step, StepError::Archive("root.tar is missing".into())))?
    };
    finish_apply(cfg, plan, journal, &incoming, extracted, services)
}

/// Re-reads the held archive's bytes as stored and checks they hash to what was verified.
fn check_unchanged(plan: &RestorePlan) -> Result<(), StepError> {
    use sha2::Digest;
    let read = |e| StepError::io("read", &plan.archive)(e);
    let mut file = plan.archive_file.try_clone().map_err(read)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(read)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = hex::encode(h.finalize());
    if got != plan.sha256 {
        return Err(StepError::Archive(format!(
            "{} changed after it was verified (sha256 {got} now, {} verified)",
            plan.archive.display(),
            plan.sha256
        )));
    }
    Ok(())
}

/// The database, the new address and the services, once the files are in place.
fn finish_apply(
    cfg: &RestoreConfig,
    plan: &RestorePlan,
    journal: &mut extract::Journal,
    incoming: &Path,
    extracted: extract::Extracted,
    services: &services::Services,
) -> Result<Summary, Failure> {
    if let DbStep::Load { engine, .. } = &plan.db {
        let never = std::sync::atomic::AtomicBool::new(false);
        let mut ctx = crate::db::RestoreContext {
            input: crate::db::RestoreInput {
                dump_files: &plan.dump_files,
                recorded_path: plan
                    .metadata
                    .brd
                    .as_ref()
                    .and_then(|b| b.database_path.as_deref()),
                recorded_version: plan
                    .metadata
                    .brd
                    .as_ref()
                    .and_then(|b| b.database_version.as_deref()),
                target_root: &plan.target_root,
            },
            staged_dump: incoming,
            address: &plan.address,
            machine_id: &plan.metadata.machine,
            model_uuid: &plan.metadata.model_uuid,
            database_start_commands: &cfg.database_start_commands,
            files: journal,
            cancel: &never,
        };
        engine
            .restore(&mut ctx)
            .map_err(|e| ("restoring the database", e.into()))?;
    }
    if plan.drill {
        return Ok(Summary {
            files: extracted.files,
            bytes: extracted.bytes,
            rollback_dir: PathBuf::new(),
            repointed: 0,
            staged_dump: Some(incoming.to_path_buf()),
        });
    }
    let _ = std::fs::remove_dir_all(incoming);
    if !cfg.readdress_command.is_empty() && !matches!(plan.db, DbStep::NotRestored(_)) {
        let argv: Vec<String> = cfg
            .readdress_command
            .iter()
            .map(|a| a.replace("{address}", &plan.address))
            .collect();
        let env = [("JUJU_BRD_ADDRESS".to_string(), plan.address.clone())];
        let mut spec = ChildSpec::new(
            "telling the database its new address",
            &argv,
            Duration::from_secs(300),
        );
        spec.env = &env;
        process::run(spec).map_err(|e| ("telling the database its new address", e.into()))?;
    }

    let repointed = repoint_agent_confs(journal, &plan.target_root, &plan.address)
        .map_err(|e| ("re-pointing agent.conf", e))?;

    services
        .start(Duration::from_secs(300))
        .map_err(|e| ("starting the services", e.into()))?;
    if !cfg.health_command.is_empty() {
        wait_healthy(&cfg.health_command, cfg.health_timeout)
            .map_err(|e| ("waiting for the state-server to come up", e))?;
    }
    Ok(Summary {
        files: extracted.files,
        bytes: extracted.bytes,
        rollback_dir: PathBuf::new(),
        repointed,
        staged_dump: None,
    })
}

/// Re-points every machine agent's `agent.conf` under the target at `address`, reading and
/// writing only beneath the target (an archived `agent.conf` that is a symlink is refused).
fn repoint_agent_confs(
    journal: &mut extract::Journal,
    root: &Path,
    address: &str,
) -> Result<usize, StepError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let agents = root.join("var/lib/juju/agents");
    if journal
        .fs
        .kind(&agents)
        .map_err(StepError::io("inspect", &agents))?
        .is_none()
    {
        return Ok(0);
    }
    let mut names = journal
        .fs
        .read_dir(&agents)
        .map_err(StepError::io("list", &agents))?;
    names.sort();
    let mut total = 0;
    for name in names
        .iter()
        .filter(|n| crate::agents::remote::valid_agent_name(&n.to_string_lossy()))
    {
        let path = agents.join(name).join("agent.conf");
        let mut f = match journal.fs.open_read(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StepError::io("open", &path)(e)),
        };
        let meta = f.metadata().map_err(StepError::io("stat", &path))?;
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(StepError::io("read", &path))?;
        let (new, n) = crate::agent_conf::repoint::rewrite(&text, address);
        if n == 0 {
            continue;
        }
        let tmp = journal.rollback_dir.join(".agent.conf.new");
        let mut out = journal
            .fs
            .create_file(&tmp, 0o600)
            .map_err(StepError::io("create", &tmp))?;
        out.write_all(new.as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(StepError::io("write", &tmp))?;
        out.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o777))
            .map_err(StepError::io("chmod", &tmp))?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()))
                .map_err(StepError::io("chown", &tmp))?;
        }
        drop(out);
        extract::replace_file(journal, &tmp, &path).map_err(StepError::io("replace", &path))?;
        total += n;
    }
    Ok(total)
}

fn wait_healthy(argv: &[String], limit: Duration) -> Result<(), StepError> {
    // Capped by the config; checked so that no value can panic a restore half-way.
    let end = Instant::now()
        .checked_add(limit)
        .unwrap_or_else(|| Instant::now() + crate::limits::DAY);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match process::run(ChildSpec::new(
            "health check",
            argv,
            left.max(Duration::from_secs(1)),
        )) {
            Ok(()) => return Ok(()),
            Err(last) if Instant::now() >= end => {
                return Err(StepError::Unhealthy {
                    limit,
                    last: Box::new(last),
                })
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2).min(left)),
        }
    }
}

// The `[restore]` config section, owned here; `config` composes the sections and validates them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// Commands (argv) that stop the state-server before files are replaced.
    #[serde(default = "default_stop_commands")]
    pub stop_commands: Vec<Vec<String>>,
    /// Commands (argv) that start it again afterwards.
    #[serde(default = "default_start_commands")]
    pub start_commands: Vec<Vec<String>>,
    /// argv that exits 0 once the restored state-server is up.
    #[serde(default)]
    pub health_command: Vec<String>,
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub health_timeout: std::time::Duration,
    /// mongodb: commands that bring juju-db up for `mongorestore` (the rest of the state-server
    /// stays stopped until the end).
    #[serde(default = "default_database_start_commands")]
    pub database_start_commands: Vec<Vec<String>>,
    /// Ports probed on every recorded state-server address to make sure the old one is gone.
    #[serde(default = "default_probe_ports")]
    pub probe_ports: Vec<u16>,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: std::time::Duration,
    /// argv run after the database is restored, so that it records this host's address
    /// (`{address}` in an argument is replaced; also in `JUJU_BRD_ADDRESS`). For sqlite and
    /// command databases; MongoDB and dqlite are updated by juju-brd itself.
    #[serde(default)]
    pub readdress_command: Vec<String>,
}

impl RestoreConfig {
    /// For a drill: nothing to stop, start, probe or wait for, no command run.
    pub fn drill() -> RestoreConfig {
        RestoreConfig {
            stop_commands: Vec::new(),
            start_commands: Vec::new(),
            health_command: Vec::new(),
            health_timeout: default_health_timeout(),
            database_start_commands: Vec::new(),
            probe_ports: Vec::new(),
            probe_timeout: default_probe_timeout(),
            readdress_command: Vec::new(),
        }
    }
}

fn default_database_start_commands() -> Vec<Vec<String>> {
    vec![vec!["systemctl".into(), "start".into(), "juju-db".into()]]
}

fn default_health_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

fn default_probe_ports() -> Vec<u16> {
    vec![17070, 37017]
}

fn default_probe_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

fn default_start_commands() -> Vec<Vec<String>> {
    vec![vec![
        "systemctl".into(),
        "start".into(),
        "juju-db".into(),
        "jujud-machine-*".into(),
    ]]
}

fn default_stop_commands() -> Vec<Vec<String>> {
    vec![vec![
        "systemctl".into(),
        "stop".into(),
        "jujud-machine-*".into(),
        "juju-db".into(),
    ]]
}
