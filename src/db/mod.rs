//! Database engines: one [`Engine`] trait, one implementation per kind of database.
//!
//! An engine is everything juju-brd does with a database: take a consistent dump into `dump/`,
//! estimate its size, check a dumped file, load a dump back on a replacement host, name the
//! cluster's leader for HA, and (where the database records them) list the environment's machines
//! and learn a new state-server address. Snapshot, restore, HA and archive verification call the
//! trait; the engine's name is matched in this file alone, where [`from_config`] and
//! [`for_archive`] build one.
//!
//! An engine never writes outside the directories it is given and never puts a secret on a child's
//! argv. The database's own config section ([`DatabaseConfig`]) lives here too.

pub mod command;
pub mod dqlite;
pub mod inventory;
pub mod mongo;
pub mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database ({engine}): {message}")]
    Failed {
        engine: &'static str,
        message: String,
    },
    /// A file operation failed: the path and the step are kept.
    #[error("database ({engine}): {step} {}: {err}", path.display())]
    Io {
        engine: &'static str,
        step: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("database ({engine}): {what} is not supported by this engine")]
    Unsupported {
        engine: &'static str,
        what: &'static str,
    },
    #[error("database ({engine}): cancelled")]
    Cancelled { engine: &'static str },
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
}

impl DbError {
    /// An `Io` error builder for `map_err`: `.map_err(DbError::io("sqlite", "create", &path))`.
    pub fn io<'a>(
        engine: &'static str,
        step: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> DbError + 'a {
        move |err| DbError::Io {
            engine,
            step,
            path: path.to_path_buf(),
            err,
        }
    }
}

/// How an engine changes files under the restore target: through restore's journal, so that a
/// later failure puts every replaced file back.
pub trait TargetFiles {
    /// Moves an existing file out of the way (it comes back on rollback); absent files are fine.
    fn move_aside(&mut self, path: &Path) -> std::io::Result<()>;
    /// Puts the fully written `staged` file at `dest`, keeping what was there for rollback.
    fn replace_file(&mut self, staged: &Path, dest: &Path) -> std::io::Result<()>;
    /// Mode bits (`& 0o777`), uid and gid of the regular file at `path`, if there is one.
    fn existing_file(&mut self, path: &Path) -> std::io::Result<Option<(u32, u32, u32)>>;
}

/// What restore knows when it plans and runs the database step.
pub struct RestoreInput<'a> {
    /// Dump files in the archive, relative to `dump/`.
    pub dump_files: &'a [String],
    /// The database's host path as the archive records it (sqlite), if any.
    pub recorded_path: Option<&'a str>,
    /// The database server's version when the dump was taken, if the archive records it.
    pub recorded_version: Option<&'a str>,
    /// The root the state-server is restored into (`/` in production).
    pub target_root: &'a Path,
}

/// What restore gives an engine to load a dump.
pub struct RestoreContext<'a> {
    pub input: RestoreInput<'a>,
    /// The dump, staged on the target's filesystem (the archive's `dump/` directory).
    pub staged_dump: &'a Path,
    /// This host's address, which a clustered database is re-initiated at, and which the
    /// database's record of the state-server learns (so agents are not sent to the old one).
    pub address: &'a str,
    /// The restored state-server's machine id and model UUID, as the archive records them.
    pub machine_id: &'a str,
    pub model_uuid: &'a str,
    /// Commands that bring the database server up for loading (MongoDB: juju-db).
    pub database_start_commands: &'a [Vec<String>],
    pub files: &'a mut dyn TargetFiles,
    pub cancel: &'a AtomicBool,
}

/// One machine of the environment, as the database records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    pub id: String,
    pub addresses: Vec<String>,
    pub state_server: bool,
}

pub trait Engine: Send + Sync + fmt::Debug {
    /// Recorded in the archive metadata; tells verify and restore which engine reads `dump/`.
    fn name(&self) -> &'static str;

    /// Expected dump size in bytes, for the free-space check before anything is written.
    fn estimate_bytes(&self) -> u64 {
        0
    }

    /// Writes a consistent dump into `out_dir` (empty, private, on the archive's filesystem).
    /// Returns promptly with an error once `cancel` is set. An engine that
    /// [checks dump files](Engine::checks_dump_files) leaves only files that pass that check:
    /// backup archives the dump as it is, without checking it a second time.
    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError>;

    /// The database server's version, recorded in the archive so a restore can refuse a server
    /// that cannot load the dump (`None`: not known or not relevant for this engine).
    fn server_version(&self) -> Option<String> {
        None
    }

    /// Whether verify should copy each dump file out and pass it to [`Engine::check_dump_file`].
    fn checks_dump_files(&self) -> bool {
        false
    }

    /// The engine's own integrity check of one dumped file (SQLite: `PRAGMA integrity_check`).
    fn check_dump_file(&self, _file: &Path) -> Result<(), DbError> {
        Ok(())
    }

