//! Archive file names: `juju-backup-YYYYMMDD-HHMMSS[-N].tar.gz`, as Juju names its backups, with
//! `.tar.zst` for zstd and a trailing `.age` when the archive is encrypted.
//!
//! Only names that parse here are ever listed, pruned or deleted: a file an operator drops in the
//! archive directory is never a retention candidate.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::archive::Compression;

pub const PREFIX: &str = "juju-backup-";
/// In-progress files and staging directories end with this; listing and retention skip them.
pub const PART_SUFFIX: &str = ".part";
pub const SIDECAR_SUFFIX: &str = ".sha256";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchiveName {
    /// UTC start time, to the second.
    pub started: NaiveDateTime,
    /// 1 for the first archive of that second, 2 for `-2`, ...
    pub seq: u32,
    pub compression: Compression,
    /// Sealed with age (`.age` suffix).
    pub encrypted: bool,
}

impl ArchiveName {
    pub fn new(
        started: DateTime<Utc>,
        seq: u32,
        compression: Compression,
        encrypted: bool,
    ) -> Self {
        let started = started.naive_utc();
        let started = started.date().and_time(
            chrono::NaiveTime::from_hms_opt(
                chrono::Timelike::hour(&started),
                chrono::Timelike::minute(&started),
                chrono::Timelike::second(&started),
            )
            .expect("valid time"),
        );
        ArchiveName {
            started,
            seq,
            compression,
            encrypted,
        }
    }

    /// A free name for `started` in `dir` (adding `-2`, `-3`, ... as Juju users expect) that sorts
    /// after every archive of the same second already there, so a later archive never looks
    /// older than an earlier one (after `-1` was pruned, the next is `-3`, not the bare name).
    pub fn first_free(
        dir: &Path,
        started: DateTime<Utc>,
        compression: Compression,
        encrypted: bool,
    ) -> Self {
        let probe = ArchiveName::new(started, 1, compression, encrypted);
        let highest = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let name = name
                    .strip_suffix(SIDECAR_SUFFIX)
                    .or_else(|| name.strip_suffix(PART_SUFFIX))
                    .unwrap_or(name);
                ArchiveName::parse(name)
            })
            .filter(|n| n.started == probe.started)
            .map(|n| n.seq)
            .max();
        let mut seq = highest.map_or(1, |h| h + 1);
        loop {
            let n = ArchiveName::new(started, seq, compression, encrypted);
            let taken = [n.to_string(), format!("{n}{PART_SUFFIX}")]
                .iter()
                .any(|f| dir.join(f).symlink_metadata().is_ok());
            if !taken {
                return n;
            }
            seq += 1;
        }
    }

    pub fn parse(file_name: &str) -> Option<Self> {
        let rest = file_name.strip_prefix(PREFIX)?;
        let (rest, encrypted) = match rest.strip_suffix(super::encryption::SUFFIX) {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (stem, compression) = if let Some(s) = rest.strip_suffix(".tar.gz") {
            (s, Compression::Gzip)
        } else if let Some(s) = rest.strip_suffix(".tar.zst") {
            (s, Compression::Zstd)
        } else {
            return None;
        };
        // YYYYMMDD-HHMMSS is 15 characters; Juju's older HHMM names (13) are accepted too.
        let (stamp, seq) = match stem.len() {
            13 | 15 => (stem, 1),
            _ => {
                let (stamp, seq) = stem.rsplit_once('-')?;
                let seq: u32 = seq.parse().ok().filter(|s| *s >= 2)?;
                if !(stamp.len() == 13 || stamp.len() == 15) {
                    return None;
                }
                (stamp, seq)
            }
        };
        if !stamp.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return None;
        }
        let started = match stamp.len() {
            15 => NaiveDateTime::parse_from_str(stamp, "%Y%m%d-%H%M%S").ok()?,
            _ => NaiveDateTime::parse_from_str(&format!("{stamp}00"), "%Y%m%d-%H%M%S").ok()?,
        };
        Some(ArchiveName {
            started,
            seq,
            compression,
            encrypted,
        })
    }

    pub fn started_utc(&self) -> DateTime<Utc> {
        self.started.and_utc()
    }

    pub fn sidecar(&self) -> String {
        format!("{self}{SIDECAR_SUFFIX}")
    }
}

impl fmt::Display for ArchiveName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.started.format("%Y%m%d-%H%M%S"))?;
        if self.seq > 1 {
            write!(f, "-{}", self.seq)?;
        }
        f.write_str(match self.compression {
            Compression::Gzip => ".tar.gz",
            Compression::Zstd => ".tar.zst",
        })?;
        if self.encrypted {
            f.write_str(super::encryption::SUFFIX)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders() {
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:35:07.9Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = ArchiveName::new(t, 1, Compression::Gzip, false);
        assert_eq!(a.to_string(), "juju-backup-20261124-103507.tar.gz");
        let b = ArchiveName::new(t, 2, Compression::Zstd, false);
        assert_eq!(b.to_string(), "juju-backup-20261124-103507-2.tar.zst");
        let c = ArchiveName::new(t, 3, Compression::Gzip, true);
        assert_eq!(c.to_string(), "juju-backup-20261124-103507-3.tar.gz.age");
        for n in [&a, &b, &c] {
            assert_eq!(ArchiveName::parse(&n.to_string()).as_ref(), Some(n));
        }
        assert!(a < b && b < c);
    }

    #[test]
    fn a_new_name_sorts_after_every_archive_of_its_second() {
        let dir = tempfile::tempdir().unwrap();
        let t = DateTime::parse_from_rfc3339("2026-11-24T10:35:07Z")
            .unwrap()
            .with_timezone(&Utc);
        let next = || ArchiveName::first_free(dir.path(), t, Compression::Gzip, false);
        assert_eq!(next().seq, 1);
        std::fs::write(dir.path().join(next().to_string()), b"").unwrap();
        assert_eq!(next().seq, 2);
        std::fs::write(dir.path().join(next().to_string()), b"").unwrap();
        // The first one is pruned: the next is still the newest by name.
        std::fs::remove_file(dir.path().join("juju-backup-20261124-103507.tar.gz")).unwrap();
        assert_eq!(next().to_string(), "juju-backup-20261124-103507-3.tar.gz");
        // A sidecar or a .part left of another counts too; other seconds do not.
        std::fs::write(
            dir.path()
                .join("juju-backup-20261124-103507-7.tar.zst.part"),
            b"",
        )
        .unwrap();
        std::fs::write(dir.path().join("juju-backup-20261124-103508-9.tar.gz"), b"").unwrap();
        assert_eq!(next().seq, 8);
    }

    #[test]
    fn foreign_and_partial_names_are_not_archives() {
        for n in [
            "juju-backup-20261124-103507.tar.gz.part",
            "juju-backup-20261124-103507.tar.gz.sha256",
            "juju-backup-20261124-103507.tar.gz.age.sha256",
            "juju-backup-20261124-103507.tar.gz.age.part",
            "juju-backup-20261124-103507.age",
            "juju-backup-20261124-103507-1.tar.gz",
            "juju-backup-2026112-103507.tar.gz",
            "juju-backup-20261324-103507.tar.gz",
            "my-notes.txt",
            "juju-backup-../../x.tar.gz",
        ] {
            assert_eq!(ArchiveName::parse(n), None, "{n}");
        }
        assert!(ArchiveName::parse("juju-backup-20140909-1159.tar.gz").is_some());
    }
}
