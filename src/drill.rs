//! Restore drills: a backup is only as good as the last time it was restored. A drill restores an
//! archive into a private scratch root on this host (no service stopped or started, no probe,
//! nothing outside the scratch root touched), proves the result usable, reports the time the
//! restore took (the RTO an operator can expect), and removes the scratch root.
//!
//! What is proven: every restored file matches the verified manifest (re-read from disk after the
//! restore); the database opens and passes the engine's own check (sqlite `integrity_check` on
//! the restored file; dqlite loaded into a throwaway local node; MongoDB `mongorestore` into a
//! throwaway `mongod` when one is installed, else "not checked"); the machine agent's agent.conf
//! parses and holds what a controller needs; the inventory of machines is readable.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive::manifest::Kind;
use crate::restore::{self, RestoreConfig, RestoreOptions};

/// The `[drill]` config section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// When the daemon runs a drill of the newest verified archive (5 or 6 cron fields), weekly
    /// by default; empty: never (drills run only on `juju-brd drill` and `POST /v1/drills`).
    #[serde(default = "default_cron")]
    pub cron: crate::schedule::CronExpr,
}

/// Sundays at 04:00, an hour after the default backup.
fn default_cron() -> crate::schedule::CronExpr {
    crate::schedule::CronExpr::parse("0 4 * * 0").expect("the default drill cron parses")
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            cron: default_cron(),
        }
    }
}

/// Everything one drill needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub archive: PathBuf,
    /// The scratch root is made in here (private, removed at the end).
    pub scratch_parent: PathBuf,
    pub environment: String,
    pub model_uuid: Option<String>,
    pub database: crate::db::DatabaseConfig,
    pub identities: Option<std::sync::Arc<crate::archive::encryption::Identities>>,
    /// Remove the scratch root on a thread of its own after the report (the daemon: its worker,
    /// which a backup may be waiting for, is free at once; deleting a large tree takes a while).
    pub clean_up_in_background: bool,
}

pub use crate::api::types::{DrillCheck as Check, DrillReport as Report};

fn check(name: &str, outcome: Result<String, Outcome>) -> Check {
    let (result, detail) = match outcome {
        Ok(d) => ("passed", d),
        Err(Outcome::Failed(d)) => ("failed", d),
        Err(Outcome::NotChecked(d)) => ("not checked", d),
    };
    Check {
        name: name.into(),
        result: result.into(),
        detail,
    }
}

/// A check that did not pass.
enum Outcome {
    Failed(String),
    NotChecked(String),
}

/// Runs a drill. An `Err` is a drill that could not restore at all (the archive refused, no
/// room): it counts as a failed drill.
pub fn run(s: &Settings) -> Result<Report, String> {
    let started = Instant::now();
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&s.scratch_parent)
        .map_err(|e| format!("cannot create {}: {e}", s.scratch_parent.display()))?;
    remove_leftovers(&s.scratch_parent);
    let scratch = tempfile::Builder::new()
        .prefix(".drill-")
        .tempdir_in(&s.scratch_parent)
        .map_err(|e| {
            format!(
                "cannot create a scratch root in {}: {e}",
                s.scratch_parent.display()
            )
        })?;
    let result = drill_into(s, scratch.path(), started);
    // The scratch root goes whatever happened. A drill killed before this is cleaned up by the
    // next one (remove_leftovers).
    if s.clean_up_in_background {
        let path = scratch.keep();
        std::thread::spawn(move || remove_scratch(&path));
    } else {
        remove_scratch(&scratch.keep());
    }
    result.map(|mut r| {
        r.seconds = started.elapsed().as_secs_f64();
        r
    })
}

fn remove_scratch(path: &Path) {
    let t = Instant::now();
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::info!(
            seconds = t.elapsed().as_secs_f64(),
            "drill: scratch root removed"
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a drill's scratch root")
        }
    }
}

