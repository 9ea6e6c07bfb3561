//! `pre` and `post` hook commands around a snapshot. `post` always runs, even after a failure,
//! because it usually undoes what `pre` did (e.g. resumes a quiesced agent).

use std::sync::atomic::AtomicBool;

use crate::process::{self, ChildSpec, ProcessError};

pub fn run_pre(hooks: &Hooks, cancel: &AtomicBool) -> Result<(), ProcessError> {
    run(hooks, &hooks.pre, "pre hook", Some(cancel))
}

/// Not cancellable: a cancelled backup still lets `post` finish.
pub fn run_post(hooks: &Hooks) -> Result<(), ProcessError> {
    run(hooks, &hooks.post, "post hook", None)
}

fn run(
    hooks: &Hooks,
    argv: &[String],
    what: &str,
    cancel: Option<&AtomicBool>,
) -> Result<(), ProcessError> {
    if argv.is_empty() {
        return Ok(());
    }
    // The hook's environment is the scrubbed basics (see `process`) plus this file's variables.
    let env = match &hooks.environment_file {
        Some(p) => process::read_env_file(p).map_err(|err| ProcessError::EnvironmentFile {
            what: what.into(),
            path: p.clone(),
            err,
        })?,
        None => Vec::new(),
    };
    let mut spec = ChildSpec::new(what, argv, hooks.timeout);
    spec.env = &env;
    spec.cancel = cancel;
    process::run(spec)
}

// The `[hooks]` config section, owned here; `config` composes the sections and validates them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// argv run before the snapshot (e.g. to quiesce an agent); failure fails the backup.
    #[serde(default)]
    pub pre: Vec<String>,
    /// argv run after the snapshot, always, even when the backup failed.
    #[serde(default)]
    pub post: Vec<String>,
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// `KEY=VALUE` file added to the hooks' environment, which is otherwise scrubbed to PATH,
    /// HOME, locale and time zone basics.
    #[serde(default)]
    pub environment_file: Option<std::path::PathBuf>,
}

fn default_hook_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5 * 60)
}
