//! What the daemon remembers across restarts, in `state_dir/state.json` (written atomically):
//! last attempt and success, the last error, and the job that was running, so a crash mid-backup
//! is noticed and catch-up after downtime is correct.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::writer::write_atomic;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonState {
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_archive: Option<String>,
    pub last_error: Option<String>,
    /// Set while a backup runs; found set at start-up means the daemon died during it.
    pub running_job: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

impl DaemonState {
    pub fn load(state_dir: &Path) -> DaemonState {
        match std::fs::read(path(state_dir)) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "state.json is unreadable; starting with empty state");
                DaemonState::default()
            }),
            Err(_) => DaemonState::default(),
        }
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        write_atomic(
            &path(state_dir),
            &serde_json::to_vec_pretty(self).expect("serialises"),
            0o600,
        )
    }
}
