//! Which archives to keep: a pure function of the policy, the archives and the time zone.
//!
//! Calendar buckets follow restic/borg: for `keep_daily = 7`, walk archives newest first and keep the
//! newest archive of each of the 7 most recent days that *have* archives (likewise hours, ISO weeks,
//! months, years, in the configured zone). `keep_last` keeps the N newest. An archive is kept if any
//! rule keeps it. The newest verified archive is always kept, whatever the policy says, and so is
//! the archive the caller has just written.
//!
//! The date comes from the archive's name, which came from the clock when it was taken. A clock
//! that was ahead once leaves archives named in the future; trusted, such an archive is "newest"
//! for as long as the clock was wrong, so `keep_last = 1` would delete every real backup right
//! after it is taken. So an archive dated more than [`FUTURE_SLACK`] after `now` is *future-dated*:
//! no rule counts it (it is neither newest nor newest verified), it is kept (it may well be a
//! good backup, taken at an unknown time) and its decision says so, for `prune`, the log and
//! `/v1/status` to show. Once the real time passes its date it is an ordinary archive again.

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

/// How far past `now` an archive's name may be dated before it is suspect: more than clock
/// corrections move a clock, less than any backup schedule's period.
pub const FUTURE_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// Whether an archive named as started at `started` is future-dated at `now` (see the module doc).
pub fn is_future_dated(started: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    started > now + FUTURE_SLACK
}

/// The circumstances a plan is made in, passed in so that [`plan`] stays pure.
#[derive(Debug, Clone)]
pub struct Context {
    pub now: DateTime<Utc>,
    /// The zone the daily, weekly... buckets are cut in.
    pub tz: Tz,
    /// Free space of the archive directory now (used only with `min_free_space`).
    pub free_bytes: u64,
    /// The archive the caller has just written: never deleted, whatever the rules say.
    pub just_taken: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RetentionError {
    #[error("the retention policy keeps nothing (all keep_* are 0); refusing to prune")]
    EmptyPolicy,
}

type BucketFn = fn(&DateTime<Tz>) -> (i32, u32, u32, u32);

/// Decisions for `archives` in any order; returned newest first (future-dated ones first).
pub fn plan(
    policy: &RetentionConfig,
    archives: &[Candidate],
    ctx: &Context,
) -> Result<Vec<Decision>, RetentionError> {
    let tz = ctx.tz;
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
    // Same second: `-2` is newer than the unsuffixed name, `-10` newer than `-9`.
    let seq =
        |c: &Candidate| crate::archive::name::ArchiveName::parse(&c.name).map_or(0, |n| n.seq);
    let newest_first = |a: &&Candidate, b: &&Candidate| {
        b.started
            .cmp(&a.started)
            .then(seq(b).cmp(&seq(a)))
            .then(b.name.cmp(&a.name))
    };
    let (mut future, mut sorted): (Vec<&Candidate>, Vec<&Candidate>) = archives
        .iter()
        .partition(|a| is_future_dated(a.started, ctx.now));
    future.sort_by(newest_first);
    sorted.sort_by(newest_first);
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
    let just_taken = ctx
        .just_taken
        .as_deref()
        .and_then(|name| sorted.iter().position(|a| a.name == name));
    if let Some(i) = just_taken {
        if reasons[i].is_empty() {
            reasons[i].push("the backup just taken".into());
        }
    }
    if let Some(min) = policy.min_free_space.map(|m| m.0) {
        // Space freed by the rules' own deletions counts first.
        let mut free = ctx.free_bytes
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
            if reasons[i].is_empty() || Some(i) == newest_verified || Some(i) == just_taken {
                continue;
            }
            reasons[i] = Vec::new();
            free += sorted[i].size;
            forced.push(i);
        }
    }
    let future = future.into_iter().map(|a| Decision {
        name: a.name.clone(),
        keep: true,
        reason: future_dated_reason(a.started, ctx.now),
    });
    Ok(future
        .chain(
            sorted
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
                }),
        )
        .collect())
}

