//! The configuration file: one strict serde tree composed of the sections the modules own
//! (`[backup]` and `[controller]` in `snapshot`, `[files]` in `snapshot::files`, `[database]` in
//! `db`, `[schedule]` in `schedule`, `[api]` in `api`, `[[remote]]` in `remote`, and so on).
//!
//! This module owns loading, the checks that span sections, and the key-to-line diagnostics
//! ([`diagnostics`]). Values are parsed into their types while loading (time zone, cron
//! expression, socket mode, age recipients), so nothing downstream parses them again. Loading a
//! config (even a broken one) has no side effect, so `check-config` and SIGHUP can call it freely.
//!
//! Every error names the file, the key and the line, because the operator reading it is usually
//! editing that file over SSH at the worst possible moment.

mod diagnostics;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::api::ApiConfig;
pub use crate::archive::encryption::EncryptionConfig;
pub use crate::archive::Compression;
pub use crate::db::{DatabaseConfig, EngineKind};
pub use crate::ha::HaConfig;
use crate::limits::{check_duration, DAY, MAX_RETRIES, MAX_THREADS, PROBE_MAX};
pub use crate::remote::RemoteConfig;
pub use crate::restore::RestoreConfig;
pub use crate::retention::RetentionConfig;
pub use crate::schedule::ScheduleConfig;
pub use crate::scrub::ScrubConfig;
pub use crate::snapshot::files::{FileSet, IncludeEntry};
pub use crate::snapshot::hooks::Hooks;
pub use crate::snapshot::{BackupOptions, ControllerOverrides};
pub use crate::space::ByteSize;
use diagnostics::{key_at_offset, line_of_offset, locate_key, locate_remote_key, with_suggestion};

/// Where the config is looked for when neither `--config` nor `JUJU_BRD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/juju-brd/juju-brd.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {err}", path.display())]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{}:{line}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// 1-based line, or 0 when the problem is not tied to one line.
        line: usize,
        /// Dotted key path, e.g. `retention.keep_daily`.
        key: String,
        message: String,
    },
    /// Loading on the blocking pool panicked (a bug, reported rather than lost).
    #[error("loading the config panicked: {0}")]
    Panicked(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Juju environment (model/controller) name recorded in every archive; `JUJU_ENV` overrides it.
    pub environment: String,
    /// Where finished archives are written and looked for.
    #[serde(default = "defaults::archive_dir")]
    pub archive_dir: PathBuf,
    /// Daemon state: last run, job records, lock file.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub backup: BackupOptions,
    #[serde(default)]
    pub files: FileSet,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub controller: ControllerOverrides,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default = "RetentionConfig::default_policy")]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub scrub: ScrubConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub restore: RestoreConfig,
    #[serde(default)]
    pub ha: HaConfig,
    /// Restore drills: when the daemon runs them.
    #[serde(default)]
    pub drill: crate::drill::DrillConfig,
    /// How `update-agents` (and restore's last step) reaches the environment's other machines.
    #[serde(default)]
    pub agents: crate::agents::AgentsConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// Off-host copies: `[[remote]]` tables.
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteConfig>,
}

mod defaults {
    use std::path::PathBuf;
    pub fn archive_dir() -> PathBuf {
        "/var/lib/juju-brd/archives".into()
    }
    pub fn state_dir() -> PathBuf {
        "/var/lib/juju-brd".into()
    }
}

macro_rules! default_via_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // The serde defaults are the single source of truth for every field.
                toml::from_str("").expect("all fields have serde defaults")
            }
        }
    )*};
}
default_via_serde!(
    HaConfig,
    BackupOptions,
    FileSet,
    DatabaseConfig,
    Hooks,
    ScheduleConfig,
    ApiConfig,
    RestoreConfig
);

