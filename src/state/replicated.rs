//! `replicated.json`: which archive reached which remote (read back intact), and each remote's
//! health. Local retention keeps an archive until this ledger shows it on every remote.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

const FILE: &str = "replicated.json";

/// What has reached where, and how each remote is doing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// archive name -> remote name -> when it was read back intact.
    #[serde(default)]
    pub copies: BTreeMap<String, BTreeMap<String, DateTime<Utc>>>,
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteHealth>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteHealth {
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

impl Ledger {
    pub fn load(state_dir: &Path) -> Ledger {
        super::read_json(state_dir, FILE)
    }

    pub fn save(&self, state_dir: &Path) -> Result<(), super::StateError> {
        super::write_json(state_dir, FILE, self)
    }

    pub fn has(&self, archive: &str, remote: &str) -> bool {
        self.copies
            .get(archive)
            .is_some_and(|m| m.contains_key(remote))
    }

    /// Those of `remotes` (names) that `archive` has not reached.
    pub fn missing<'a>(
        &self,
        archive: &str,
        remotes: impl IntoIterator<Item = &'a str>,
    ) -> Vec<&'a str> {
        remotes
            .into_iter()
            .filter(|r| !self.has(archive, r))
            .collect()
    }
}
