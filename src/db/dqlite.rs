//! dqlite (Juju 4): a consistent copy of each configured database from the cluster, through the
//! `dqlite` shell from Debian's go-dqlite package.
//!
//! The shell's `.dump ADDRESS DB` writes the database file and its WAL into its working directory,
//! taken from the leader under dqlite's own lock, so the pair is one committed state. Its failures
//! are quiet (an unreachable node prints `Error: dial failed` and exits 0; a missing database gives
//! empty files), so the output is read for errors and the copy is checked: the WAL is folded into a
//! single file with SQLite and `PRAGMA integrity_check` must pass before it goes into `dump/`.
//! TLS certificate and key are passed as file paths; no secret is ever on the argv.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{DbError, Engine, RestoreContext, RestoreInput};
use crate::process::{self, ChildSpec};

/// Dumped databases go under `dump/dqlite/<name>`.
pub const DUMP_SUBDIR: &str = "dqlite";

#[derive(Debug, Clone)]
pub struct DqliteEngine {
    pub shell: String,
    pub servers: Vec<String>,
    pub databases: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub timeout: Duration,
}

const ENGINE: &str = "dqlite";

fn fail(message: String) -> DbError {
    DbError::Failed {
        engine: ENGINE,
        message,
    }
}

impl DqliteEngine {
    pub fn from_config(d: &super::DatabaseConfig) -> Self {
        DqliteEngine {
            shell: d.shell.clone(),
            servers: d.servers.clone(),
            databases: d.databases.clone(),
            tls_cert: d.tls_cert.clone(),
            tls_key: d.tls_key.clone(),
            timeout: d.timeout,
        }
    }

    fn argv(&self, database: &str) -> Vec<String> {
        let mut argv = vec![self.shell.clone(), "-s".into(), self.servers.join(",")];
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            argv.extend([
                "-c".into(),
                c.display().to_string(),
                "-k".into(),
                k.display().to_string(),
            ]);
        }
        argv.push(database.to_string());
        argv
    }

    /// Runs shell commands (one per line) in `dir`; returns what the shell printed.
    fn shell(
        &self,
        dir: &Path,
        database: &str,
        commands: &str,
        cancel: &AtomicBool,
    ) -> Result<String, DbError> {
        let input = dir.join(".commands");
        fs::write(&input, commands).map_err(DbError::io(ENGINE, "write", &input))?;
        let what = commands.trim().replace('\n', "; ");
        let out = self.shell_file(dir, database, &input, &what, cancel);
        let _ = fs::remove_file(&input);
        out
    }

    /// Feeds the file `input` to the shell; the shell reports errors only in its output.
    fn shell_file(
        &self,
        dir: &Path,
        database: &str,
        input: &Path,
        what: &str,
        cancel: &AtomicBool,
    ) -> Result<String, DbError> {
        let output = dir.join(".output");
        let argv = self.argv(database);
        let mut spec = ChildSpec::new("dqlite shell", &argv, self.timeout);
        spec.stdin = Stdio::from(File::open(input).map_err(DbError::io(ENGINE, "open", input))?);
        spec.stdout =
            Stdio::from(File::create(&output).map_err(DbError::io(ENGINE, "create", &output))?);
        spec.cancel = Some(cancel);
        spec.dir = Some(dir);
        process::run(spec)?;
        let text = fs::read_to_string(&output).map_err(DbError::io(ENGINE, "read", &output))?;
        let _ = fs::remove_file(&output);
        if let Some(line) = text.lines().find(|l| l.contains("Error:")) {
            let msg = line.split_once("Error:").map_or(line, |(_, m)| m).trim();
            return Err(fail(format!("{what} on database `{database}`: {msg}")));
        }
        Ok(text)
    }

    /// Loads a dumped database file into the cluster as `database`, replacing its tables, so
    /// that the data reads back identical. Returns the number of rows loaded.
    pub fn load(
        &self,
        work_dir: &Path,
        database: &str,
        dump: &Path,
        cancel: &AtomicBool,
    ) -> Result<u64, DbError> {
        let sql_path = work_dir.join(format!(".{database}.sql"));
        let mut sql = std::io::BufWriter::new(
            File::create(&sql_path).map_err(DbError::io(ENGINE, "create", &sql_path))?,
        );
        let rows = replay_sql(dump, &mut sql)
            .map_err(|e| fail(format!("reading dump of `{database}`: {e}")))?;
        sql.flush()
            .map_err(DbError::io(ENGINE, "write", &sql_path))?;
        drop(sql);
        let result = self.shell_file(work_dir, database, &sql_path, "loading the dump", cancel);
        let _ = fs::remove_file(&sql_path);
        result?;
        tracing::info!(database, rows, "dqlite database loaded");
        Ok(rows)
    }

    /// The cluster's current leader (for choosing which node takes a scheduled backup).
    pub fn current_leader(&self, database: &str) -> Result<String, DbError> {
        let dir = tempfile::tempdir().map_err(DbError::io(
            ENGINE,
            "create a scratch directory in",
            &std::env::temp_dir(),
        ))?;
        self.leader(dir.path(), database, &AtomicBool::new(false))
    }

    /// The leader's address, as the cluster reports it.
    fn leader(&self, dir: &Path, database: &str, cancel: &AtomicBool) -> Result<String, DbError> {
        let out = self.shell(dir, database, ".leader\n", cancel)?;
        out.split("dqlite>")
            .map(str::trim)
            .find(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| fail(format!("no leader reported by {}", self.servers.join(","))))
    }

    fn dump_one(&self, out_dir: &Path, database: &str, cancel: &AtomicBool) -> Result<(), DbError> {
        let staging = tempfile::Builder::new()
            .prefix(".dqlite-")
            .tempdir_in(out_dir)
            .map_err(DbError::io(
                ENGINE,
                "create a staging directory in",
                out_dir,
            ))?;
        let leader = self.leader(staging.path(), database, cancel)?;
        self.shell(
            staging.path(),
            database,
            &format!(".dump {leader} {database}\n"),
            cancel,
        )?;
        let db = staging.path().join(database);
        let size = fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        if size == 0 {
            return Err(fail(format!(
                "database `{database}` does not exist on the cluster (the dump from {leader} is empty)"
            )));
        }
        fold_wal(&db).map_err(|e| {
            fail(format!(
                "the copy of `{database}` is not a valid database: {e}"
            ))
        })?;
        super::sqlite::integrity_check(&db)
            .map_err(|e| fail(format!("the copy of `{database}` is damaged: {e}")))?;
        let dest_dir = out_dir.join(DUMP_SUBDIR);
        fs::create_dir_all(&dest_dir).map_err(DbError::io(ENGINE, "create", &dest_dir))?;
        fs::rename(&db, dest_dir.join(database)).map_err(DbError::io(
            ENGINE,
            "move into the dump",
            &db,
        ))?;
        tracing::info!(database, leader = %leader, bytes = size, "dqlite database copied");
        Ok(())
    }
}