    /// What loading this dump will do, as one line of the restore plan; `Err` says why this
    /// host cannot load it (nothing has changed yet when that is reported).
    fn plan_restore(&self, input: &RestoreInput) -> Result<String, String>;

    /// Whether [`Engine::restore`] writes only beneath the target root (a database file), and
    /// so may run in a drill; engines that load into a server (MongoDB, dqlite, a command) do not.
    fn restores_beneath_target(&self) -> bool {
        false
    }

    /// Loads the staged dump. Files under the target change only through `ctx.files`.
    fn restore(&self, ctx: &mut RestoreContext) -> Result<(), DbError>;

    /// The database leader's (or replica-set primary's) address, for HA slot-taking.
    fn leader(&self, _timeout: Duration) -> Result<String, DbError> {
        Err(DbError::Unsupported {
            engine: self.name(),
            what: "asking for the leader",
        })
    }

    /// The environment's machines as recorded in a dump taken by this engine.
    fn inventory(&self, _dump_dir: &Path) -> Result<Vec<Machine>, DbError> {
        Err(DbError::Unsupported {
            engine: self.name(),
            what: "reading the machine inventory",
        })
    }
}

/// The engine the config names, reading the host under `root`; `None` for `engine = "none"`.
pub fn from_config(cfg: &DatabaseConfig, root: &Path) -> Option<Box<dyn Engine>> {
    let engine: Box<dyn Engine> = match cfg.engine {
        EngineKind::None => return None,
        EngineKind::Sqlite => Box::new(sqlite::SqliteEngine::from_config(cfg)),
        EngineKind::Mongodb => Box::new(mongo::MongoEngine {
            root: root.to_path_buf(),
            timeout: cfg.timeout,
        }),
        EngineKind::Dqlite => Box::new(dqlite::DqliteEngine::from_config(cfg)),
        EngineKind::Command => Box::new(command::CommandEngine::from_config(cfg)),
    };
    Some(engine)
}

/// The engine that reads a dump recorded as `name` in an archive's metadata, configured from
/// this host's `cfg` (restore's target, cluster servers, restore command). Juju's own archives
/// carry no engine name (`unknown`): their dump is MongoDB's. `None` for a name no engine has.
pub fn for_archive(name: &str, cfg: &DatabaseConfig, root: &Path) -> Option<Box<dyn Engine>> {
    let kind = match name {
        "sqlite" => EngineKind::Sqlite,
        "command" => EngineKind::Command,
        "dqlite" => EngineKind::Dqlite,
        "mongodb" | "unknown" => EngineKind::Mongodb,
        _ => return None,
    };
    let mut cfg = cfg.clone();
    cfg.engine = kind;
    from_config(&cfg, root)
}

// The `[database]` config section, owned here; `config` composes the sections and validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    None,
    Sqlite,
    Command,
    Dqlite,
    Mongodb,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "default_engine")]
    pub engine: EngineKind,
    /// sqlite: the live database file (read through SQLite's online backup API).
    #[serde(default)]
    pub path: Option<std::path::PathBuf>,
    /// command: argv of a dump command; its stdout becomes `dump/<dump_file>`.
    #[serde(default)]
    pub command: Vec<String>,
    /// command: argv of the matching restore command; the dump is fed on stdin.
    #[serde(default)]
    pub restore_command: Vec<String>,
    /// command: the file name the dump gets under `dump/`.
    #[serde(default = "default_dump_file")]
    pub dump_file: String,
    /// command: KEY=VALUE lines given to the child's environment, so passwords never reach argv.
    #[serde(default)]
    pub environment_file: Option<std::path::PathBuf>,
    /// command: expected dump size, used only for the free-space check.
    #[serde(default)]
    pub estimate_bytes: u64,
    /// dqlite: the cluster's node addresses (host:port).
    #[serde(default)]
    pub servers: Vec<String>,
    /// dqlite: the database names to copy.
    #[serde(default)]
    pub databases: Vec<String>,
    /// dqlite: the shell program (Debian's go-dqlite ships `dqlite`).
    #[serde(default = "default_dqlite_shell")]
    pub shell: String,
    /// dqlite: TLS certificate and key files for the cluster, if it uses TLS.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    #[serde(default = "default_db_timeout", with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// sqlite: the SQL that lists the environment's machines as (id, addresses, state_server),
    /// run on the dump; without it, Juju 4's own tables are read when the database has them.
    #[serde(default)]
    pub inventory_query: Option<String>,
    /// command: argv run after the dump that prints the machines as JSON
    /// (`[{"id": "1", "addresses": ["10.0.0.2"], "state_server": false}]`).
    #[serde(default)]
    pub inventory_command: Vec<String>,
}

fn default_db_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30 * 60)
}

fn default_dqlite_shell() -> String {
    "dqlite".into()
}

fn default_dump_file() -> String {
    "database.dump".into()
}

fn default_engine() -> EngineKind {
    EngineKind::None
}
