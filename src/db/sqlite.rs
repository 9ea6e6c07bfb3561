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
/// The pause between two attempts while another connection holds a lock.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors that mean "another connection holds a lock": worth waiting for, up to the timeout.
/// Every other error is final: it is reported at once, in SQLite's words.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// SQLite's message for an error. The backup API reports the source's errors on the destination
/// connection, whose own message is then "not an error": use the code's description instead (the
/// caller asks the source connection first, see [`SqliteEngine::failure`]).
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

/// Waiting for another connection's lock: warns once, sleeps a moment per attempt, and gives up
/// at `database.timeout`. The caller checks `cancel` before each attempt.
struct LockWait<'a> {
    database: &'a Path,
    timeout: Duration,
    /// `None`: a timeout beyond the clock's range (the config caps it), i.e. no deadline.
    deadline: Option<Instant>,
    warned: bool,
}

impl<'a> LockWait<'a> {
    fn new(database: &'a Path, timeout: Duration) -> Self {
        LockWait {
            database,
            timeout,
            deadline: Instant::now().checked_add(timeout),
            warned: false,
        }
    }

    /// After a busy attempt: `Err` once the timeout has passed, else waits before the next one.
    fn busy(&mut self) -> Result<(), DbError> {
        let shown = self.database.display();
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(fail(format!(
                "{shown} stayed locked by another process for {}s (database.timeout)",
                self.timeout.as_secs()
            )));
        }
        if !self.warned {
            tracing::warn!(database = %shown, "database is locked by another process; waiting (database.timeout)");
            self.warned = true;
        }
        std::thread::sleep(RETRY_PAUSE);
        Ok(())
    }
}

impl SqliteEngine {
    /// Why the source cannot be read, in SQLite's own words, plus what to do when the reason is a
    /// read-only directory (systemd's ProtectSystem=strict without a ReadWritePaths for it).
    fn failure(&self, what: &str, e: &rusqlite::Error, src: Option<&Connection>) -> DbError {
        let mut message = describe(e);
        // The backup API's errors arrive without their message: reading the source again through
        // its own connection gives SQLite's (e.g. "unable to open database file").
        if let Some(src) = src {
            if let Err(again) = read_schema(src) {
                message = describe(&again);
            }
        }
        let mut text = format!("{what} {} failed: {message}", self.path.display());
        if let Some(hint) = self.read_only_directory() {
            text.push_str(&hint);
        }
        fail(text)
    }

    /// When the database's directory is on a read-only filesystem for this process: SQLite cannot
    /// create the `-shm` file it needs to read a WAL-mode database there.
    fn read_only_directory(&self) -> Option<String> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        match nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
            Err(nix::errno::Errno::EROFS) => Some(format!(
                " ({} is read-only for juju-brd, and SQLite must create or write {}-shm there to \
                 read a database in WAL mode: when juju-brd runs under systemd, add the directory \
                 to ReadWritePaths with `systemctl edit juju-brd`)",
                dir.display(),
                self.path.display()
            )),
            _ => None,
        }
    }
}

/// A read of the schema: opens the database's WAL index, so a database that cannot be read says
/// so here, with SQLite's message, before the copy starts.
fn read_schema(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
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
        // Read-only: a backup never writes to the live database (nor checkpoints it on close).
        // Without CREATE, a missing file is an error, never a fresh empty database.
        let src = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.failure("opening", &e, None))?;
        // SQLite's own busy wait cannot see `cancel`: keep it short and wait in the loops below.
        src.busy_timeout(BUSY_SLICE)
            .map_err(|e| fail(format!("{shown}: {}", describe(&e))))?;
        let mut wait = LockWait::new(&self.path, self.timeout);
        // Only a lock is waited for; anything else (cannot open the -shm, not a database, I/O
        // error) will not get better by retrying: it fails now, in SQLite's words.
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(DbError::Cancelled { engine: "sqlite" });
            }
            match read_schema(&src) {
                Ok(_) => break,
                Err(e) if is_busy(&e) => wait.busy()?,
                Err(e) => return Err(self.failure("reading", &e, None)),
            }
        }
        let file_name = self
            .path
            .file_name()
            .map_or("state.db".into(), |n| n.to_string_lossy().into_owned());
        let out = out_dir.join(&file_name);
        let mut dst = Connection::open(&out).map_err(|e| {
            fail(format!(
                "cannot create the dump {}: {}",
                out.display(),
                describe(&e)
            ))
        })?;
        // A staging copy: durable once it is inside the archive, which is fsynced itself. Left
        // at FULL, SQLite fsynced this copy of the whole database before the backup could go on.
        dst.pragma_update(None, "synchronous", "OFF")
            .map_err(|e| fail(format!("{}: {}", out.display(), describe(&e))))?;
        {
            let backup = Backup::new(&src, &mut dst)
                .map_err(|e| self.failure("starting the backup of", &e, Some(&src)))?;
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(DbError::Cancelled { engine: "sqlite" });
                }
                match backup.step(-1) {
                    Ok(StepResult::Done) => break,
                    Ok(StepResult::More) => continue,
                    Ok(StepResult::Busy | StepResult::Locked) => wait.busy()?,
                    Err(e) if is_busy(&e) => wait.busy()?,
                    Err(e) => return Err(self.failure("backup of", &e, Some(&src))),
                    Ok(other) => {
                        return Err(fail(format!("backup of {shown} did not finish: {other:?}")))
                    }
                }
            }
        }
        drop(src);
        // The copy is a single file: no WAL left beside it.
        dst.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| fail(format!("{}: {}", out.display(), describe(&e))))?;
        drop(dst);
        integrity_check_cancellable(&out, cancel).map_err(|e| match e {
            Checked::Cancelled => DbError::Cancelled { engine: "sqlite" },
            Checked::Damaged(e) => fail(format!("the copy of {shown} is damaged: {e}")),
        })?;
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

