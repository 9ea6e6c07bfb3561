//! SQLite: a transaction-consistent copy of the live database through SQLite's online backup API.
//!
//! The whole copy is taken in one backup step, i.e. inside one read transaction: writers in WAL
//! mode keep committing meanwhile, and the copy is exactly the database as of the step's start. (A
//! stepped copy would restart every time another connection writes, and can starve under load.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{backup::Backup, backup::StepResult, Connection, OpenFlags};

use super::{DbError, Engine, RestoreContext, RestoreInput};

#[derive(Debug)]
pub struct SqliteEngine {
    /// The live database (backup); restore puts the dump where the archive recorded it.
    pub path: PathBuf,
    pub timeout: Duration,
    /// `database.inventory_query`, run on the dump.
    pub inventory_query: Option<String>,
}

impl SqliteEngine {
    pub fn from_config(cfg: &super::DatabaseConfig) -> Self {
        SqliteEngine {
            path: cfg.path.clone().unwrap_or_default(),
            timeout: cfg.timeout,
            inventory_query: cfg.inventory_query.clone(),
        }
    }

    /// The machines, from the dumped copy (the snapshot itself, read-only).
    fn read_inventory(&self, dump_dir: &Path) -> Result<Vec<super::Machine>, DbError> {
        let name = self
            .path
            .file_name()
            .map_or("state.db".into(), |n| n.to_string_lossy().into_owned());
        let copy = dump_dir.join(name);
        let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| fail(format!("cannot open the dump {}: {e}", copy.display())))?;
        match &self.inventory_query {
            Some(q) => super::inventory::from_query(&conn, q).map_err(fail),
            None if super::inventory::has_juju4_schema(&conn) => {
                super::inventory::juju4(&conn).map_err(fail)
            }
            None => Err(DbError::Unsupported {
                engine: "sqlite",
                what: "reading the machine inventory without database.inventory_query",
            }),
        }
    }
}

/// Where restore writes the database: the recorded host path, under the target root.
fn restore_destination(input: &RestoreInput) -> Result<PathBuf, String> {
    let recorded = input
        .recorded_path
        .ok_or("the archive does not record where the database lives")?;
    Ok(input.target_root.join(recorded.trim_start_matches('/')))
}

/// How long one attempt waits inside SQLite for a lock: cancellation is checked between attempts.
const BUSY_SLICE: Duration = Duration::from_millis(100);

/// Errors that mean "another connection holds a lock": worth waiting for, up to the timeout.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// SQLite's message for an error. The backup API reports the source's errors on the destination
/// connection, whose own message is then "not an error": use the code's description instead.
fn describe(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => match msg.as_deref() {
            Some(m) if m != "not an error" => m.to_string(),
            _ => code.to_string(),
        },
        other => other.to_string(),
    }
}

fn fail(message: String) -> DbError {
    DbError::Failed {
        engine: "sqlite",
        message,
    }
}