/// Scratch roots of drills that did not end (the process was killed): one drill runs at a time
/// (the state lock, or the daemon's single worker), so any found now is stale.
fn remove_leftovers(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with(".drill-")
            && e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if stale {
            tracing::warn!(path = %e.path().display(), "removing the scratch root of an interrupted drill");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn drill_into(s: &Settings, scratch: &Path, started: Instant) -> Result<Report, String> {
    let opts = RestoreOptions {
        archive: s.archive.clone(),
        environment: s.environment.clone(),
        model_uuid: s.model_uuid.clone(),
        target_root: scratch.to_path_buf(),
        // Agent.conf keeps its recorded addresses: a drill re-points nothing.
        address: Some("127.0.0.1".into()),
        identities: s.identities.clone(),
        no_update_agents: true,
        drill: true,
        ..RestoreOptions::default()
    };
    let cfg = RestoreConfig::drill();
    let plan = restore::plan(&cfg, &s.database, &opts).map_err(|e| e.to_string())?;
    let summary = restore::execute(&cfg, &plan, &mut |_, _| {}).map_err(|e| e.to_string())?;
    let restore_seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        seconds = restore_seconds,
        files = summary.files,
        "drill: restored into the scratch root; checking"
    );
    let timed = |name: &str, f: &dyn Fn() -> Result<String, Outcome>| {
        let t = Instant::now();
        let c = check(name, f());
        tracing::info!(check = name, result = %c.result, seconds = t.elapsed().as_secs_f64(), "drill check");
        c
    };
    let checks = vec![
        timed("files match the manifest", &|| check_files(&plan, scratch)),
        timed("database", &|| {
            check_database(&plan, scratch, summary.staged_dump.as_deref(), &s.database)
        }),
        timed("agent.conf", &|| check_agent_conf(scratch)),
        timed("inventory of machines", &|| check_inventory(&plan.metadata)),
    ];
    Ok(Report {
        archive: s
            .archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        passed: !checks.iter().any(Check::failed),
        restore_seconds,
        seconds: 0.0,
        files: summary.files,
        bytes: summary.bytes,
        checks,
    })
}

/// Every member the manifest lists, read back from disk: files by size and digest, symlinks by
/// target, directories by kind.
fn check_files(plan: &restore::RestorePlan, root: &Path) -> Result<String, Outcome> {
    let Some(manifest) = &plan.manifest else {
        return Err(Outcome::NotChecked(
            "the archive has no juju-brd manifest (a Juju-made archive); extraction checked sizes only".into(),
        ));
    };
    let mut files = 0u64;
    for (path, e) in &manifest.root {
        let p = root.join(path.trim_start_matches('/'));
        let bad = |why: String| Outcome::Failed(format!("{path}: {why}"));
        match e.kind {
            Kind::File | Kind::Hardlink if !e.digest.is_empty() => {
                let mut f = std::fs::File::open(&p).map_err(|e| bad(e.to_string()))?;
                let mut h = manifest.algo().hasher();
                let mut buf = vec![0u8; 1 << 16];
                let mut size = 0u64;
                loop {
                    let n = f.read(&mut buf).map_err(|e| bad(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    h.update(&buf[..n]);
                }
                if size != e.size || !e.digest_matches(&h.finalize_hex()) {
                    return Err(bad("content differs from the manifest".into()));
                }
                files += 1;
            }
            Kind::Symlink => {
                let target = std::fs::read_link(&p).map_err(|e| bad(e.to_string()))?;
                if Some(target.to_string_lossy().as_ref()) != e.link.as_deref() {
                    return Err(bad("symlink target differs from the manifest".into()));
                }
            }
            Kind::Dir if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) => {
                return Err(bad("directory missing".into()));
            }
            _ => {}
        }
    }
    Ok(format!(
        "{} members, {files} files re-read and hashed",
        manifest.root.len()
    ))
}

fn check_database(
    plan: &restore::RestorePlan,
    root: &Path,
    staged_dump: Option<&Path>,
    database: &crate::db::DatabaseConfig,
) -> Result<String, Outcome> {
    let engine = plan.metadata.engine();
    match (&plan.db, engine) {
        (restore::DbStep::None, _) => Err(Outcome::NotChecked(
            "the archive holds no database dump".into(),
        )),
        (restore::DbStep::Load { .. }, "sqlite") => {
            let recorded = plan
                .metadata
                .brd
                .as_ref()
                .and_then(|b| b.database_path.as_deref())
                .ok_or_else(|| Outcome::Failed("the archive records no database path".into()))?;
            let path = root.join(recorded.trim_start_matches('/'));
            crate::db::sqlite::integrity_check(&path)
                .map(|()| format!("{recorded}: PRAGMA integrity_check ok"))
                .map_err(|e| Outcome::Failed(format!("{recorded}: {e}")))
        }
        (_, "dqlite") => match staged_dump {
            Some(dump) => dqlite_throwaway(dump, database, &plan.dump_files),
            None => Err(Outcome::Failed("the dump was not staged".into())),
        },
        (_, "mongodb" | "unknown") => match staged_dump {
            Some(dump) => mongo_throwaway(dump),
            None => Err(Outcome::Failed("the dump was not staged".into())),
        },
        (restore::DbStep::NotRestored(why), _) => Err(Outcome::NotChecked(why.clone())),
        (restore::DbStep::Load { .. }, other) => Err(Outcome::NotChecked(format!(
            "no drill check for `{other}` databases"
        ))),
    }
}

/// A child killed when dropped: a throwaway server never outlives the drill.
struct Throwaway(Child);

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16, Outcome> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Outcome::Failed(format!("no free port: {e}")))
}

