//! The configuration file: one strict serde tree.
//!
//! Owns parsing, defaults and validation. It never touches the state-server: loading a config (even a
//! broken one) has no side effect, so `check-config` and SIGHUP can call it freely.
//!
//! Every error names the file, the key and the line, because the operator reading it is usually
//! editing that file over SSH at the worst possible moment.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub restore: RestoreConfig,
    #[serde(default)]
    pub ha: HaConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// Off-host copies: `[[remote]]` tables.
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteConfig>,
}

/// age encryption of archives (see `archive::encryption`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age X25519 public keys (`age1...`); when any is set, archives are `NAME.tar.gz.age`.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Optional identity file for the daemon's own full verification of what it wrote. Without
    /// it an encrypted archive is checked by re-reading its checksum and age header only.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
}

/// One S3-compatible bucket that every successful backup is copied to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Short name for `list --remote`, `restore --remote`, logs and metric labels.
    pub name: String,
    /// `http(s)://host:port` of the S3 API (Ceph RGW, MinIO, Garage); omit for AWS itself.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "defaults::region")]
    pub region: String,
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. "controllers/prod/".
    #[serde(default)]
    pub prefix: String,
    /// Path-style requests (`endpoint/bucket/key`), which most self-hosted servers need.
    #[serde(default)]
    pub path_style: bool,
    /// AWS-style credentials file (`aws_access_key_id`, `aws_secret_access_key`, optional
    /// `aws_session_token`); without it the standard `AWS_*` environment variables are used.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Upload attempts after the first failure, with exponential backoff.
    #[serde(default = "defaults::remote_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    #[serde(default = "defaults::retry_delay", with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Multipart upload part size; memory used is about two parts.
    #[serde(default = "defaults::part_size")]
    pub part_size: ByteSize,
    /// This remote's own retention policy; without it, the remote keeps every archive.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
}

/// Several state-servers: which one takes each scheduled backup (see `ha`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's database address as the cluster knows it (dqlite: its node address). When
    /// set, scheduled backups run only on the database leader (or `prefer`).
    #[serde(default)]
    pub self_address: Option<String>,
    /// A node that takes scheduled backups whenever its database address answers.
    #[serde(default)]
    pub prefer: Option<String>,
    #[serde(default = "defaults::probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupOptions {
    /// `gzip` (what Juju and `tar xzf` read) or `zstd`.
    #[serde(default = "defaults::compression")]
    pub compression: Compression,
    /// gzip 1-9, zstd 1-19.
    #[serde(default = "defaults::level")]
    pub level: u32,
    /// Compression threads; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Re-read every archive after writing it (`verify`) before it counts as good.
    #[serde(default = "defaults::yes")]
    pub verify_after: bool,
    /// How often a file that changes while it is read is read again before the backup gives up.
    #[serde(default = "defaults::file_retries")]
    pub file_retries: u32,
}

/// An include entry: one glob, or a list of alternatives of which the first that exists is taken
/// (Juju keeps the shared secret in one of two places depending on how juju-db is installed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IncludeEntry {
    One(String),
    FirstOf(Vec<String>),
}