impl Engine for SqliteEngine {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn estimate_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        size(&self.path) + size(Path::new(&wal))
    }

    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError> {
        let shown = self.path.display();
        if !self.path.is_file() {
            return Err(fail(format!("database {shown} does not exist")));
        }
        // Read-write without CREATE: a missing file is an error, never a fresh empty database.
        let src = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(format!("cannot open {shown}: {e}")))?;
        // SQLite's own busy wait cannot see `cancel`: keep it short and wait in the loop below.
        src.busy_timeout(BUSY_SLICE)
            .map_err(|e| fail(format!("{shown}: {e}")))?;
        let file_name = self
            .path
            .file_name()
            .map_or("state.db".into(), |n| n.to_string_lossy().into_owned());
        let out = out_dir.join(&file_name);
        let mut dst = Connection::open(&out)
            .map_err(|e| fail(format!("cannot create the dump {}: {e}", out.display())))?;
        // A timeout beyond the clock's range (the config caps it) means no deadline, never a panic.
        let started = Instant::now();
        let deadline = started.checked_add(self.timeout);
        let mut waited_for_lock = false;
        {
            let backup = Backup::new(&src, &mut dst)
                .map_err(|e| fail(format!("cannot start the backup of {shown}: {e}")))?;
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(DbError::Cancelled { engine: "sqlite" });
                }
                match backup.step(-1) {
                    Ok(StepResult::Done) => break,
                    Ok(StepResult::More) => continue,
                    Ok(StepResult::Busy | StepResult::Locked) => {}
                    Err(e) if is_busy(&e) => {}
                    // Anything else (cannot open, not a database, I/O error, full disk) will not
                    // get better by retrying: fail now with SQLite's message.
                    Err(e) => {
                        return Err(fail(format!("backup of {shown} failed: {}", describe(&e))))
                    }
                    Ok(other) => {
                        return Err(fail(format!("backup of {shown} did not finish: {other:?}")))
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(fail(format!(
                        "{shown} stayed locked by another process for {}s (database.timeout)",
                        self.timeout.as_secs()
                    )));
                }
                if !waited_for_lock {
                    tracing::warn!(database = %shown, "database is locked by another process; waiting (database.timeout)");
                    waited_for_lock = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // The copy is a single file: no WAL left beside it.
        dst.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| fail(format!("{}: {e}", out.display())))?;
        drop(dst);
        integrity_check(&out).map_err(|e| fail(format!("the copy of {shown} is damaged: {e}")))?;
        Ok(())
    }

    fn checks_dump_files(&self) -> bool {
        true
    }

    fn inventory(&self, dump_dir: &Path) -> Result<Vec<super::Machine>, DbError> {
        self.read_inventory(dump_dir)
    }

    fn restores_beneath_target(&self) -> bool {
        true
    }

    fn check_dump_file(&self, file: &Path) -> Result<(), DbError> {
        integrity_check(file).map_err(|e| fail(format!("fails the SQLite integrity check: {e}")))
    }

    fn plan_restore(&self, input: &RestoreInput) -> Result<String, String> {
        let dump = input
            .dump_files
            .first()
            .ok_or("the archive holds no dump")?;
        let dest = restore_destination(input)?;
        Ok(format!(
            "dump/{dump} -> {} (atomic replace)",
            dest.display()
        ))
    }

    fn restore(&self, ctx: &mut RestoreContext) -> Result<(), DbError> {
        let dump = ctx
            .input
            .dump_files
            .first()
            .ok_or_else(|| fail("the archive holds no dump".into()))?;
        let dest = restore_destination(&ctx.input).map_err(fail)?;
        let src = ctx.staged_dump.join(dump);
        self.check_dump_file(&src)?;
        // The database keeps the mode and owner of the file it replaces; a new one is private.
        let existing =
            ctx.files
                .existing_file(&dest)
                .map_err(DbError::io("sqlite", "inspecting", &dest))?;
        let (mode, owner) = existing.map_or((0o600, None), |(m, u, g)| (m, Some((u, g))));
        std::fs::set_permissions(&src, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(DbError::io("sqlite", "chmod", &src))?;
        if let Some((uid, gid)) = owner.filter(|_| nix::unistd::geteuid().is_root()) {
            std::os::unix::fs::chown(&src, Some(uid), Some(gid))
                .map_err(DbError::io("sqlite", "chown", &src))?;
        }
        for suffix in ["-wal", "-shm"] {
            let mut side = dest.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            ctx.files
                .move_aside(&side)
                .map_err(DbError::io("sqlite", "moving aside", &side))?;
        }
        ctx.files
            .replace_file(&src, &dest)
            .map_err(DbError::io("sqlite", "replacing", &dest))
    }
}

/// `PRAGMA integrity_check` on a database file, opened read-only.
pub fn integrity_check(path: &Path) -> Result<(), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if rows.first().map(String::as_str) == Some("ok") {
        Ok(())
    } else {
        Err(rows.into_iter().take(3).collect::<Vec<_>>().join("; "))
    }
}
