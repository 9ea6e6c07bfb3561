//! The API's request and response bodies, shared by the server handlers and the CLI client so the
//! two can never disagree.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    Api,
    Scheduled,
    CatchUp,
    /// A restore drill asked for on the API (`POST /v1/drills`).
    Drill,
    /// A restore drill from `[drill] cron`.
    ScheduledDrill,
}

impl JobKind {
    pub fn is_drill(self) -> bool {
        matches!(self, JobKind::Drill | JobKind::ScheduledDrill)
    }
}

/// `POST /v1/drills`: which archive to drill (default: the newest verified one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    #[serde(default)]
    pub archive: Option<String>,
}

/// A finished drill as the daemon remembers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRecord {
    pub at: DateTime<Utc>,
    pub passed: bool,
    pub archive: Option<String>,
    /// The restore's time (the RTO to expect), when it got that far.
    pub restore_seconds: Option<f64>,
    /// Why it failed: the restore's error, or the failed checks.
    pub error: Option<String>,
    #[serde(default)]
    pub report: Option<DrillReport>,
}

/// One thing a drill checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCheck {
    pub name: String,
    /// `passed`, `failed` or `not checked`.
    pub result: String,
    pub detail: String,
}

impl DrillCheck {
    pub fn failed(&self) -> bool {
        self.result == "failed"
    }
}

/// What a restore drill found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillReport {
    pub archive: String,
    pub passed: bool,
    /// Verify, extract and load: what a real restore of this archive would take here.
    pub restore_seconds: f64,
    /// The whole drill, checks included.
    pub seconds: f64,
    pub files: u64,
    pub bytes: u64,
    pub checks: Vec<DrillCheck>,
}

/// `/v1/status`'s drill section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrillStatus {
    /// Whether `[drill] cron` schedules drills.
    pub scheduled: bool,
    pub next_run: Option<DateTime<Utc>>,
    pub last: Option<DrillRecord>,
    pub last_success: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveRecord {
    pub name: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub verified: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub kind: JobKind,
    pub state: JobState,
    pub notes: String,
    pub created: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub bytes_done: u64,
    pub bytes_estimated: u64,
    pub archive: Option<ArchiveRecord>,
    pub error: Option<String>,
    /// A drill job's report, once it has finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerResponse {
    /// False when a backup was already running and this is that job.
    pub created: bool,
    pub job: JobInfo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusResponse {
    pub version: String,
    pub environment: String,
    pub state: String,
    pub last_attempt: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_archive: Option<String>,
    pub last_error: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub archive_count: usize,
    pub free_space_bytes: u64,
    pub current_job: Option<JobInfo>,
    /// One entry per `[[remote]]`.
    #[serde(default)]
    pub remotes: Vec<RemoteStatus>,
    /// Archives named with a date after now (the clock was ahead when they were taken):
    /// retention keeps them and does not count them as newest; an operator should look.
    #[serde(default)]
    pub future_dated_archives: Vec<String>,
    /// The scheduled re-reading of every archive (`[scrub]`).
    #[serde(default)]
    pub scrub: ScrubStatus,
    /// Restore drills (`[drill]`, `POST /v1/drills`).
    #[serde(default)]
    pub drill: DrillStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubStatus {
    pub enabled: bool,
    /// `ok`, `failed` (something damaged, or something could not be read), or `never` run.
    pub state: String,
    pub last_run: Option<DateTime<Utc>>,
    /// The last scrub that found everything sound.
    pub last_success: Option<DateTime<Utc>>,
    pub next_run: Option<DateTime<Utc>>,
    /// What the last scrub found damaged: archive names, `NAME on remote R` for remote copies.
    pub damaged: Vec<String>,
    /// What kept the last scrub from reading something (a remote down).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteStatus {
    pub name: String,
    pub bucket: String,
    pub last_success: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Local archives not yet copied there (and so kept by local retention).
    pub pending: usize,
    /// Failed replication runs since the daemon started.
    pub upload_failures: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /v1/prune`: what retention decided for each archive (deleted unless `dry_run`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneResponse {
    pub dry_run: bool,
    pub decisions: Vec<PruneDecision>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneDecision {
    pub name: String,
    pub keep: bool,
    /// The rule that kept it, or why it goes.
    pub reason: String,
}
