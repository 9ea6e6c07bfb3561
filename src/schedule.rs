//! When the next scheduled backup is due. Pure: time is passed in, nothing here sleeps or reads a clock.
//!
//! Cron fields are matched by `croner` on *wall-clock* time (we hand it local naive times dressed as
//! UTC, so it never sees a DST transition), and the mapping from wall clock to an instant is done here
//! with two explicit rules:
//! - a wall time that does not exist (spring forward: 02:30 on the changeover day) runs at the first
//!   instant after the gap, so a daily job still runs exactly once that day;
//! - a wall time that exists twice (fall back) runs at its first occurrence only.
//!
//! That is what an operator expects from "30 2 * * *" and what keeps the schedule from drifting to a
//! fixed UTC offset after the first tick.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{0}` is not a known IANA time zone (e.g. \"UTC\", \"Europe/London\")")]
    Timezone(String),
    #[error("cron expression `{0}` never fires: no date matches it (e.g. 30 February)")]
    NeverFires(String),
    #[error("bad cron expression `{expr}`: {reason} (use 5 fields, or 6 with seconds first)")]
    Cron { expr: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: Tz,
}

fn parse_cron(expr: &str) -> Result<croner::Cron, ScheduleError> {
    let fields = expr.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(ScheduleError::Cron {
            expr: expr.into(),
            reason: format!("{fields} fields"),
        });
    }
    let cron = croner::Cron::new(expr)
        .with_seconds_optional()
        .parse()
        .map_err(|e| ScheduleError::Cron {
            expr: expr.into(),
            reason: e.to_string(),
        })?;
    // An expression that names no real date (`0 0 30 2 *`) parses but would never take a backup.
    // Without a year field the calendar repeats at least every 8 years (leap days skip 2100), so
    // one run within 9 years of any instant means it runs forever.
    let reference = DateTime::parse_from_rfc3339("2096-01-01T00:00:00Z")
        .expect("a valid instant")
        .naive_utc()
        .and_utc();
    let fires = cron
        .find_next_occurrence(&reference, false)
        .is_ok_and(|t| t < reference + Duration::days(9 * 366));
    if !fires {
        return Err(ScheduleError::NeverFires(expr.into()));
    }
    Ok(cron)
}

pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::Timezone(name.to_string()))
}

impl CronSchedule {
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, ScheduleError> {
        let tz = parse_timezone(timezone)?;
        let cron = parse_cron(expr)?;
        Ok(CronSchedule { cron, tz })
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first run strictly after `now`, or `None` if the expression never fires again.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wall = now.with_timezone(&self.tz).naive_local();
        // Bounded: each step moves the wall clock forward to the next match.
        for _ in 0..10_000 {
            let next_wall = self
                .cron
                .find_next_occurrence(&wall.and_utc(), false)
                .ok()?
                .naive_utc();
            let instant = self.instant_of(next_wall)?;
            if instant > now {
                return Some(instant);
            }
            wall = next_wall;
        }
        None
    }

    /// The most recent scheduled time at or before `now`, looking back at most `horizon`.
    /// Used for catch-up: was a run due while the daemon was down?
    pub fn last_at_or_before(
        &self,
        now: DateTime<Utc>,
        horizon: Duration,
    ) -> Option<DateTime<Utc>> {
        let mut t = self.next_after(now - horizon)?;
        if t > now {
            return None;
        }
        while let Some(n) = self.next_after(t) {
            if n > now {
                break;
            }
            t = n;
        }
        Some(t)
    }

    fn instant_of(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // In a DST gap: the first whole wall minute that exists. Gaps are at most a few hours.
                let mut w = wall.with_second(0)?.with_nanosecond(0)?;
                for _ in 0..(26 * 60) {
                    w += Duration::minutes(1);
                    if let Some(t) = self.tz.from_local_datetime(&w).earliest() {
                        return Some(t.with_timezone(&Utc));
                    }
                }
                None
            }
        }
    }
}

// The `[schedule]` config section, owned here; `config` composes the sections and validates them.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// 5-field cron, or 6-field with seconds first. Empty disables scheduled backups.
    #[serde(default = "default_cron")]
    pub cron: CronExpr,
    /// IANA zone the cron expression and retention buckets are read in.
    #[serde(default = "default_timezone", with = "tz_name")]
    pub timezone: Tz,
    /// Random delay added to each run, so many controllers do not hit shared storage at once.
    #[serde(default, with = "humantime_serde")]
    pub jitter: std::time::Duration,
    /// Take one backup at start-up when a scheduled run was missed while the daemon was down.
    #[serde(default = "default_yes")]
    pub catch_up: bool,
}

fn default_yes() -> bool {
    true
}

fn default_cron() -> CronExpr {
    CronExpr::parse("0 3 * * *").expect("the default cron expression parses")
}

fn default_timezone() -> Tz {
    Tz::UTC
}

impl ScheduleConfig {
    /// The schedule, or `None` when scheduled backups are off (empty `cron`).
    pub fn schedule(&self) -> Option<CronSchedule> {
        Some(CronSchedule {
            cron: self.cron.cron.clone()?,
            tz: self.timezone,
        })
    }
}

