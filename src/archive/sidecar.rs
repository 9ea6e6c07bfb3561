//! The `NAME.sha256` sidecar beside each archive.
//!
//! Line 1 is `sha256sum` format (`HASH  NAME`), so `sha256sum -c NAME.sha256` checks the archive.
//! Line 2 is a `# juju-brd: {json}` comment (which `sha256sum -c` skips) holding what listing an
//! archive needs without opening it: an encrypted archive cannot be opened without its identity.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::name::SIDECAR_SUFFIX;

const LISTING_PREFIX: &str = "# juju-brd: ";

/// Plain facts about an archive, none of them secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub environment: String,
    pub id: String,
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub tool_version: String,
    pub encrypted: bool,
}

pub fn render(sha256: &str, archive_name: &str, listing: Option<&Listing>) -> String {
    let mut out = format!("{sha256}  {archive_name}\n");
    if let Some(l) = listing {
        out.push_str(LISTING_PREFIX);
        out.push_str(&serde_json::to_string(l).expect("listing serialises"));
        out.push('\n');
    }
    out
}

/// The checksum (first word) and the listing line if there is one and it parses.
pub fn parse(text: &str) -> (String, Option<Listing>) {
    let sha = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let listing = text
        .lines()
        .find_map(|l| l.strip_prefix(LISTING_PREFIX))
        .and_then(|j| serde_json::from_str(j).ok());
    (sha, listing)
}

/// Reads the sidecar of `archive`, if present.
pub fn read(archive: &std::path::Path) -> Option<(String, Option<Listing>)> {
    let mut p = archive.as_os_str().to_owned();
    p.push(SIDECAR_SUFFIX);
    std::fs::read_to_string(p).ok().map(|t| parse(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_plain_sha256sum_files() {
        let l = Listing {
            environment: "prod".into(),
            encrypted: true,
            ..Default::default()
        };
        let text = render("ab12", "juju-backup-x.tar.gz.age", Some(&l));
        assert!(text.starts_with("ab12  juju-backup-x.tar.gz.age\n# juju-brd: {"));
        assert_eq!(parse(&text), ("ab12".into(), Some(l)));
        assert_eq!(parse("ab12  name\n"), ("ab12".into(), None));
        assert_eq!(
            parse("ab12  name\n# juju-brd: {broken"),
            ("ab12".into(), None)
        );
    }
}
