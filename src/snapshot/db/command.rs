//! Any dump command: its stdout becomes `dump/<dump_file>`; a non-zero exit or a timeout fails the
//! backup. Credentials come from an environment file, so they never appear on the child's argv.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{DbEngine, DbError};
use crate::process::{self, ChildSpec};

pub struct CommandEngine {
    pub argv: Vec<String>,
    pub dump_file: String,
    pub environment_file: Option<PathBuf>,
    pub estimate: u64,
    pub timeout: Duration,
}

impl DbEngine for CommandEngine {
    fn name(&self) -> &'static str {
        "command"
    }

    fn estimate_bytes(&self) -> u64 {
        self.estimate
    }

    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError> {
        let env = match &self.environment_file {
            Some(p) => process::read_env_file(p).map_err(|e| DbError::Failed {
                engine: "command",
                message: format!("cannot read environment_file {}: {e}", p.display()),
            })?,
            None => Vec::new(),
        };
        let out = out_dir.join(&self.dump_file);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&out)
            .map_err(|e| DbError::Failed {
                engine: "command",
                message: format!("cannot create {}: {e}", out.display()),
            })?;
        let mut spec = ChildSpec::new("database dump", &self.argv, self.timeout);
        spec.env = &env;
        spec.stdout = Stdio::from(file.try_clone().map_err(|e| DbError::Failed {
            engine: "command",
            message: e.to_string(),
        })?);
        spec.cancel = Some(cancel);
        process::run(spec)?;
        file.sync_all().map_err(|e| DbError::Failed {
            engine: "command",
            message: format!("fsync {}: {e}", out.display()),
        })?;
        Ok(())
    }
}
