//! Any dump command: its stdout becomes `dump/<dump_file>`; a non-zero exit or a timeout fails the
//! backup. Credentials come from an environment file, so they never appear on the child's argv.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{DbError, Engine, RestoreContext, RestoreInput};
use crate::process::{self, ChildSpec};

#[derive(Debug)]
pub struct CommandEngine {
    pub argv: Vec<String>,
    /// argv of the matching restore command; the dump is fed on stdin. Empty: none configured.
    pub restore_argv: Vec<String>,
    pub dump_file: String,
    pub environment_file: Option<PathBuf>,
    pub estimate: u64,
    pub timeout: Duration,
    /// `database.inventory_command`: prints the machines as JSON.
    pub inventory_argv: Vec<String>,
}

impl CommandEngine {
    pub fn from_config(cfg: &super::DatabaseConfig) -> Self {
        CommandEngine {
            argv: cfg.command.clone(),
            restore_argv: cfg.restore_command.clone(),
            dump_file: cfg.dump_file.clone(),
            environment_file: cfg.environment_file.clone(),
            estimate: cfg.estimate_bytes,
            timeout: cfg.timeout,
            inventory_argv: cfg.inventory_command.clone(),
        }
    }

    /// The child's environment from `environment_file`, so credentials never reach argv.
    fn environment(&self) -> Result<Vec<(String, String)>, DbError> {
        match &self.environment_file {
            Some(p) => process::read_env_file(p).map_err(|e| DbError::Failed {
                engine: "command",
                message: format!("cannot read environment_file {}: {e}", p.display()),
            }),
            None => Ok(Vec::new()),
        }
    }
}

impl Engine for CommandEngine {
    fn name(&self) -> &'static str {
        "command"
    }

    fn estimate_bytes(&self) -> u64 {
        self.estimate
    }

    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError> {
        let env = self.environment()?;
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
        file.sync_all()
            .map_err(DbError::io("command", "fsync", &out))?;
        Ok(())
    }

    fn inventory(&self, _dump_dir: &Path) -> Result<Vec<super::Machine>, DbError> {
        if self.inventory_argv.is_empty() {
            return Err(DbError::Unsupported {
                engine: "command",
                what: "reading the machine inventory without database.inventory_command",
            });
        }
        let env = self.environment()?;
        let mut out = tempfile::tempfile().map_err(DbError::io(
            "command",
            "create",
            Path::new("a temporary file"),
        ))?;
        let mut spec = ChildSpec::new("inventory command", &self.inventory_argv, self.timeout);
        spec.env = &env;
        spec.stdout = Stdio::from(out.try_clone().map_err(DbError::io(
            "command",
            "dup",
            Path::new("a temporary file"),
        ))?);
        process::run(spec)?;
        let mut bytes = Vec::new();
        use std::io::{Read, Seek};
        out.rewind()
            .and_then(|()| (&mut out).take(16 << 20).read_to_end(&mut bytes))
            .map_err(DbError::io(
                "command",
                "read",
                Path::new("the inventory command's output"),
            ))?;
        super::inventory::from_json(&bytes).map_err(|e| DbError::Failed {
            engine: "command",
            message: format!("inventory command: {e}"),
        })
    }

    fn plan_restore(&self, input: &RestoreInput) -> Result<String, String> {
        let dump = input
            .dump_files
            .first()
            .ok_or("the archive holds no dump")?;
        let program = self
            .restore_argv
            .first()
            .ok_or("database.restore_command is not configured")?;
        Ok(format!("dump/{dump} | {program}"))
    }

    fn restore(&self, ctx: &mut RestoreContext) -> Result<(), DbError> {
        let dump = ctx.input.dump_files.first().ok_or(DbError::Failed {
            engine: "command",
            message: "the archive holds no dump".into(),
        })?;
        let env = self.environment()?;
        let path = ctx.staged_dump.join(dump);
        let stdin = std::fs::File::open(&path).map_err(DbError::io("command", "open", &path))?;
        let mut spec = ChildSpec::new("database restore", &self.restore_argv, self.timeout);
        spec.env = &env;
        spec.stdin = stdin.into();
        spec.cancel = Some(ctx.cancel);
        process::run(spec)?;
        Ok(())
    }
}
