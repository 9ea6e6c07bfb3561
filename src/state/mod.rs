//! Everything the daemon keeps in `state_dir`, one file per type, each owned here:
//!
//! | file | type | written by |
//! | --- | --- | --- |
//! | `daemon.lock` | [`StateLock`] | held by the daemon for its life, and by `backup --offline` and `prune` |
//! | `state.json` | [`DaemonState`] | the daemon's worker: last attempt, success, error, running job |
//! | `verified.json` | [`VerificationCache`] | whoever verifies an archive (backup, `verify`, `list --verify`) |
//! | `replicated.json` | [`Ledger`] | off-host copying: which archive reached which remote |
//!
//! Every file is written whole to a temporary name, fsynced and renamed (mode 0600), so a crash
//! leaves the old version or the new one. Reading never fails: a missing or unreadable file is an
//! empty state (logged), because none of these files may keep the daemon from starting.
//! Nothing here knows about archives' contents, remotes' configuration or the HTTP API.

mod daemon_state;
mod replicated;
mod verified;

use std::path::{Path, PathBuf};

pub use daemon_state::DaemonState;
pub use replicated::{Ledger, RemoteHealth};
pub use verified::VerificationCache;

use crate::archive::writer::write_atomic;

pub const LOCK_FILE: &str = "daemon.lock";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("another juju-brd daemon is running with state directory {} (lock {} is held), or a backup or prune run by hand", .0.display(), .0.join(LOCK_FILE).display())]
    Locked(PathBuf),
    #[error("{what} {}: {err}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

/// The exclusive lock on a state directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
}

/// Takes the lock on `state_dir` (creating the directory, mode 0700) without waiting.
pub fn lock(state_dir: &Path) -> Result<StateLock, StateError> {
    create_dir(state_dir)?;
    let path = state_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| StateError::Io {
            what: "open",
            path: path.clone(),
            err,
        })?;
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| StateError::Locked(state_dir.to_path_buf()))?;
    Ok(StateLock { _file: file })
}

fn create_dir(state_dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .map_err(|err| StateError::Io {
            what: "create state directory",
            path: state_dir.to_path_buf(),
            err,
        })
}

/// Reads `state_dir/file` as JSON; missing is the default, unreadable is logged and the default.
fn read_json<T: serde::de::DeserializeOwned + Default>(state_dir: &Path, file: &str) -> T {
    let path = state_dir.join(file);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "unreadable; starting from an empty state");
            T::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => T::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable; starting from an empty state");
            T::default()
        }
    }
}

/// Writes `state_dir/file` atomically, mode 0600.
fn write_json<T: serde::Serialize>(
    state_dir: &Path,
    file: &str,
    value: &T,
) -> Result<(), StateError> {
    create_dir(state_dir)?;
    let path = state_dir.join(file);
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Io {
        what: "serialise",
        path: path.clone(),
        err: e.into(),
    })?;
    write_atomic(&path, &bytes, 0o600).map_err(|err| StateError::Io {
        what: "write",
        path,
        err,
    })
}
