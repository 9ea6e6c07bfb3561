//! Upper bounds of the config's durations and counts, shared by the sections that have them.
//!
//! Each bound is far beyond any sensible setting, and low enough that no arithmetic on the value
//! (deadlines, random jitter, calendar maths, backoff) can overflow: `jitter = "99999999999d"`
//! once panicked the scheduler. A leaf: it knows nothing of the config file itself.

use std::time::Duration;

pub const DAY: Duration = Duration::from_secs(24 * 3600);
/// For network probes (`ha.probe_timeout`, `restore.probe_timeout`).
pub const PROBE_MAX: Duration = Duration::from_secs(5 * 60);
/// For `remote.retry_delay`.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(3600);
/// For `backup.threads`.
pub const MAX_THREADS: usize = 256;
/// For `backup.file_retries` and `remote.retries`.
pub const MAX_RETRIES: u32 = 100;

/// Refuses a duration above `max`, naming both in the config's own notation.
pub fn check_duration<K>(key: K, value: Duration, max: Duration) -> Result<(), (K, String)> {
    if value <= max {
        return Ok(());
    }
    Err((
        key,
        format!(
            "{} is longer than the maximum of {}",
            humantime::format_duration(value),
            humantime::format_duration(max)
        ),
    ))
}