/// Juju 4 keeps the controllers' API addresses in `controller_api_address` (`host:port`): the
/// restored controller's rows (all rows, if none are its) get `address`, ports kept, as Juju's
/// own restore reset the API host ports. A database without that table is left alone.
pub fn readdress_juju4(db: &Path, address: &str, controller_id: &str) -> Result<(), String> {
    let mut conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    let has: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'controller_api_address'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if has == 0 {
        return Ok(());
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    let rows: Vec<(String, String, bool, String)> = {
        let mut stmt = tx
            .prepare("SELECT controller_id, address, COALESCE(is_agent, 0), scope FROM controller_api_address")
            .map_err(|e| e.to_string())?;
        let it = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(|e| e.to_string())?;
        it.collect::<Result<_, _>>().map_err(|e| e.to_string())?
    };
    let ours = rows.iter().any(|r| r.0 == controller_id);
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let mut new: Vec<(String, String, bool, String)> = Vec::new();
    for (id, addr, agent, scope) in rows.into_iter().filter(|r| !ours || r.0 == controller_id) {
        let port = addr
            .rsplit_once(':')
            .map_or("17070", |(_, p)| p)
            .to_string();
        let addr = format!("{host}:{port}");
        match new.iter_mut().find(|n| n.0 == id && n.1 == addr) {
            Some(n) => n.2 |= agent,
            None => new.push((id, addr, agent, scope)),
        }
    }
    tx.execute("DELETE FROM controller_api_address", [])
        .map_err(|e| e.to_string())?;
    for (id, addr, agent, scope) in &new {
        tx.execute(
            "INSERT INTO controller_api_address (controller_id, address, is_agent, scope) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![id, addr, agent, scope],
        )
        .map_err(|e| e.to_string())?;
    }
    tx.commit().map_err(|e| e.to_string())
}

/// Applies the WAL beside `db` and leaves one self-contained file (no -wal, no -shm).
fn fold_wal(db: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| e.to_string())?;
    drop(conn);
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = fs::remove_file(PathBuf::from(p));
    }
    Ok(())
}