/// Starts with [`FUTURE_DATED`], so callers can tell these decisions apart.
fn future_dated_reason(started: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{FUTURE_DATED}: named {}, {} ahead of the clock; kept and not counted as newest \
         (was the clock ahead when it was taken?); delete it by hand once checked",
        started.format("%Y-%m-%d %H:%M:%S UTC"),
        human(started - now)
    )
}

/// The prefix of the reason given for a future-dated archive.
pub const FUTURE_DATED: &str = "future-dated";

fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

// The `[retention]` config section, owned here; `config` composes the sections and validates them.
/// A policy. A `[retention]` table is the whole policy: a `keep_*` key it leaves out is 0 (so
/// `Default` keeps nothing, and is refused). A config without the table gets
/// [`RetentionConfig::default_policy`], the one `config/juju-brd.toml` shows.
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

impl RetentionConfig {
    /// The policy of a config without a `[retention]` table: a week of daily archives (and the
    /// last 7 of any kind), 4 weekly, 6 monthly. The shipped configs and the README say so;
    /// a test holds them to it.
    pub fn default_policy() -> Self {
        RetentionConfig {
            keep_last: 7,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 6,
            ..RetentionConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `keep_NAME = N` pairs stated in `text` (a comment line or a README row), as a policy.
    fn stated_policy(text: &str) -> RetentionConfig {
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == ',' || c == '`' || c == '(' || c == ')')
            .filter(|w| !w.is_empty())
            .collect();
        let mut p = RetentionConfig::default();
        for w in words.windows(3) {
            let (key, eq, value) = (w[0], w[1], w[2]);
            let Some(n) = (eq == "=").then(|| value.parse::<u32>().ok()).flatten() else {
                continue;
            };
            match key {
                "keep_last" => p.keep_last = n,
                "keep_hourly" => p.keep_hourly = n,
                "keep_daily" => p.keep_daily = n,
                "keep_weekly" => p.keep_weekly = n,
                "keep_monthly" => p.keep_monthly = n,
                "keep_yearly" => p.keep_yearly = n,
                other => panic!("unknown key {other} in `{text}`"),
            }
        }
        p
    }

    fn repo_file(rel: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
    }

    /// Issue 14 item 3, defect 7: the default policy is the one the shipped configs' comments and
    /// the README's config table state, and config/juju-brd.toml's own `[retention]` values are
    /// that policy. (That a config without the table gets it, and that a table is the whole
    /// policy, is tested on `Config` in tests/config_defaults.rs: `config` sits above this module.)
    #[test]
    fn the_default_policy_is_what_the_shipped_configs_and_readme_say() {
        let policy = RetentionConfig::default_policy();
        assert!(plan(&policy, &cands(TIMES), &ctx(Tz::UTC, 0)).is_ok());
        for file in ["config/juju-brd.toml", "config/local.toml"] {
            let text = repo_file(file);
            let line = text
                .lines()
                .find(|l| l.starts_with("# Without a [retention] table the policy is"))
                .unwrap_or_else(|| panic!("{file} does not state the default policy"));
            assert_eq!(stated_policy(line), policy, "{file}: {line}");
        }
        let readme = repo_file("README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("| `retention.keep_last/"))
            .expect("the README's row for retention.keep_*");
        let before_table = row.split("a `[retention]` table is").next().unwrap();
        assert_eq!(stated_policy(before_table), policy, "README: {row}");
        // The shipped [retention] values are the default policy.
        let shipped: toml::Table = toml::from_str(&repo_file("config/juju-brd.toml")).unwrap();
        let shipped: RetentionConfig = shipped["retention"].clone().try_into().unwrap();
        assert_eq!(shipped, policy);
    }

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

    /// After every archive in the tables, so none of them is future-dated.
    const NOW: &str = "2026-03-01T00:00:00Z";

    fn ctx(tz: Tz, free_bytes: u64) -> Context {
        Context {
            now: at(NOW),
            tz,
            free_bytes,
            just_taken: None,
        }
    }

    fn kept(policy: RetentionConfig, times: &[&str], tz: &str) -> Vec<String> {
        plan(&policy, &cands(times), &ctx(tz.parse().unwrap(), 0))
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
    fn archives_of_the_same_second_are_ordered_by_their_suffix() {
        let t = at("2026-01-01T03:00:00Z");
        let names = [
            "juju-backup-20260101-030000.tar.gz",
            "juju-backup-20260101-030000-2.tar.gz",
            "juju-backup-20260101-030000-10.tar.gz",
            "juju-backup-20260101-030000-9.tar.gz",
        ];
        let c: Vec<Candidate> = names
            .iter()
            .map(|n| Candidate {
                name: n.to_string(),
                started: t,
                verified: true,
                size: 1,
            })
            .collect();
        let d = plan(
            &RetentionConfig {
                keep_last: 1,
                ..Default::default()
            },
            &c,
            &ctx(Tz::UTC, 0),
        )
        .unwrap();
        let order: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(order, [names[2], names[3], names[1], names[0]]);
        assert!(d[0].keep && d.iter().skip(1).all(|d| !d.keep));
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
            &ctx(Tz::UTC, 0),
        )
        .unwrap();
        assert!(d.iter().all(|d| d.keep), "{d:?}");
        assert_eq!(d[1].reason, "newest verified archive");
    }

    #[test]
    fn empty_policy_is_refused() {
        assert_eq!(
            plan(&RetentionConfig::default(), &cands(TIMES), &ctx(Tz::UTC, 0)),
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
            &ctx(Tz::UTC, 0),
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
        let d = plan(&policy, &cands(TIMES), &ctx(Tz::UTC, 750)).unwrap();
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
        let d = plan(&policy, &cands(TIMES), &ctx(Tz::UTC, 0)).unwrap();
        assert_eq!(d.iter().filter(|d| d.keep).count(), 1);
        assert!(d[0].keep);
        // Enough space: the rules alone decide.
        let d = plan(&policy, &cands(TIMES), &ctx(Tz::UTC, 5000)).unwrap();
        assert!(d.iter().all(|d| d.keep));
    }

    /// Archives named by a clock that was wrong, and the backup just taken (issue 11, item 14).
    #[test]
    fn future_dated_archives_are_suspect_and_the_backup_just_taken_stays() {
        struct Case {
            what: &'static str,
            policy: RetentionConfig,
            /// (start time, verified)
            archives: &'static [(&'static str, bool)],
            just_taken: Option<&'static str>,
            free_bytes: u64,
            /// start time -> the reason must contain this (kept) or be deleted (`None`)
            want: &'static [(&'static str, Option<&'static str>)],
        }
        let last = |n| RetentionConfig {
            keep_last: n,
            ..Default::default()
        };
        let cases = [
            Case {
                what: "the clock was a year ahead once; keep_last = 1",
                policy: last(1),
                archives: &[
                    ("2026-01-01T03:00:00Z", true),
                    ("2027-02-01T03:00:00Z", true),
                    ("2026-02-28T23:59:00Z", true),
                ],
                just_taken: Some("2026-02-28T23:59:00Z"),
                free_bytes: 0,
                want: &[
                    (
                        "2027-02-01T03:00:00Z",
                        Some("future-dated: named 2027-02-01 03:00:00 UTC, 337 days ahead"),
                    ),
                    ("2026-02-28T23:59:00Z", Some("last 1/1")),
                    ("2026-01-01T03:00:00Z", None),
                ],
            },
            Case {
                what: "a future-dated archive is never the newest verified",
                policy: last(1),
                archives: &[
                    ("2026-01-01T03:00:00Z", true),
                    ("2026-03-01T02:00:00Z", true),
                    ("2026-02-28T23:59:00Z", false),
                ],
                just_taken: Some("2026-02-28T23:59:00Z"),
                free_bytes: 0,
                want: &[
                    (
                        "2026-03-01T02:00:00Z",
                        Some("future-dated: named 2026-03-01 02:00:00 UTC, 2 h ahead"),
                    ),
                    ("2026-02-28T23:59:00Z", Some("last 1/1")),
                    ("2026-01-01T03:00:00Z", Some("newest verified archive")),
                ],
            },
            Case {
                what: "the clock stepped back a little: the just-taken archive is not the newest",
                policy: last(1),
                archives: &[
                    ("2026-02-28T23:50:00Z", true),
                    ("2026-03-01T00:03:00Z", true),
                    ("2026-02-28T23:59:00Z", true),
                ],
                just_taken: Some("2026-02-28T23:59:00Z"),
                free_bytes: 0,
                want: &[
                    // Within FUTURE_SLACK: an ordinary archive.
                    ("2026-03-01T00:03:00Z", Some("last 1/1")),
                    ("2026-02-28T23:59:00Z", Some("the backup just taken")),
                    ("2026-02-28T23:50:00Z", None),
                ],
            },
            Case {
                what: "min_free_space takes neither the just-taken nor a future-dated archive",
                policy: RetentionConfig {
                    keep_last: 5,
                    min_free_space: Some(crate::space::ByteSize(1_000_000)),
                    ..Default::default()
                },
                archives: &[
                    ("2026-01-01T03:00:00Z", true),
                    ("2026-01-02T03:00:00Z", true),
                    ("2026-02-28T23:59:00Z", false),
                    ("2026-02-28T23:58:00Z", false),
                    ("2030-01-01T00:00:00Z", false),
                ],
                just_taken: Some("2026-02-28T23:58:00Z"),
                free_bytes: 0,
                want: &[
                    ("2030-01-01T00:00:00Z", Some("future-dated")),
                    ("2026-02-28T23:59:00Z", Some("last 1/5")),
                    ("2026-02-28T23:58:00Z", Some("last 2/5")),
                    ("2026-01-02T03:00:00Z", Some("last 3/5")),
                    ("2026-01-01T03:00:00Z", None),
                ],
            },
            Case {
                what: "only future-dated archives: all kept, none counted",
                policy: last(1),
                archives: &[
                    ("2027-01-01T00:00:00Z", true),
                    ("2027-01-02T00:00:00Z", true),
                ],
                just_taken: None,
                free_bytes: 0,
                want: &[
                    ("2027-01-02T00:00:00Z", Some("future-dated")),
                    ("2027-01-01T00:00:00Z", Some("future-dated")),
                ],
            },
        ];
        for c in cases {
            let archives: Vec<Candidate> = c
                .archives
                .iter()
                .map(|(t, verified)| Candidate {
                    name: format!("a-{t}"),
                    started: at(t),
                    verified: *verified,
                    size: 100,
                })
                .collect();
            let ctx = Context {
                just_taken: c.just_taken.map(|t| format!("a-{t}")),
                ..ctx(Tz::UTC, c.free_bytes)
            };
            let d = plan(&c.policy, &archives, &ctx).unwrap();
            let got: Vec<(&str, bool, &str)> = d
                .iter()
                .map(|d| (d.name.trim_start_matches("a-"), d.keep, d.reason.as_str()))
                .collect();
            assert_eq!(got.len(), c.want.len(), "{}: {got:?}", c.what);
            for ((name, keep, reason), (want_name, want)) in got.iter().zip(c.want) {
                assert_eq!(name, want_name, "{}: order {got:?}", c.what);
                match want {
                    Some(w) => assert!(*keep && reason.contains(w), "{}: {name}: {reason}", c.what),
                    None => assert!(!*keep, "{}: {name} kept: {reason}", c.what),
                }
            }
        }
    }
}
