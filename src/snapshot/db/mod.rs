//! Database engines: each produces a consistent dump of the state-server's database into `dump/`.
//!
//! An engine never writes outside the directory it is given and never puts a secret on a child's
//! argv. New engines (dqlite, MongoDB) implement [`DbEngine`] and are chosen in [`from_config`].

pub mod command;
pub mod dqlite;
pub mod mongo;
pub mod sqlite;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::config::{DatabaseConfig, Engine};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database ({engine}): {message}")]
    Failed {
        engine: &'static str,
        message: String,
    },
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
}

pub trait DbEngine: Send + Sync {
    /// Recorded in the archive metadata; tells verify and restore how to treat `dump/`.
    fn name(&self) -> &'static str;
    /// Expected dump size in bytes, for the free-space check before anything is written.
    fn estimate_bytes(&self) -> u64;
    /// Writes a consistent dump into `out_dir` (empty, private, on the archive's filesystem).
    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError>;
}

/// The configured engine; `root` is the host root (the MongoDB engine reads agent.conf there).
pub fn from_config(cfg: &DatabaseConfig, root: &Path) -> Option<Box<dyn DbEngine>> {
    match cfg.engine {
        Engine::None => None,
        Engine::Sqlite => Some(Box::new(sqlite::SqliteEngine {
            path: cfg.path.clone().expect("validated: sqlite has a path"),
            timeout: cfg.timeout,
        })),
        Engine::Mongodb => Some(Box::new(mongo::MongoEngine {
            root: root.to_path_buf(),
            timeout: cfg.timeout,
        })),
        Engine::Dqlite => Some(Box::new(dqlite::DqliteEngine::from_config(cfg))),
        Engine::Command => Some(Box::new(command::CommandEngine {
            argv: cfg.command.clone(),
            dump_file: cfg.dump_file.clone(),
            environment_file: cfg.environment_file.clone(),
            estimate: cfg.estimate_bytes,
            timeout: cfg.timeout,
        })),
    }
}