/// Database names in a dump: the files under `dump/dqlite/`.
fn dumped_databases(dump_files: &[String]) -> Vec<&str> {
    dump_files
        .iter()
        .filter_map(|f| f.strip_prefix(&format!("{DUMP_SUBDIR}/")))
        .collect()
}

impl Engine for DqliteEngine {
    fn name(&self) -> &'static str {
        "dqlite"
    }

    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError> {
        for database in &self.databases {
            self.dump_one(out_dir, database, cancel)?;
        }
        Ok(())
    }

    /// Each dumped database is an SQLite file.
    fn inventory(&self, dump_dir: &Path) -> Result<Vec<super::Machine>, DbError> {
        // Juju 4 keeps machines in each model's database: read every dumped one that has them.
        let mut all = Vec::new();
        let mut read_any = false;
        for database in &self.databases {
            let file = dump_dir.join(DUMP_SUBDIR).join(database);
            let Ok(conn) = rusqlite::Connection::open_with_flags(
                &file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            ) else {
                continue;
            };
            if !super::inventory::has_juju4_schema(&conn) {
                continue;
            }
            read_any = true;
            all.extend(
                super::inventory::juju4(&conn).map_err(|e| fail(format!("{database}: {e}")))?,
            );
        }
        if !read_any {
            return Err(DbError::Unsupported {
                engine: ENGINE,
                what: "reading the machine inventory from databases without Juju 4's machine and ip_address tables",
            });
        }
        Ok(all)
    }

    fn checks_dump_files(&self) -> bool {
        true
    }

    fn check_dump_file(&self, file: &Path) -> Result<(), DbError> {
        super::sqlite::integrity_check(file)
            .map_err(|e| fail(format!("fails the SQLite integrity check: {e}")))
    }

    fn plan_restore(&self, input: &RestoreInput) -> Result<String, String> {
        if self.servers.is_empty() {
            return Err("set database.servers to the new dqlite cluster to load the dump".into());
        }
        Ok(format!(
            "dqlite {} -> cluster (tables replaced)",
            dumped_databases(input.dump_files).join(", ")
        ))
    }

    fn restore(&self, ctx: &mut RestoreContext) -> Result<(), DbError> {
        for db in dumped_databases(ctx.input.dump_files) {
            let dump = ctx.staged_dump.join(DUMP_SUBDIR).join(db);
            // The staged copy learns the new address before it is loaded.
            readdress_juju4(&dump, ctx.address, ctx.machine_id)
                .map_err(|e| fail(format!("`{db}`: recording the new address: {e}")))?;
            self.load(ctx.staged_dump, db, &dump, ctx.cancel)?;
        }
        Ok(())
    }

    fn leader(&self, timeout: Duration) -> Result<String, DbError> {
        let database = self
            .databases
            .first()
            .ok_or_else(|| fail("no database configured".into()))?;
        let engine = DqliteEngine {
            timeout,
            ..self.clone()
        };
        engine.current_leader(database)
    }
}

/// Longest SQL line fed to the shell: its line reader cuts lines at 4 KiB (found by testing
/// go-dqlite 1.11), which shows up as `unrecognized token` in the middle of a string.
const MAX_LINE: usize = 3800;

/// SQL that recreates `db` (schema and rows) statement by statement, one per line, for loading a
/// dumped database into a fresh cluster through the shell.
pub fn replay_sql(db: &Path, out: &mut dyn Write) -> Result<u64, String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    let mut tables: Vec<(String, String)> = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| e.to_string())?;
        for r in rows {
            tables.push(r.map_err(|e| e.to_string())?);
        }
    }
    let mut n = 0;
    for (name, sql) in &tables {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        writeln!(out, "DROP TABLE IF EXISTS {quoted};").map_err(|e| e.to_string())?;
        writeln!(out, "{};", sql.replace('\n', " ")).map_err(|e| e.to_string())?;
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {quoted}"))
            .map_err(|e| e.to_string())?;
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        // Many rows per statement: each statement is one raft commit on the cluster. Lines stay
        // far below the shell's line limit.
        let mut batch = String::new();
        let flush = |batch: &mut String, out: &mut dyn Write| -> Result<(), String> {
            if !batch.is_empty() {
                writeln!(out, "INSERT INTO {quoted} VALUES {batch};").map_err(|e| e.to_string())?;
                batch.clear();
            }
            Ok(())
        };
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let mut values = Vec::with_capacity(cols);
            for i in 0..cols {
                values.push(sql_literal(row.get_ref(i).map_err(|e| e.to_string())?));
            }
            let tuple = format!("({})", values.join(","));
            let prefix = quoted.len() + 20;
            if prefix + tuple.len() > MAX_LINE {
                return Err(format!(
                    "table {name} has a row of {} bytes as SQL; the dqlite shell reads lines of at most 4 KiB, so it cannot be loaded this way",
                    tuple.len()
                ));
            }
            if !batch.is_empty() && prefix + batch.len() + tuple.len() > MAX_LINE {
                flush(&mut batch, out)?;
            }
            if !batch.is_empty() {
                batch.push(',');
            }
            batch.push_str(&tuple);
            n += 1;
        }
        flush(&mut batch, out)?;
    }
    // Indexes, views and triggers after the data.
    let mut stmt = conn
        .prepare("SELECT sql FROM sqlite_master WHERE type IN ('index', 'view', 'trigger') AND sql IS NOT NULL ORDER BY rowid")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| e.to_string())?;
    for r in rows {
        writeln!(out, "{};", r.map_err(|e| e.to_string())?.replace('\n', " "))
            .map_err(|e| e.to_string())?;
    }
    Ok(n)
}