/// A cron expression as written in the config, parsed when the config loads; empty means none.
#[derive(Debug, Clone)]
pub struct CronExpr {
    text: String,
    cron: Option<croner::Cron>,
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, ScheduleError> {
        let cron = if text.trim().is_empty() {
            None
        } else {
            Some(parse_cron(text)?)
        };
        Ok(CronExpr {
            text: text.to_string(),
            cron,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.cron.is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The schedule read in `tz`, or `None` when the expression is empty.
    pub fn in_zone(&self, tz: Tz) -> Option<CronSchedule> {
        Some(CronSchedule {
            cron: self.cron.clone()?,
            tz,
        })
    }
}

impl Default for CronExpr {
    /// None: never fires.
    fn default() -> Self {
        CronExpr {
            text: String::new(),
            cron: None,
        }
    }
}

impl serde::Serialize for CronExpr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for CronExpr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        CronExpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `timezone = "Europe/London"` as a [`Tz`], refused by name when unknown.
mod tz_name {
    use chrono_tz::Tz;

    pub fn serialize<S: serde::Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        super::parse_timezone(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// All runs in [from, to).
    fn runs(s: &CronSchedule, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let (mut t, end) = (utc(from), utc(to));
        let mut out = vec![];
        while let Some(n) = s.next_after(t) {
            if n >= end {
                break;
            }
            out.push(n);
            t = n;
        }
        out
    }

    #[test]
    fn table_of_expressions() {
        let cases = [
            (
                "0 3 * * *",
                "UTC",
                "2026-01-01T03:00:00Z",
                "2026-01-02T03:00:00Z",
            ),
            (
                "*/15 * * * *",
                "UTC",
                "2026-01-01T03:00:00Z",
                "2026-01-01T03:15:00Z",
            ),
            (
                "30 */6 * * *",
                "UTC",
                "2026-01-01T06:29:59Z",
                "2026-01-01T06:30:00Z",
            ),
            (
                "*/10 * * * * *",
                "UTC",
                "2026-01-01T00:00:05Z",
                "2026-01-01T00:00:10Z",
            ),
            (
                "0 0 * * 0",
                "UTC",
                "2026-11-24T12:00:00Z",
                "2026-11-29T00:00:00Z",
            ),
            (
                "0 3 * * *",
                "Europe/Berlin",
                "2026-01-01T00:00:00Z",
                "2026-01-01T02:00:00Z",
            ),
            (
                "0 3 * * *",
                "Europe/Berlin",
                "2026-07-01T00:00:00Z",
                "2026-07-01T01:00:00Z",
            ),
        ];
        for (expr, tz, now, want) in cases {
            let s = CronSchedule::parse(expr, tz).unwrap();
            assert_eq!(
                s.next_after(utc(now)),
                Some(utc(want)),
                "{expr} {tz} after {now}"
            );
        }
    }

    #[test]
    fn bad_expressions_are_refused() {
        for bad in ["", "* * *", "61 * * * *", "* * * * * * * *", "0 25 * * *"] {
            assert!(CronSchedule::parse(bad, "UTC").is_err(), "{bad:?}");
        }
        for never in [
            "0 0 30 2 *",
            "0 0 31 4 *",
            "0 0 31 2,4,6,9,11 *",
            "0 0 0 30 2 *",
        ] {
            let t = std::time::Instant::now();
            assert!(
                matches!(
                    CronSchedule::parse(never, "UTC"),
                    Err(ScheduleError::NeverFires(_))
                ),
                "{never:?}"
            );
            assert!(t.elapsed() < std::time::Duration::from_secs(1), "{never:?}");
        }
        // Rare is not never: leap days, and the 31st of the months that have one.
        for rare in ["0 0 29 2 *", "0 0 31 * *", "0 0 29 2 1"] {
            CronSchedule::parse(rare, "UTC").unwrap();
        }
        assert!(matches!(
            CronSchedule::parse("0 3 * * *", "Nowhere/Land"),
            Err(ScheduleError::Timezone(_))
        ));
    }

    #[test]
    fn daily_0230_runs_once_on_spring_forward_day() {
        // New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist.
        let s = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        let r = runs(&s, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z");
        assert_eq!(
            r,
            vec![
                utc("2026-03-07T07:30:00Z"), // 02:30 EST
                utc("2026-03-08T07:00:00Z"), // 03:00 EDT, first instant after the gap
                utc("2026-03-09T06:30:00Z"), // 02:30 EDT
            ]
        );
    }

    #[test]
    fn daily_0130_runs_once_on_fall_back_day() {
        // New York falls back 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 exists twice.
        let s = CronSchedule::parse("30 1 * * *", "America/New_York").unwrap();
        let r = runs(&s, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z");
        assert_eq!(
            r,
            vec![
                utc("2026-10-31T05:30:00Z"), // 01:30 EDT
                utc("2026-11-01T05:30:00Z"), // first 01:30 (EDT) only
                utc("2026-11-02T06:30:00Z"), // 01:30 EST
            ]
        );
    }

    #[test]
    fn daily_0230_on_fall_back_day_in_europe() {
        // Berlin falls back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 exists twice.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let r = runs(&s, "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z");
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[1], utc("2026-10-25T00:30:00Z"));
        // And spring forward 2026-03-29 02:00 CET -> 03:00 CEST.
        let r = runs(&s, "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z");
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[1], utc("2026-03-29T01:00:00Z"));
    }

    #[test]
    fn no_drift_over_a_year_of_transitions() {
        let s = CronSchedule::parse("0 3 * * *", "Europe/London").unwrap();
        let r = runs(&s, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z");
        assert_eq!(r.len(), 365);
        for t in r {
            let local = t.with_timezone(&s.timezone());
            assert_eq!(local.format("%H:%M").to_string(), "03:00", "{t}");
        }
    }

    #[test]
    fn last_at_or_before_finds_a_missed_run() {
        let s = CronSchedule::parse("0 3 * * *", "UTC").unwrap();
        let now = utc("2026-05-02T10:00:00Z");
        assert_eq!(
            s.last_at_or_before(now, Duration::days(2)),
            Some(utc("2026-05-02T03:00:00Z"))
        );
        assert_eq!(
            s.last_at_or_before(utc("2026-05-02T02:00:00Z"), Duration::hours(1)),
            None
        );
    }
}