impl<'de> Deserialize<'de> for IncludeEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            FirstOf(Vec<String>),
        }
        match Raw::deserialize(d) {
            Ok(Raw::One(s)) => Ok(IncludeEntry::One(s)),
            Ok(Raw::FirstOf(v)) => Ok(IncludeEntry::FirstOf(v)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a path glob (\"/var/lib/juju/x\") or a list of alternative globs",
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSet {
    /// The host root the absolute paths below are read from: `/` in production, a directory in tests.
    #[serde(default = "defaults::root")]
    pub root: PathBuf,
    /// Required: a glob that matches nothing fails the backup.
    #[serde(default = "defaults::include")]
    pub include: Vec<IncludeEntry>,
    /// Optional: missing entries are logged and skipped.
    #[serde(default = "defaults::optional")]
    pub optional: Vec<String>,
    /// Globs (on the absolute host path) that are never archived.
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    None,
    Sqlite,
    Command,
    Dqlite,
    Mongodb,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    #[serde(default = "defaults::engine")]
    pub engine: Engine,
    /// sqlite: the live database file (read through SQLite's online backup API).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// command: argv of a dump command; its stdout becomes `dump/<dump_file>`.
    #[serde(default)]
    pub command: Vec<String>,
    /// command: argv of the matching restore command; the dump is fed on stdin.
    #[serde(default)]
    pub restore_command: Vec<String>,
    /// command: the file name the dump gets under `dump/`.
    #[serde(default = "defaults::dump_file")]
    pub dump_file: String,
    /// command: KEY=VALUE lines given to the child's environment, so passwords never reach argv.
    #[serde(default)]
    pub environment_file: Option<PathBuf>,
    /// command: expected dump size, used only for the free-space check.
    #[serde(default)]
    pub estimate_bytes: u64,
    /// dqlite: the cluster's node addresses (host:port).
    #[serde(default)]
    pub servers: Vec<String>,
    /// dqlite: the database names to copy.
    #[serde(default)]
    pub databases: Vec<String>,
    /// dqlite: the shell program (Debian's go-dqlite ships `dqlite`).
    #[serde(default = "defaults::dqlite_shell")]
    pub shell: String,
    /// dqlite: TLS certificate and key files for the cluster, if it uses TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    #[serde(default = "defaults::db_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// argv run before the snapshot (e.g. to quiesce an agent); failure fails the backup.
    #[serde(default)]
    pub pre: Vec<String>,
    /// argv run after the snapshot, always, even when the backup failed.
    #[serde(default)]
    pub post: Vec<String>,
    #[serde(default = "defaults::hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// Facts about the controller normally read from the machine agent's `agent.conf`; set them here
/// only when that file is missing or wrong.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerOverrides {
    pub model_uuid: Option<String>,
    pub controller_uuid: Option<String>,
    pub machine: Option<String>,
    pub version: Option<String>,
    pub series: Option<String>,
    /// Every state-server's address (host or host:port); restore probes each of them.
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// 5-field cron, or 6-field with seconds first. Empty disables scheduled backups.
    #[serde(default = "defaults::cron")]
    pub cron: String,
    /// IANA zone the cron expression and retention buckets are read in.
    #[serde(default = "defaults::timezone")]
    pub timezone: String,
    /// Random delay added to each run, so many controllers do not hit shared storage at once.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Duration,
    /// Take one backup at start-up when a scheduled run was missed while the daemon was down.
    #[serde(default = "defaults::yes")]
    pub catch_up: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Size like "2GiB": below this free space, the oldest archives the rules keep are deleted too.
    #[serde(default)]
    pub min_free_space: Option<ByteSize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "defaults::socket")]
    pub socket: PathBuf,
    /// Octal file mode of the socket, as a string ("0660").
    #[serde(default = "defaults::socket_mode")]
    pub socket_mode: String,
    /// Optional TCP listener, e.g. "127.0.0.1:17071"; requires `token_file`.
    #[serde(default)]
    pub tcp_listen: Option<String>,
    /// File holding the bearer token for the TCP listener (never on the command line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Needed to bind `tcp_listen` to anything but loopback.
    #[serde(default)]
    pub allow_non_loopback: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    /// Commands (argv) that stop the state-server before files are replaced.
    #[serde(default = "defaults::stop_commands")]
    pub stop_commands: Vec<Vec<String>>,
    /// Commands (argv) that start it again afterwards.
    #[serde(default = "defaults::start_commands")]
    pub start_commands: Vec<Vec<String>>,
    /// argv that exits 0 once the restored state-server is up.
    #[serde(default)]
    pub health_command: Vec<String>,
    #[serde(default = "defaults::health_timeout", with = "humantime_serde")]
    pub health_timeout: Duration,
    /// mongodb: commands that bring juju-db up for `mongorestore` (the rest of the state-server
    /// stays stopped until the end).
    #[serde(default = "defaults::database_start_commands")]
    pub database_start_commands: Vec<Vec<String>>,
    /// Ports probed on every recorded state-server address to make sure the old one is gone.
    #[serde(default = "defaults::probe_ports")]
    pub probe_ports: Vec<u16>,
    #[serde(default = "defaults::probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
}

/// A byte count written as "512MiB", "2GB" or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 512MiB or 2GB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "t" | "tb" => 1000u64.pow(4),
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}MiB", self.0 / (1 << 20))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size like \"512MiB\" or a number of bytes")
        })? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

