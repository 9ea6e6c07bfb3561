//! Reads a juju-brd archive the way Juju's own code does, independently of juju-brd's reader, and
//! panics on anything Juju would refuse or misread:
//! - metadata.json (juju/juju `state/backups/metadata.go` `NewMetadataJSONReader`): a JSON object
//!   whose known keys have Juju's JSON types; FormatVersion 0 or 1 (the versions every Juju from
//!   2.8 to 4 reads; Juju 4 reads only 1); RFC 3339 times; a `Version` juju/version parses (empty
//!   fails `Parse("")`); `Series` or `Base` non-empty (Juju 2.x restore and juju-restore compare
//!   the series);
//! - `juju-backup/manifest.json`, if there is one, in Juju 4's shape (`internal/recovery/archive.go`
//!   refuses regular files its manifest does not list);
//! - root.tar (juju/utils `tar.UntarFiles`): relative paths without `..`, and only directories,
//!   symlinks and regular files (anything else, hardlinks included, Juju silently drops).

use std::io::Read;
use std::path::Path;

fn is_juju_version(v: &str) -> bool {
    let mut parts = v.splitn(2, '.');
    let major = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    !major.is_empty()
        && major.chars().all(|c| c.is_ascii_digit())
        && rest.chars().next().is_some_and(|c| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// Checks one metadata.json as Juju decodes it.
pub fn check_metadata(bytes: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("metadata.json is JSON");
    let m = v.as_object().expect("metadata.json is an object");
    let version = m.get("FormatVersion").map_or(0, |f| {
        f.as_i64().expect("FormatVersion is an integer (Go int64)")
    });
    assert!(
        (0..=1).contains(&version),
        "FormatVersion {version}: Juju reads 0 and 1"
    );
    for key in [
        "ID",
        "Notes",
        "Environment",
        "ModelUUID",
        "Machine",
        "Hostname",
        "Version",
        "Series",
        "Base",
        "ControllerUUID",
        "ControllerMachineID",
    ] {
        if let Some(x) = m.get(key) {
            assert!(
                x.is_string(),
                "{key} must be a JSON string (Go string), is {x}"
            );
        }
    }
    for key in ["HANodes", "Size"] {
        if let Some(x) = m.get(key) {
            assert!(x.is_i64(), "{key} must be an integer (Go int64), is {x}");
        }
    }
    for key in ["Started", "Finished", "Stored"] {
        if let Some(x) = m.get(key) {
            let s = x
                .as_str()
                .unwrap_or_else(|| panic!("{key} must be a string"));
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap_or_else(|e| panic!("{key} `{s}` is not RFC 3339 (Go time.Time): {e}"));
        }
    }
    let version = m
        .get("Version")
        .and_then(|v| v.as_str())
        .expect("Version is present");
    assert!(
        is_juju_version(version),
        "Version `{version}` does not parse as a Juju version"
    );
    let series = m.get("Series").and_then(|v| v.as_str()).unwrap_or("");
    let base = m.get("Base").and_then(|v| v.as_str()).unwrap_or("");
    assert!(
        !series.is_empty() || !base.is_empty(),
        "neither Series nor Base is set: Juju's restore compares them"
    );
    let uuid = m
        .get("ModelUUID")
        .or_else(|| m.get("Environment"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert!(!uuid.is_empty(), "no model UUID (ModelUUID / Environment)");
}

/// Checks every member of a root.tar as `tar.UntarFiles` would extract it.
pub fn check_root_tar(bytes: &[u8]) {
    let mut t = tar::Archive::new(bytes);
    for e in t.entries().expect("root.tar is a tar") {
        let e = e.expect("root.tar member");
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        assert!(!name.starts_with('/'), "root.tar path `{name}` is absolute");
        assert!(
            !name.split('/').any(|c| c == ".."),
            "root.tar path `{name}` has `..`"
        );
        let kind = e.header().entry_type();
        assert!(
            matches!(
                kind,
                tar::EntryType::Directory
                    | tar::EntryType::Symlink
                    | tar::EntryType::Regular
                    | tar::EntryType::Continuous
            ),
            "root.tar member `{name}` is a {kind:?}, which Juju's extractor drops"
        );
    }
}

/// Reads `archive` (gzip) as Juju does; panics naming what Juju would refuse or lose.
pub fn assert_juju_readable(archive: &Path) {
    let f = std::fs::File::open(archive).unwrap();
    let mut t = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    let mut saw_metadata = false;
    let mut saw_root = false;
    for e in t.entries().expect("a tar.gz") {
        let mut e = e.expect("an outer member");
        let name = e.path().unwrap().display().to_string();
        assert!(
            name == "juju-backup" || name.starts_with("juju-backup/"),
            "`{name}` is outside juju-backup/"
        );
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        match name.as_str() {
            "juju-backup/metadata.json" => {
                check_metadata(&body);
                saw_metadata = true;
            }
            "juju-backup/root.tar" => {
                check_root_tar(&body);
                saw_root = true;
            }
            "juju-backup/manifest.json" => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert!(
                    v.get("files").is_some_and(|f| f.is_array()),
                    "juju-backup/manifest.json is not in Juju 4's shape; Juju 4 would refuse the archive"
                );
            }
            _ => {}
        }
    }
    assert!(
        saw_metadata && saw_root,
        "metadata.json or root.tar missing"
    );
}