impl Config {
    /// The config path from, in order: the flag, `JUJU_BRD_CONFIG`, the default.
    pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os("JUJU_BRD_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_path_buf(),
            err,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; relative paths in the file are taken relative to the file's folder.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| line_of_offset(text, s.start))
                .or_else(|| locate_key(text, &key))
                .unwrap_or(0);
            // Errors the TOML parser raises itself (a number out of range) come before serde
            // knows the key: read it from the text at the error's position.
            if key == "." {
                if let Some(k) = inner.span().and_then(|s| key_at_offset(text, s.start)) {
                    key = k;
                }
            }
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: with_suggestion(inner.message()),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.make_paths_absolute(base);
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: locate_key(text, key).unwrap_or(0),
                key: key.to_string(),
                message,
            })?;
        for (i, r) in cfg.remotes.iter().enumerate() {
            r.validate(i, &cfg.remotes[..i])
                .map_err(|(field, message)| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    line: locate_remote_key(text, i, field).unwrap_or(0),
                    key: format!("remote[{i}].{field}"),
                    message,
                })?;
        }
        Ok(cfg)
    }

    fn make_paths_absolute(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = normalize(&base.join(&*p));
            }
        };
        fix(&mut self.archive_dir);
        fix(&mut self.state_dir);
        fix(&mut self.files.root);
        fix(&mut self.api.socket);
        fix(&mut self.agents.ssh_key);
        if let Some(p) = self.agents.known_hosts.as_mut() {
            fix(p);
        }
        if let Some(p) = self.database.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.database.environment_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.api.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.hooks.environment_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.encryption.identity_file.as_mut() {
            fix(p);
        }
        for r in &mut self.remotes {
            if let Some(p) = r.credentials_file.as_mut() {
                fix(p);
            }
        }
        for p in [&mut self.database.tls_cert, &mut self.database.tls_key]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    }

    /// Semantic checks serde cannot express; the error names the offending key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.environment.trim().is_empty() {
            return Err(("environment", "must not be empty".into()));
        }
        for (key, value, max) in [
            ("schedule.jitter", self.schedule.jitter, DAY),
            ("hooks.timeout", self.hooks.timeout, DAY),
            ("database.timeout", self.database.timeout, DAY),
            ("ha.probe_timeout", self.ha.probe_timeout, PROBE_MAX),
            ("restore.health_timeout", self.restore.health_timeout, DAY),
            (
                "restore.probe_timeout",
                self.restore.probe_timeout,
                PROBE_MAX,
            ),
        ] {
            check_duration(key, value, max)?;
        }
        for (key, value) in [
            ("hooks.timeout", self.hooks.timeout),
            ("database.timeout", self.database.timeout),
            ("ha.probe_timeout", self.ha.probe_timeout),
            ("restore.health_timeout", self.restore.health_timeout),
            ("restore.probe_timeout", self.restore.probe_timeout),
        ] {
            if value.is_zero() {
                return Err((key, "a timeout of 0s would fail every time".into()));
            }
        }
        self.agents.validate()?;
        let b = &self.backup;
        if b.threads > MAX_THREADS {
            return Err((
                "backup.threads",
                format!(
                    "{} threads is more than the maximum of {MAX_THREADS}",
                    b.threads
                ),
            ));
        }
        if b.file_retries > MAX_RETRIES {
            return Err((
                "backup.file_retries",
                format!(
                    "{} is more than the maximum of {MAX_RETRIES}",
                    b.file_retries
                ),
            ));
        }
        match b.compression {
            Compression::Gzip if !(1..=12).contains(&b.level()) => {
                return Err((
                    "backup.level",
                    format!("gzip level must be 1-12, got {}", b.level()),
                ))
            }
            Compression::Zstd if !(1..=19).contains(&b.level()) => {
                return Err((
                    "backup.level",
                    format!("zstd level must be 1-19, got {}", b.level()),
                ))
            }
            _ => {}
        }
        for e in &self.files.include {
            let globs: Vec<&String> = match e {
                IncludeEntry::One(g) => vec![g],
                IncludeEntry::FirstOf(v) if v.is_empty() => {
                    return Err((
                        "files.include",
                        "an alternatives list must not be empty".into(),
                    ))
                }
                IncludeEntry::FirstOf(v) => v.iter().collect(),
            };
            for g in globs {
                check_glob("files.include", g)?;
            }
        }
        for g in &self.files.optional {
            check_glob("files.optional", g)?;
        }
        for g in &self.files.exclude {
            globset::Glob::new(g).map_err(|e| ("files.exclude", format!("bad glob `{g}`: {e}")))?;
        }
        let db = &self.database;
        match db.engine {
            EngineKind::Sqlite if db.path.is_none() => {
                return Err(("database.path", "engine \"sqlite\" needs `path`".into()))
            }
            EngineKind::Dqlite if db.servers.is_empty() => {
                return Err((
                    "database.servers",
                    "engine \"dqlite\" needs `servers`".into(),
                ))
            }
            EngineKind::Dqlite if db.databases.is_empty() => {
                return Err((
                    "database.databases",
                    "engine \"dqlite\" needs `databases`".into(),
                ))
            }
            EngineKind::Dqlite if db.tls_cert.is_some() != db.tls_key.is_some() => {
                return Err((
                    "database.tls_key",
                    "tls_cert and tls_key go together".into(),
                ))
            }
            EngineKind::Command if db.command.is_empty() => {
                return Err((
                    "database.command",
                    "engine \"command\" needs `command`".into(),
                ))
            }
            _ => {}
        }
        if let Some(bad) = db
            .databases
            .iter()
            .find(|d| d.is_empty() || d.contains(['/', '\n']) || d.starts_with('.'))
        {
            return Err((
                "database.databases",
                format!("`{bad}` is not a database name"),
            ));
        }
        if db.dump_file.is_empty()
            || db.dump_file.contains('/')
            || db.dump_file == "."
            || db.dump_file == ".."
        {
            return Err(("database.dump_file", "must be a plain file name".into()));
        }
        // The socket answers with archives, which hold the controller's private keys: no mode
        // may open it to every local user. Group access is the way to share it.
        if self.api.socket_mode.0 & 0o007 != 0 {
            return Err((
                "api.socket_mode",
                format!(
                    "{:04o} lets every local user reach the API (and download archives holding \
                     the controller's keys); use 0660 and put the users in the socket's group",
                    self.api.socket_mode.0
                ),
            ));
        }
        if let Some(addr) = &self.api.tcp_listen {
            let sa: std::net::SocketAddr = addr
                .parse()
                .map_err(|_| ("api.tcp_listen", format!("`{addr}` is not an address:port")))?;
            if self.api.token_file.is_none() {
                return Err((
                    "api.token_file",
                    "a TCP listener requires a bearer token file".into(),
                ));
            }
            if !sa.ip().is_loopback() && !self.api.allow_non_loopback {
                return Err((
                    "api.tcp_listen",
                    format!(
                        "{addr} is not a loopback address; set api.allow_non_loopback = true \
                         if you really mean to expose the API"
                    ),
                ));
            }
        }
        if self.encryption.identity_file.is_some() && self.encryption.recipients.is_empty() {
            return Err((
                "encryption.identity_file",
                "is only used with encryption.recipients".into(),
            ));
        }
        Ok(())
    }

    /// What is legal but unwise, for the daemon's log (at start and on reload) and `check-config`:
    /// a file holding a secret that every local user can read. Reads only file modes.
    pub fn warnings(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut secret_files: Vec<(String, &Option<PathBuf>)> = vec![
            ("api.token_file".into(), &self.api.token_file),
            (
                "database.environment_file".into(),
                &self.database.environment_file,
            ),
            (
                "hooks.environment_file".into(),
                &self.hooks.environment_file,
            ),
            (
                "encryption.identity_file".into(),
                &self.encryption.identity_file,
            ),
        ];
        for (i, r) in self.remotes.iter().enumerate() {
            secret_files.push((format!("remote[{i}].credentials_file"), &r.credentials_file));
        }
        secret_files
            .into_iter()
            .filter_map(|(key, path)| {
                let path = path.as_deref()?;
                let mode = std::fs::metadata(path).ok()?.permissions().mode();
                (mode & 0o004 != 0).then(|| {
                    format!(
                        "{key}: {} is readable by every local user (mode {:04o}); it holds a \
                         secret: chmod o-rwx it",
                        path.display(),
                        mode & 0o7777
                    )
                })
            })
            .collect()
    }

    /// Where archives live and how they are kept, for listing, retention and off-host copies.
    pub fn site(&self) -> crate::catalog::Site {
        crate::catalog::Site {
            archive_dir: self.archive_dir.clone(),
            state_dir: self.state_dir.clone(),
            retention: self.retention.clone(),
            timezone: self.schedule.timezone,
            remote_names: self.remotes.iter().map(|r| r.name.clone()).collect(),
        }
    }

    /// What one restore drill of `archive` needs: it restores into a scratch root under the
    /// state directory, reading encrypted archives with `encryption.identity_file`.
    pub fn drill_settings(
        &self,
        archive: std::path::PathBuf,
    ) -> Result<crate::drill::Settings, String> {
        let identities = match &self.encryption.identity_file {
            Some(p) => Some(std::sync::Arc::new(
                crate::archive::encryption::Identities::load(p)?,
            )),
            None => None,
        };
        Ok(crate::drill::Settings {
            archive,
            scratch_parent: self.state_dir.join("drills"),
            environment: self.effective_environment(),
            model_uuid: self.model_uuid(),
            database: self.database.clone(),
            identities,
            clean_up_in_background: false,
        })
    }

    /// What one backup needs, borrowed from this config.
    pub fn backup_settings(&self) -> crate::snapshot::Settings<'_> {
        crate::snapshot::Settings {
            archive_dir: &self.archive_dir,
            state_dir: &self.state_dir,
            environment: self.effective_environment(),
            config_digest: self.digest(),
            backup: &self.backup,
            files: &self.files,
            database: &self.database,
            hooks: &self.hooks,
            controller: &self.controller,
            encryption: &self.encryption,
        }
    }

    pub fn remote(&self, name: &str) -> Option<&RemoteConfig> {
        self.remotes.iter().find(|r| r.name == name)
    }

    /// The environment name archives record: the config's. `JUJU_ENV` and `-e` are checks
    /// against it ([`Config::check_environment`]), never a relabelling.
    pub fn effective_environment(&self) -> String {
        self.environment.clone()
    }

    /// This environment's model UUID, when known: `controller.model_uuid`, else the machine
    /// agent's `agent.conf` under `files.root`.
    pub fn model_uuid(&self) -> Option<String> {
        self.controller
            .model_uuid
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| {
                crate::agent_conf::AgentConf::find(&self.files.root)
                    .map(|(_, c)| c.model_uuid().to_string())
                    .filter(|u| !u.is_empty())
            })
    }

    /// Checks an environment the operator named (`JUJU_ENV`, `-e`; `source` says which) against
    /// this state-server's, by name or model UUID; the error names both.
    pub fn check_environment(&self, requested: Option<&str>, source: &str) -> Result<(), String> {
        let Some(wanted) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let uuid = self.model_uuid();
        if wanted == self.environment || uuid.as_deref() == Some(wanted) {
            return Ok(());
        }
        let ours = match &uuid {
            Some(u) => format!("`{}` (model {u})", self.environment),
            None => format!(
                "`{}` (model UUID unknown: set controller.model_uuid)",
                self.environment
            ),
        };
        Err(format!(
            "{source} names environment `{wanted}`, but this host's config is for {ours}; \
             nothing was done. Unset {source} or use the config of `{wanted}`"
        ))
    }

    /// `JUJU_ENV` from the environment, checked against this config.
    pub fn check_juju_env(&self) -> Result<(), String> {
        self.check_environment(std::env::var("JUJU_ENV").ok().as_deref(), "JUJU_ENV")
    }

    /// A digest of the effective config, recorded in archives so an operator can tell which
    /// config produced a backup.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let text = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(&text)[..8])
    }
}

/// Folds `.` and `..` lexically, so paths in messages read as the operator would write them.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn check_glob(key: &'static str, g: &str) -> Result<(), (&'static str, String)> {
    if !g.starts_with('/') {
        return Err((key, format!("`{g}` must be an absolute path")));
    }
    glob::Pattern::new(g).map_err(|e| (key, format!("bad glob `{g}`: {e}")))?;
    Ok(())
}