mod defaults {
    use super::*;
    pub fn archive_dir() -> PathBuf {
        "/var/lib/juju-brd/archives".into()
    }
    pub fn state_dir() -> PathBuf {
        "/var/lib/juju-brd".into()
    }
    pub fn compression() -> Compression {
        Compression::Gzip
    }
    pub fn level() -> u32 {
        6
    }
    pub fn yes() -> bool {
        true
    }
    pub fn file_retries() -> u32 {
        5
    }
    pub fn region() -> String {
        "us-east-1".into()
    }
    pub fn remote_retries() -> u32 {
        4
    }
    pub fn part_size() -> super::ByteSize {
        super::ByteSize(8 << 20)
    }
    pub fn retry_delay() -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }
    pub fn root() -> PathBuf {
        "/".into()
    }
    pub fn include() -> Vec<IncludeEntry> {
        vec![
            IncludeEntry::One("/var/lib/juju/agents/machine-*".into()),
            IncludeEntry::One("/var/lib/juju/tools".into()),
            IncludeEntry::One("/var/lib/juju/system-identity".into()),
            IncludeEntry::One("/var/lib/juju/server.pem".into()),
            IncludeEntry::FirstOf(vec![
                "/var/lib/juju/shared-secret".into(),
                "/var/snap/juju-db/common/shared-secret".into(),
            ]),
        ]
    }
    pub fn optional() -> Vec<String> {
        [
            "/var/lib/juju/init/*",
            "/var/lib/juju/nonce.txt",
            "/home/ubuntu/.ssh/authorized_keys",
            "/etc/systemd/system/jujud-machine-*.service",
            "/etc/systemd/system/juju-db.service",
            "/etc/init/jujud-machine-*.conf",
            "/etc/init/juju-db.conf",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }
    pub fn engine() -> Engine {
        Engine::None
    }
    pub fn dump_file() -> String {
        "database.dump".into()
    }
    pub fn dqlite_shell() -> String {
        "dqlite".into()
    }
    pub fn db_timeout() -> Duration {
        Duration::from_secs(30 * 60)
    }
    pub fn hook_timeout() -> Duration {
        Duration::from_secs(5 * 60)
    }
    pub fn cron() -> String {
        "0 3 * * *".into()
    }
    pub fn timezone() -> String {
        "UTC".into()
    }
    pub fn socket() -> PathBuf {
        "/run/juju-brd/juju-brd.sock".into()
    }
    pub fn socket_mode() -> String {
        "0660".into()
    }
    pub fn stop_commands() -> Vec<Vec<String>> {
        vec![vec![
            "systemctl".into(),
            "stop".into(),
            "jujud-machine-*".into(),
            "juju-db".into(),
        ]]
    }
    pub fn start_commands() -> Vec<Vec<String>> {
        vec![vec![
            "systemctl".into(),
            "start".into(),
            "juju-db".into(),
            "jujud-machine-*".into(),
        ]]
    }
    pub fn database_start_commands() -> Vec<Vec<String>> {
        vec![vec!["systemctl".into(), "start".into(), "juju-db".into()]]
    }
    pub fn health_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn probe_ports() -> Vec<u16> {
        vec![17070, 37017]
    }
    pub fn probe_timeout() -> Duration {
        Duration::from_secs(2)
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
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| line_of_offset(text, s.start))
                .or_else(|| locate_key(text, &key))
                .unwrap_or(0);
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
        if let Some(p) = self.database.path.as_mut() {
            fix(p);
        }
        if let Some(p) = self.database.environment_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.api.token_file.as_mut() {
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
        let b = &self.backup;
        match b.compression {
            Compression::Gzip if !(1..=9).contains(&b.level) => {
                return Err((
                    "backup.level",
                    format!("gzip level must be 1-9, got {}", b.level),
                ))
            }
            Compression::Zstd if !(1..=19).contains(&b.level) => {
                return Err((
                    "backup.level",
                    format!("zstd level must be 1-19, got {}", b.level),
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
            Engine::Sqlite if db.path.is_none() => {
                return Err(("database.path", "engine \"sqlite\" needs `path`".into()))
            }
            Engine::Dqlite if db.servers.is_empty() => {
                return Err((
                    "database.servers",
                    "engine \"dqlite\" needs `servers`".into(),
                ))
            }
            Engine::Dqlite if db.databases.is_empty() => {
                return Err((
                    "database.databases",
                    "engine \"dqlite\" needs `databases`".into(),
                ))
            }
            Engine::Dqlite if db.tls_cert.is_some() != db.tls_key.is_some() => {
                return Err((
                    "database.tls_key",
                    "tls_cert and tls_key go together".into(),
                ))
            }
            Engine::Command if db.command.is_empty() => {
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
        if !self.schedule.cron.trim().is_empty() {
            crate::schedule::CronSchedule::parse(&self.schedule.cron, &self.schedule.timezone)
                .map_err(|e| match e {
                    crate::schedule::ScheduleError::Timezone(_) => {
                        ("schedule.timezone", e.to_string())
                    }
                    _ => ("schedule.cron", e.to_string()),
                })?;
        } else {
            // An empty cron only disables the schedule; the zone is still used by retention.
            crate::schedule::parse_timezone(&self.schedule.timezone)
                .map_err(|e| ("schedule.timezone", e.to_string()))?;
        }
        parse_mode(&self.api.socket_mode).ok_or((
            "api.socket_mode",
            "must be an octal mode like \"0660\"".into(),
        ))?;
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
        crate::archive::encryption::Recipients::parse(&self.encryption.recipients)
            .map_err(|e| ("encryption.recipients", e))?;
        if self.encryption.identity_file.is_some() && self.encryption.recipients.is_empty() {
            return Err((
                "encryption.identity_file",
                "is only used with encryption.recipients".into(),
            ));
        }
        Ok(())
    }

    /// The age recipients archives are sealed to, if encryption is on.
    pub fn recipients(&self) -> Option<crate::archive::encryption::Recipients> {
        if self.encryption.recipients.is_empty() {
            return None;
        }
        Some(
            crate::archive::encryption::Recipients::parse(&self.encryption.recipients)
                .expect("validated when the config was loaded"),
        )
    }

    pub fn remote(&self, name: &str) -> Option<&RemoteConfig> {
        self.remotes.iter().find(|r| r.name == name)
    }

    /// The environment name: `JUJU_ENV` if set, else the config's.
    pub fn effective_environment(&self) -> String {
        match std::env::var("JUJU_ENV") {
            Ok(e) if !e.trim().is_empty() => e,
            _ => self.environment.clone(),
        }
    }

    /// Socket mode as a number.
    pub fn socket_mode(&self) -> u32 {
        parse_mode(&self.api.socket_mode).expect("validated when the config was loaded")
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

/// An octal file mode such as "0660" (or "0o660"), at most 0777.
fn parse_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

fn check_glob(key: &'static str, g: &str) -> Result<(), (&'static str, String)> {
    if !g.starts_with('/') {
        return Err((key, format!("`{g}` must be an absolute path")));
    }
    glob::Pattern::new(g).map_err(|e| (key, format!("bad glob `{g}`: {e}")))?;
    Ok(())
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line where a dotted key (`schedule.cron`) is set, for errors found after parsing.
pub fn locate_key(text: &str, dotted: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::ImDocument<String>>().ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut last_span = None;
    for part in dotted.split('.').filter(|p| !p.is_empty()) {
        if let Ok(index) = part.parse::<usize>() {
            item = item.as_array().and_then(|a| a.get(index)).map(|_| item)?;
            continue;
        }
        let table = item.as_table_like()?;
        let (key, value) = table.get_key_value(part)?;
        last_span = key.span().or(last_span);
        item = value;
    }
    last_span.map(|s| line_of_offset(text, s.start))
}

/// The line of `field` in the `index`-th `[[remote]]` table (or of the table's header).
fn locate_remote_key(text: &str, index: usize, field: &str) -> Option<usize> {
    let doc = text.parse::<toml_edit::ImDocument<String>>().ok()?;
    let table = doc.get("remote")?.as_array_of_tables()?.get(index)?;
    let span = table
        .get_key_value(field)
        .and_then(|(k, _)| k.span())
        .or_else(|| table.span())?;
    Some(line_of_offset(text, span.start))
}

impl RemoteConfig {
    /// Checks one remote; `earlier` are the remotes before it (names must be unique).
    fn validate(
        &self,
        _index: usize,
        earlier: &[RemoteConfig],
    ) -> Result<(), (&'static str, String)> {
        let n = &self.name;
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(("name", format!("`{n}` must be letters, digits, `-` or `_`")));
        }
        if earlier.iter().any(|r| &r.name == n) {
            return Err(("name", format!("`{n}` names two remotes")));
        }
        let b = &self.bucket;
        if !(3..=63).contains(&b.len())
            || !b
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err((
                "bucket",
                format!("`{b}` is not a bucket name (3-63 letters, digits, `.`, `-`)"),
            ));
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err((
                    "endpoint",
                    format!("`{e}` must start with http:// or https://"),
                ));
            }
        }
        if self.prefix.starts_with('/') || self.prefix.split('/').any(|p| p == "..") {
            return Err(("prefix", "must be relative, without `..`".into()));
        }
        if self.part_size.0 < 5 << 20 {
            return Err(("part_size", "S3 needs parts of at least 5MiB".into()));
        }
        if self
            .retention
            .as_ref()
            .is_some_and(|r| *r == RetentionConfig::default())
        {
            return Err((
                "retention",
                "an empty policy would delete every archive; omit it to keep all".into(),
            ));
        }
        Ok(())
    }
}

/// Turns serde's "unknown field `keep_dayly`, expected one of ..." into a suggestion of the
/// closest known name, which is what the operator actually needs.
fn with_suggestion(message: &str) -> String {
    let message = message.trim_end();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, tail)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = tail
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| !c.is_empty())
        .collect();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(unknown, c), *c))
        .min()
        .filter(|(d, c)| *d <= 2.max(c.len() / 3));
    match best {
        Some((_, c)) => format!("unknown key `{unknown}`; did you mean `{c}`?"),
        None => format!(
            "unknown key `{unknown}`; known keys: {}",
            candidates.join(", ")
        ),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/juju-brd/test.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_production_defaults() {
        let c = parse("environment = \"prod\"\n").unwrap();
        assert_eq!(c.archive_dir, PathBuf::from("/var/lib/juju-brd/archives"));
        assert_eq!(c.backup.level, 6);
        assert_eq!(c.files.include.len(), 5);
        assert_eq!(c.schedule.timezone, "UTC");
        assert!(c.schedule.catch_up);
    }

    #[test]
    fn wrong_type_names_file_key_and_line() {
        let e = err("environment = \"p\"\n\n[retention]\nkeep_daily = \"seven\"\n");
        assert!(
            e.starts_with("/etc/juju-brd/test.toml:4: retention.keep_daily:"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_refused_with_a_suggestion() {
        let e = err("environment = \"p\"\n[retention]\nkeep_dayly = 7\n");
        assert!(e.contains(":3: retention"), "{e}");
        assert!(e.contains("did you mean `keep_daily`?"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key_and_line() {
        let e = err("environment = \"p\"\n[schedule]\ncron = \"61 * * * *\"\n");
        assert!(e.contains(":3: schedule.cron:"), "{e}");
        let e = err("environment = \"p\"\n[schedule]\ntimezone = \"Mars/Olympus\"\n");
        assert!(e.contains(":3: schedule.timezone:"), "{e}");
        let e = err("environment = \"p\"\n[backup]\nlevel = 12\n");
        assert!(
            e.contains(":3: backup.level: gzip level must be 1-9"),
            "{e}"
        );
        let e = err("environment = \"p\"\n[database]\nengine = \"sqlite\"\n");
        assert!(e.contains("database.path"), "{e}");
        let e = err("environment = \"p\"\n[api]\ntcp_listen = \"0.0.0.0:1\"\ntoken_file = \"t\"\n");
        assert!(e.contains(":3: api.tcp_listen:"), "{e}");
    }

    #[test]
    fn bad_enum_and_size_values_are_explained() {
        let e = err("environment = \"p\"\n[backup]\ncompression = \"lz4\"\n");
        assert!(
            e.contains(":3: backup.compression:") && e.contains("lz4"),
            "{e}"
        );
        let e = err("environment = \"p\"\n[retention]\nmin_free_space = \"lots\"\n");
        assert!(e.contains("retention.min_free_space"), "{e}");
        let e = err("environment = \"p\"\n[hooks]\ntimeout = \"soon\"\n");
        assert!(e.contains(":3: hooks.timeout:"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = err("environment = \"p\"\n[backup\n");
        assert!(e.contains("test.toml:2:"), "{e}");
    }

    /// Every key, given a value of the wrong type or an invalid one, is refused naming that key
    /// and its line.
    #[test]
    fn every_key_with_a_wrong_value_is_refused_by_name_and_line() {
        let cases: &[(&str, &str, &str)] = &[
            ("", "archive_dir", "42"),
            ("", "state_dir", "[1]"),
            ("backup", "compression", "\"lz4\""),
            ("backup", "level", "\"high\""),
            ("backup", "threads", "-1"),
            ("backup", "verify_after", "\"yes\""),
            ("backup", "file_retries", "1.5"),
            ("files", "root", "42"),
            ("files", "include", "[1]"),
            ("files", "include", "[\"relative/path\"]"),
            ("files", "optional", "\"/one\""),
            ("files", "exclude", "[\"[\"]"),
            ("database", "engine", "\"oracle\""),
            ("database", "path", "1"),
            ("database", "command", "\"pg_dump\""),
            ("database", "restore_command", "1"),
            ("database", "dump_file", "\"a/b\""),
            ("database", "environment_file", "[]"),
            ("database", "estimate_bytes", "\"big\""),
            ("database", "timeout", "\"soon\""),
            ("database", "servers", "\"127.0.0.1:9001\""),
            ("database", "databases", "[\"../x\"]"),
            ("database", "shell", "[]"),
            ("database", "tls_cert", "1"),
            ("database", "tls_key", "1"),
            ("hooks", "pre", "\"sync\""),
            ("hooks", "post", "1"),
            ("hooks", "timeout", "5"),
            ("controller", "model_uuid", "1"),
            ("controller", "controller_uuid", "[]"),
            ("controller", "machine", "0"),
            ("controller", "version", "2.9"),
            ("controller", "series", "true"),
            ("controller", "addresses", "\"10.0.0.1\""),
            ("schedule", "cron", "\"every day\""),
            ("schedule", "timezone", "\"Mars/Base\""),
            ("schedule", "jitter", "\"lots\""),
            ("schedule", "catch_up", "1"),
            ("retention", "keep_last", "-3"),
            ("retention", "keep_hourly", "\"x\""),
            ("retention", "keep_daily", "\"seven\""),
            ("retention", "keep_weekly", "1.5"),
            ("retention", "keep_monthly", "[]"),
            ("retention", "keep_yearly", "true"),
            ("retention", "min_free_space", "\"lots\""),
            ("api", "socket", "1"),
            ("api", "socket_mode", "\"0999\""),
            ("api", "tcp_listen", "\"localhost\""),
            ("api", "token_file", "1"),
            ("api", "allow_non_loopback", "\"no\""),
            ("restore", "stop_commands", "[\"systemctl\"]"),
            ("restore", "start_commands", "1"),
            ("restore", "database_start_commands", "\"x\""),
            ("restore", "health_command", "1"),
            ("restore", "health_timeout", "\"later\""),
            ("restore", "probe_ports", "[70000]"),
            ("restore", "probe_timeout", "2"),
            ("ha", "self_address", "1"),
            ("ha", "prefer", "[]"),
            ("ha", "probe_timeout", "\"fast\""),
        ];
        for (section, key, value) in cases {
            let (text, dotted) = if section.is_empty() {
                (
                    format!("environment = \"p\"\n\n{key} = {value}\n"),
                    key.to_string(),
                )
            } else {
                (
                    format!("environment = \"p\"\n[{section}]\n{key} = {value}\n"),
                    format!("{section}.{key}"),
                )
            };
            let e = err(&text);
            assert!(
                e.contains(&format!("test.toml:3: {dotted}")),
                "{dotted} = {value}: {e}"
            );
        }
        assert!(err("environment = 42\n").contains("test.toml:1: environment"));
    }

    #[test]
    fn unreadable_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config {}", dir.path().display())),
            "{e}"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("2GiB").unwrap().0, 2 << 30);
        assert_eq!(ByteSize::parse("512 MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("1000").unwrap().0, 1000);
        assert!(ByteSize::parse("2 parsecs").is_err());
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let c = parse("environment = \"p\"\narchive_dir = \"out\"\n").unwrap();
        assert_eq!(c.archive_dir, PathBuf::from("/etc/juju-brd/out"));
    }

    #[test]
    fn every_shipped_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no configs under {}", dir.display());
    }
}
