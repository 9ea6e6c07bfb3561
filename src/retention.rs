//! Which archives to keep: a pure function of the policy, the archives and the time zone.
//!
//! Calendar buckets follow restic/borg: for `keep_daily = 7`, walk archives newest first and keep the
//! newest archive of each of the 7 most recent days that *have* archives (likewise hours, ISO weeks,
//! months, years, in the configured zone). `keep_last` keeps the N newest. An archive is kept if any
//! rule keeps it. The newest verified archive is always kept, whatever the policy says.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub started: DateTime<Utc>,
    pub verified: bool,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub keep: bool,
    /// The rule that kept it (`daily 2/7`), or why it goes (`no rule keeps it`).
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetentionError {
    #[error("the retention policy keeps nothing (all keep_* are 0); refusing to prune")]
    EmptyPolicy,
}

type BucketFn = fn(&DateTime<Tz>) -> (i32, u32, u32, u32);

/// Decisions for `archives` in any order; returned newest first.
/// `free_bytes` is the free space of the archive directory now (used only with `min_free_space`).
pub fn plan(
    policy: &RetentionConfig,
    archives: &[Candidate],
    tz: Tz,
    free_bytes: u64,
) -> Result<Vec<Decision>, RetentionError> {
    let rules: [(&str, u32, BucketFn); 5] = [
        ("hourly", policy.keep_hourly, |t| {
            (t.year(), t.ordinal(), t.hour(), 0)
        }),
        ("daily", policy.keep_daily, |t| {
            (t.year(), t.ordinal(), 0, 0)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        ("monthly", policy.keep_monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
        ("yearly", policy.keep_yearly, |t| (t.year(), 0, 0, 0)),
    ];
    if policy.keep_last == 0 && rules.iter().all(|(_, n, _)| *n == 0) {
        return Err(RetentionError::EmptyPolicy);
    }
    let mut sorted: Vec<&Candidate> = archives.iter().collect();
    sorted.sort_by(|a, b| b.started.cmp(&a.started).then(b.name.cmp(&a.name)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    // Archives deleted for min_free_space, although a rule kept them.
    let mut forced: Vec<usize> = Vec::new();
    for (i, r) in reasons
        .iter_mut()
        .enumerate()
        .take(policy.keep_last as usize)
    {
        r.push(format!("last {}/{}", i + 1, policy.keep_last));
    }
    for (label, n, bucket) in rules {
        if n == 0 {
            continue;
        }
        let mut seen = HashSet::new();
        for (i, a) in sorted.iter().enumerate() {
            if seen.len() as u32 >= n {
                break;
            }
            if seen.insert(bucket(&a.started.with_timezone(&tz))) {
                reasons[i].push(format!("{label} {}/{n}", seen.len()));
            }
        }
    }
    let newest_verified = sorted.iter().position(|a| a.verified);
    if let Some(i) = newest_verified {
        if reasons[i].is_empty() {
            reasons[i].push("newest verified archive".into());
        }
    }
    if let Some(min) = policy.min_free_space.map(|m| m.0) {
        // Space freed by the rules' own deletions counts first.
        let mut free = free_bytes
            + sorted
                .iter()
                .zip(&reasons)
                .filter(|(_, r)| r.is_empty())
                .map(|(a, _)| a.size)
                .sum::<u64>();
        for i in (1..sorted.len()).rev() {
            if free >= min {
                break;
            }
            if reasons[i].is_empty() || Some(i) == newest_verified {
                continue;
            }
            reasons[i] = Vec::new();
            free += sorted[i].size;
            forced.push(i);
        }
    }
    Ok(sorted
        .iter()
        .zip(reasons)
        .enumerate()
        .map(|(i, (a, r))| Decision {
            name: a.name.clone(),
            keep: !r.is_empty(),
            reason: if forced.contains(&i) {
                "min_free_space: free space is below the minimum".into()
            } else if r.is_empty() {
                "no rule keeps it".into()
            } else {
                r.join(", ")
            },
        })
        .collect())
}

// The `[retention]` config section, owned here; `config` composes the sections and validates them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    pub min_free_space: Option<crate::space::ByteSize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cands(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .map(|t| Candidate {
                name: format!("a-{t}"),
                started: at(t),
                verified: true,
                size: 100,
            })
            .collect()
    }

    fn kept(policy: RetentionConfig, times: &[&str], tz: &str) -> Vec<String> {
        plan(&policy, &cands(times), tz.parse().unwrap(), 0)
            .unwrap()
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.name.trim_start_matches("a-").to_string())
            .collect()
    }

    const TIMES: &[&str] = &[
        "2026-01-01T03:00:00Z",
        "2026-01-01T15:00:00Z",
        "2026-01-02T03:00:00Z",
        "2026-01-03T03:00:00Z",
        "2026-01-03T03:30:00Z",
        "2026-01-10T03:00:00Z",
        "2026-02-01T03:00:00Z",
        "2026-02-15T03:00:00Z",
    ];

    #[test]
    fn table() {
        let p = |last, daily, weekly, monthly| RetentionConfig {
            keep_last: last,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            ..Default::default()
        };
        let cases: Vec<(RetentionConfig, Vec<&str>)> = vec![
            (
                p(2, 0, 0, 0),
                vec!["2026-02-15T03:00:00Z", "2026-02-01T03:00:00Z"],
            ),
            (
                p(0, 3, 0, 0),
                vec![
                    "2026-02-15T03:00:00Z",
                    "2026-02-01T03:00:00Z",
                    "2026-01-10T03:00:00Z",
                ],
            ),
            (
                // Newest of each month; Jan's newest is the 10th.
                p(0, 0, 0, 5),
                vec!["2026-02-15T03:00:00Z", "2026-01-10T03:00:00Z"],
            ),
            (
                // ISO weeks: Feb 15 (w7), Feb 1 (w5), Jan 10 (w2), Jan 3 03:30 (w1).
                p(0, 0, 4, 0),
                vec![
                    "2026-02-15T03:00:00Z",
                    "2026-02-01T03:00:00Z",
                    "2026-01-10T03:00:00Z",
                    "2026-01-03T03:30:00Z",
                ],
            ),
        ];
        for (policy, want) in cases {
            assert_eq!(kept(policy.clone(), TIMES, "UTC"), want, "{policy:?}");
        }
    }

    #[test]
    fn day_buckets_follow_the_time_zone() {
        // 23:30 UTC on Jan 1 is already Jan 2 in Tokyo: one day there, two in UTC.
        let times = ["2026-01-01T23:30:00Z", "2026-01-02T01:00:00Z"];
        let daily = RetentionConfig {
            keep_daily: 5,
            ..Default::default()
        };
        assert_eq!(kept(daily.clone(), &times, "UTC").len(), 2);
        assert_eq!(kept(daily, &times, "Asia/Tokyo").len(), 1);
    }

    #[test]
    fn newest_verified_is_never_deleted() {
        let mut c = cands(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        c[1].verified = false;
        c[0].verified = true;
        // keep_last = 1 keeps only the unverified newest; the verified one must stay too.
        let d = plan(
            &RetentionConfig {
                keep_last: 1,
                ..Default::default()
            },
            &c,
            Tz::UTC,
            0,
        )
        .unwrap();
        assert!(d.iter().all(|d| d.keep), "{d:?}");
        assert_eq!(d[1].reason, "newest verified archive");
    }

    #[test]
    fn empty_policy_is_refused() {
        assert_eq!(
            plan(&RetentionConfig::default(), &cands(TIMES), Tz::UTC, 0),
            Err(RetentionError::EmptyPolicy)
        );
    }

    #[test]
    fn every_deletion_has_a_reason() {
        let d = plan(
            &RetentionConfig {
                keep_last: 1,
                ..Default::default()
            },
            &cands(TIMES),
            Tz::UTC,
            0,
        )
        .unwrap();
        assert_eq!(d.iter().filter(|d| d.keep).count(), 1);
        assert!(d
            .iter()
            .filter(|d| !d.keep)
            .all(|d| d.reason == "no rule keeps it"));
    }

    #[test]
    fn min_free_space_removes_the_oldest_kept_but_never_the_newest() {
        let policy = RetentionConfig {
            keep_last: 10,
            min_free_space: Some(crate::space::ByteSize(1000)),
            ..Default::default()
        };
        // 8 archives of 100 bytes, 750 free: the 3 oldest must go (750 + 300 >= 1000).
        let d = plan(&policy, &cands(TIMES), Tz::UTC, 750).unwrap();
        let gone: Vec<&str> = d
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(
            gone,
            vec![
                "a-2026-01-02T03:00:00Z",
                "a-2026-01-01T15:00:00Z",
                "a-2026-01-01T03:00:00Z"
            ]
        );
        assert!(d
            .iter()
            .filter(|d| !d.keep)
            .all(|d| d.reason.starts_with("min_free_space")));
        // Hopeless: everything but the newest goes, never the newest.
        let d = plan(&policy, &cands(TIMES), Tz::UTC, 0).unwrap();
        assert_eq!(d.iter().filter(|d| d.keep).count(), 1);
        assert!(d[0].keep);
        // Enough space: the rules alone decide.
        let d = plan(&policy, &cands(TIMES), Tz::UTC, 5000).unwrap();
        assert!(d.iter().all(|d| d.keep));
    }
}