/// Waits (bounded) until something listens on `addr`.
fn wait_listening(addr: &str, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// dqlite: every dumped database loaded into a one-node cluster of our own (Debian's go-dqlite
/// `dqlite-demo`), in the scratch root, on loopback.
fn dqlite_throwaway(
    dump: &Path,
    database: &crate::db::DatabaseConfig,
    dump_files: &[String],
) -> Result<String, Outcome> {
    if !installed("dqlite-demo") {
        return Err(Outcome::NotChecked(
            "not checked: no dqlite-demo to run a throwaway node (Debian package go-dqlite)".into(),
        ));
    }
    let dir = dump.join(".throwaway-node");
    std::fs::create_dir_all(&dir).map_err(|e| Outcome::Failed(e.to_string()))?;
    let (db_port, api_port) = (free_port()?, free_port()?);
    let node = format!("127.0.0.1:{db_port}");
    let child = Command::new("dqlite-demo")
        .args([
            "--api",
            &format!("127.0.0.1:{api_port}"),
            "--db",
            &node,
            "--dir",
        ])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Outcome::Failed(format!("cannot start dqlite-demo: {e}")))?;
    let _node = Throwaway(child);
    if !wait_listening(&node, Duration::from_secs(20)) {
        return Err(Outcome::Failed(
            "the throwaway dqlite node did not come up in 20s".into(),
        ));
    }
    let engine = crate::db::dqlite::DqliteEngine {
        servers: vec![node],
        ..crate::db::dqlite::DqliteEngine::from_config(database)
    };
    let never = AtomicBool::new(false);
    let mut loaded = Vec::new();
    for f in dump_files {
        let Some(name) = f.strip_prefix(&format!("{}/", crate::db::dqlite::DUMP_SUBDIR)) else {
            continue;
        };
        let rows = engine
            .load(dump, name, &dump.join(f), &never)
            .map_err(|e| Outcome::Failed(format!("loading `{name}` into a throwaway node: {e}")))?;
        loaded.push(format!("{name} ({rows} rows)"));
    }
    Ok(format!(
        "loaded into a throwaway dqlite node: {}",
        loaded.join(", ")
    ))
}

