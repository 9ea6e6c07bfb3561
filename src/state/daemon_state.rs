//! What the daemon remembers across restarts, in `state_dir/state.json` (written atomically):
//! last attempt and success, the last error, and the job that was running, so a crash mid-backup
//! is noticed and catch-up after downtime is correct; and the last scrub, so its cadence and what
//! it found survive a restart.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonState {
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_archive: Option<String>,
    pub last_error: Option<String>,
    /// Set while a backup runs; found set at start-up means the daemon died during it.
    pub running_job: Option<String>,
    /// When the last scrub finished (whatever it found).
    #[serde(default)]
    pub last_scrub: Option<DateTime<Utc>>,
    /// When the last scrub finished that found everything sound.
    #[serde(default)]
    pub last_scrub_success: Option<DateTime<Utc>>,
    /// What the last scrub found damaged: archive names, `NAME on remote R` for remote copies.
    #[serde(default)]
    pub scrub_damaged: Vec<String>,
    /// What kept the last scrub from reading something (a remote down), if anything.
    #[serde(default)]
    pub scrub_error: Option<String>,
    /// The last restore drill's report, and when it ran.
    #[serde(default)]
    pub last_drill: Option<crate::api::types::DrillRecord>,
    /// When the last drill that passed finished.
    #[serde(default)]
    pub last_drill_success: Option<DateTime<Utc>>,
}

const FILE: &str = "state.json";

impl DaemonState {
    pub fn load(state_dir: &Path) -> DaemonState {
        super::read_json(state_dir, FILE)
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), super::StateError> {
        super::write_json(state_dir, FILE, self)
    }
}
