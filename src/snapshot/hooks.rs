//! `pre` and `post` hook commands around a snapshot. `post` always runs, even after a failure,
//! because it usually undoes what `pre` did (e.g. resumes a quiesced agent).

use std::sync::atomic::AtomicBool;

use crate::config::Hooks;
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
    let mut spec = ChildSpec::new(what, argv, hooks.timeout);
    spec.cancel = cancel;
    process::run(spec)
}