/// MongoDB: `mongorestore --oplogReplay` into a throwaway `mongod` of our own, when installed.
fn mongo_throwaway(dump: &Path) -> Result<String, Outcome> {
    let mongod = ["juju-db.mongod", "mongod"]
        .into_iter()
        .find(|p| installed(p));
    let restore = ["juju-db.mongorestore", "mongorestore"]
        .into_iter()
        .find(|p| installed(p));
    let (Some(mongod), Some(mongorestore)) = (mongod, restore) else {
        return Err(Outcome::NotChecked(
            "not checked: no mongod and mongorestore on this host".into(),
        ));
    };
    let data = dump.join(".throwaway-mongod");
    std::fs::create_dir_all(&data).map_err(|e| Outcome::Failed(e.to_string()))?;
    let port = free_port()?.to_string();
    let child = Command::new(mongod)
        .args([
            "--bind_ip",
            "127.0.0.1",
            "--port",
            &port,
            "--nounixsocket",
            "--dbpath",
        ])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Outcome::Failed(format!("cannot start {mongod}: {e}")))?;
    let _server = Throwaway(child);
    if !wait_listening(&format!("127.0.0.1:{port}"), Duration::from_secs(60)) {
        return Err(Outcome::Failed(
            "the throwaway mongod did not come up in 60s".into(),
        ));
    }
    let argv: Vec<String> = [
        mongorestore,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--oplogReplay",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dump.display().to_string()])
    .collect();
    crate::process::run(crate::process::ChildSpec::new(
        "mongorestore into a throwaway mongod",
        &argv,
        Duration::from_secs(3600),
    ))
    .map(|()| "restored into a throwaway mongod".to_string())
    .map_err(|e| Outcome::Failed(e.to_string()))
}

/// The machine agent's agent.conf parses and holds what a controller needs: its addresses, the
/// controller's certificate and key (`controllercert`/`controllerkey`, or Juju 1.x's
/// `stateservingInfo`), and the state password.
fn check_agent_conf(root: &Path) -> Result<String, Outcome> {
    let Some((path, _)) = crate::agent_conf::AgentConf::find(root) else {
        return Err(Outcome::Failed(
            "no agents/machine-*/agent.conf was restored".into(),
        ));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| Outcome::Failed(e.to_string()))?;
    let conf = crate::agent_conf::AgentConf::parse(&text).map_err(Outcome::Failed)?;
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| Outcome::Failed(e.to_string()))?;
    let has = |k: &str| {
        value
            .get(k)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    };
    let mut missing = Vec::new();
    if conf.addresses().is_empty() {
        missing.push("apiaddresses/stateaddresses");
    }
    let has_cert = has("stateservingInfo") || (has("controllercert") && has("controllerkey"));
    if !has_cert {
        missing.push("controllercert+controllerkey or stateservingInfo");
    }
    if conf.statepassword.is_empty() {
        missing.push("statepassword");
    }
    let rel = path
        .strip_prefix(root)
        .unwrap_or(&path)
        .display()
        .to_string();
    if missing.is_empty() {
        Ok(format!(
            "/{rel}: {} addresses, certificate and password present",
            conf.addresses().len()
        ))
    } else {
        Err(Outcome::Failed(format!(
            "/{rel} lacks {}",
            missing.join(", ")
        )))
    }
}

fn check_inventory(m: &crate::archive::metadata::Metadata) -> Result<String, Outcome> {
    let brd = m.brd.as_ref();
    match (
        brd.and_then(|b| b.inventory.as_ref()),
        brd.and_then(|b| b.inventory_error.as_ref()),
    ) {
        (Some(inv), _) => crate::agents::machines::from_inventory(inv)
            .map(|t| format!("{} machines, {} to re-point on restore", inv.len(), t.len()))
            .map_err(Outcome::Failed),
        // The engine cannot list machines (no inventory_query, say): a gap, not a broken archive.
        (None, Some(why)) if why.contains("not supported") => {
            Err(Outcome::NotChecked(format!("not recorded: {why}")))
        }
        (None, Some(why)) => Err(Outcome::Failed(format!("not recorded: {why}"))),
        (None, None) => Err(Outcome::NotChecked(
            "not recorded (no database, or an archive not made by juju-brd)".into(),
        )),
    }
}

/// The report as lines for a person.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "Drill of {}: {}\n  restore took {:.1}s (the RTO to expect here), {} files ({} bytes); drill {:.1}s in all\n",
        r.archive,
        if r.passed { "PASSED" } else { "FAILED" },
        r.restore_seconds,
        r.files,
        r.bytes,
        r.seconds
    );
    for c in &r.checks {
        out.push_str(&format!("  {:<26} {:<12} {}\n", c.name, c.result, c.detail));
    }
    out
}