enum Checked {
    Cancelled,
    Damaged(String),
}

/// [`integrity_check`] of the fresh copy, interrupted once `cancel` is set (on a large database it
/// reads every page, which takes a while).
fn integrity_check_cancellable(path: &Path, cancel: &AtomicBool) -> Result<(), Checked> {
    use std::sync::mpsc;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Checked::Damaged(describe(&e)))?;
    let interrupt = conn.get_interrupt_handle();
    let result = std::thread::scope(|s| {
        let (finished, watching) = mpsc::channel::<()>();
        // Until the check is over (the sender is dropped), interrupt it once `cancel` is set.
        s.spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = watching.recv_timeout(RETRY_PAUSE) {
                if cancel.load(Ordering::Relaxed) {
                    interrupt.interrupt();
                    return;
                }
            }
        });
        let checked = check_open(&conn);
        drop(finished);
        checked
    });
    if cancel.load(Ordering::Relaxed) {
        return Err(Checked::Cancelled);
    }
    result.map_err(Checked::Damaged)
}

/// `PRAGMA integrity_check` on a database file, opened read-only.
pub fn integrity_check(path: &Path) -> Result<(), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    check_open(&conn)
}

fn check_open(conn: &Connection) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL-mode database at `dir/state.db` with one row in table `t`.
    fn wal_database(dir: &Path) -> PathBuf {
        let db = dir.join("state.db");
        let c = Connection::open(&db).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        db
    }

    fn engine(path: &Path) -> SqliteEngine {
        SqliteEngine {
            path: path.to_path_buf(),
            timeout: Duration::from_secs(30 * 60),
            inventory_query: None,
        }
    }

    /// Issue 14 item 3, defect 1: when SQLite cannot open the `-shm` file (as under
    /// ProtectSystem=strict without ReadWritePaths), the dump fails at once, in SQLite's words,
    /// not after database.timeout with "not an error".
    #[test]
    fn a_shm_file_that_cannot_be_created_fails_at_once_in_sqlites_words() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_database(dir.path());
        // Where the -shm must go, a link into nowhere: SQLite cannot create it, even as root.
        std::os::unix::fs::symlink(
            "/nonexistent/juju-brd-test/shm",
            dir.path().join("state.db-shm"),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let e = engine(&db)
            .dump(out.path(), &AtomicBool::new(false))
            .unwrap_err()
            .to_string();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(e.contains("unable to open database file"), "{e}");
        assert!(!e.contains("not an error"), "{e}");
        assert!(e.contains(&db.display().to_string()), "{e}");
    }

    /// The dump reads what is committed in the WAL of a live database, and never writes to the
    /// database itself (no checkpoint when its connection closes).
    #[test]
    fn the_dump_reads_a_live_wal_database_without_writing_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_database(dir.path());
        let writer = Connection::open(&db).unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let before = std::fs::read(&db).unwrap();
        let out = tempfile::tempdir().unwrap();
        engine(&db)
            .dump(out.path(), &AtomicBool::new(false))
            .unwrap();
        assert_eq!(
            std::fs::read(&db).unwrap(),
            before,
            "the live database was written"
        );
        let copy = Connection::open(out.path().join("state.db")).unwrap();
        let rows: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "the row only in the WAL is missing from the copy");
        let mode: String = copy
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        drop(writer);
    }

    /// A cancel set before the integrity check of the copy stops it as cancelled.
    #[test]
    fn the_integrity_check_of_the_copy_honours_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_database(dir.path());
        assert!(integrity_check_cancellable(&db, &AtomicBool::new(false)).is_ok());
        assert!(matches!(
            integrity_check_cancellable(&db, &AtomicBool::new(true)),
            Err(Checked::Cancelled)
        ));
    }
}