fn sql_literal(v: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => format!("X'{}'", hex::encode(b)),
    }
}

#[cfg(test)]
mod readdress_tests {
    #[test]
    fn controller_api_addresses_get_the_new_host_with_their_ports() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("controller");
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE controller_api_address (controller_id TEXT, address TEXT, is_agent BOOLEAN, scope TEXT, PRIMARY KEY (controller_id, address));
             INSERT INTO controller_api_address VALUES ('0','10.0.0.5:17070',1,'local-cloud'), ('0','203.0.113.5:17070',0,'public'), ('1','10.0.0.6:17070',1,'local-cloud');",
        )
        .unwrap();
        drop(conn);
        super::readdress_juju4(&db, "10.9.9.9", "0").unwrap();
        let conn = rusqlite::Connection::open(&db).unwrap();
        let rows: Vec<(String, String, bool)> = conn
            .prepare("SELECT controller_id, address, is_agent FROM controller_api_address")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![("0".into(), "10.9.9.9:17070".into(), true)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_carries_no_secret_and_names_tls_files() {
        let e = DqliteEngine {
            shell: "dqlite".into(),
            servers: vec!["10.0.0.1:9001".into(), "10.0.0.2:9001".into()],
            databases: vec!["controller".into()],
            tls_cert: Some("/var/lib/juju/dqlite/cluster.crt".into()),
            tls_key: Some("/var/lib/juju/dqlite/cluster.key".into()),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            e.argv("controller"),
            vec![
                "dqlite",
                "-s",
                "10.0.0.1:9001,10.0.0.2:9001",
                "-c",
                "/var/lib/juju/dqlite/cluster.crt",
                "-k",
                "/var/lib/juju/dqlite/cluster.key",
                "controller"
            ]
        );
    }

    #[test]
    fn replay_lines_fit_the_shell_and_oversized_rows_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&src).unwrap();
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT)")
            .unwrap();
        for i in 0..500 {
            c.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![i, "x".repeat(100)],
            )
            .unwrap();
        }
        let mut sql = Vec::new();
        replay_sql(&src, &mut sql).unwrap();
        let text = String::from_utf8(sql).unwrap();
        assert!(
            text.lines().all(|l| l.len() <= MAX_LINE),
            "a line is too long for the shell"
        );
        assert!(text.lines().filter(|l| l.starts_with("INSERT")).count() > 10);
        c.execute("INSERT INTO t VALUES (1000, ?1)", [&"y".repeat(5000)])
            .unwrap();
        let e = replay_sql(&src, &mut Vec::new()).unwrap_err();
        assert!(e.contains("table t has a row of"), "{e}");
    }

    #[test]
    fn replay_sql_recreates_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a.db");
        let c = rusqlite::Connection::open(&src).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT, b BLOB, f REAL, n);
             INSERT INTO t VALUES (1, 'it''s', X'00ff', 1.5, NULL), (2, 'two', NULL, -0.25, 7);
             CREATE INDEX t_s ON t(s);",
        )
        .unwrap();
        drop(c);
        let mut sql = Vec::new();
        assert_eq!(replay_sql(&src, &mut sql).unwrap(), 2);
        let dst = rusqlite::Connection::open_in_memory().unwrap();
        dst.execute_batch(&String::from_utf8(sql).unwrap()).unwrap();
        let rows: Vec<(i64, String, Option<Vec<u8>>, f64)> = dst
            .prepare("SELECT id, s, b, f FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows[0], (1, "it's".into(), Some(vec![0, 255]), 1.5));
        assert_eq!(rows[1].3, -0.25);
        let idx: i64 = dst
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 't_s'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(idx, 1);
    }
}
