//! `juju-backup/metadata.json`: Juju's backup metadata keys, plus a `juju-brd` object of our own.
//!
//! Juju's field names are kept exactly (PascalCase, `ID`, `HANodes`) so Juju's tooling and people used
//! to it read our archives; every Juju field is optional on read because its set grew over releases.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The FormatVersion juju-brd writes.
pub const FORMAT_VERSION: i64 = 1;
/// The newest FormatVersion read: Juju 2.8 writes 0, 2.9 writes 1, 3.6.22+ writes 2 (without
/// Checksum, ChecksumFormat and Size).
pub const MAX_READ_FORMAT_VERSION: i64 = 2;
/// Upper bound for metadata.json: anything larger is not metadata.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
/// Upper bound for the notes as metadata.json stores them (JSON-escaped, so a control character
/// counts six bytes): a quarter of [`MAX_METADATA_BYTES`], leaving the rest for everything else
/// metadata records (addresses, ids, versions take a few KiB). Every way in (the API, `backup
/// --notes`, the snapshot itself) checks it with [`check_notes`], so an archive is never written
/// with metadata that verify and restore would refuse.
pub const MAX_NOTES_BYTES: u64 = MAX_METADATA_BYTES / 4;

/// Refuses notes that would not fit [`MAX_NOTES_BYTES`] once stored, saying by how much.
pub fn check_notes(notes: &str) -> Result<(), String> {
    let stored = stored_len(notes);
    if stored > MAX_NOTES_BYTES {
        return Err(format!(
            "notes are too long: {stored} bytes as stored in metadata.json (JSON-escaped), \
             at most {MAX_NOTES_BYTES} allowed"
        ));
    }
    Ok(())
}

/// Length of `s` as a JSON string body (without the quotes), as serde_json writes it.
fn stored_len(s: &str) -> u64 {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8() as u64,
        })
        .sum()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(rename = "FormatVersion", default)]
    pub format_version: i64,
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Started", default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(rename = "Finished", default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(rename = "Notes", default)]
    pub notes: String,
    /// Juju 1.x called the model "environment" and stored its UUID here.
    #[serde(rename = "Environment", default)]
    pub environment: String,
    #[serde(rename = "ModelUUID", default)]
    pub model_uuid: String,
    #[serde(rename = "Machine", default)]
    pub machine: String,
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
    #[serde(rename = "Version", default)]
    pub version: String,
    #[serde(rename = "Series", default)]
    pub series: String,
    #[serde(rename = "Base", default)]
    pub base: String,
    #[serde(rename = "ControllerUUID", default)]
    pub controller_uuid: String,
    /// Number of state-servers when the backup was taken.
    #[serde(rename = "HANodes", default)]
    pub ha_nodes: i64,
    #[serde(rename = "ControllerMachineID", default)]
    pub controller_machine_id: String,
    #[serde(rename = "juju-brd", default, skip_serializing_if = "Option::is_none")]
    pub brd: Option<BrdMetadata>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrdMetadata {
    pub tool_version: String,
    /// The environment *name* (`JUJU_ENV` / config), which `restore -e` is checked against.
    pub environment: String,
    /// Every state-server address known at backup time; restore probes each before it proceeds.
    pub state_server_addresses: Vec<String>,
    /// `none`, `sqlite`, `command`, ...: tells verify and restore how to treat `dump/`.
    pub database_engine: String,
    pub config_digest: String,
    /// The database server's version at dump time (MongoDB), which restore holds the host's to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_version: Option<String>,
    /// Host path of the database file the dump came from (sqlite), where restore puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_path: Option<String>,
    /// `gzip` or `zstd`.
    pub compression: String,
    pub files: u64,
    pub root_tar_bytes: u64,
    pub dump_bytes: u64,
    /// The environment's machines, read from the dump in the same snapshot: restore re-points
    /// the agents of every machine that is not a state-server (`update-agents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Vec<crate::db::Machine>>,
    /// Why there is no inventory, when it could not be read (the backup itself succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_error: Option<String>,
}

impl Metadata {
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Metadata = serde_json::from_slice(bytes)
            .map_err(|e| format!("metadata.json is not valid: {e}"))?;
        if !(0..=MAX_READ_FORMAT_VERSION).contains(&m.format_version) {
            return Err(format!(
                "metadata.json FormatVersion {} is not one this juju-brd understands (0 to {MAX_READ_FORMAT_VERSION})",
                m.format_version
            ));
        }
        Ok(m)
    }

    /// The environment name to compare `restore -e` with.
    pub fn environment_name(&self) -> &str {
        match &self.brd {
            Some(b) => &b.environment,
            None => &self.environment,
        }
    }

    /// The model's UUID: `ModelUUID`, or `Environment` in FormatVersion 0 (where Juju 1.x and
    /// 2.8 keep it).
    pub fn model(&self) -> &str {
        if self.model_uuid.is_empty() {
            &self.environment
        } else {
            &self.model_uuid
        }
    }

    /// Whether the archive belongs to the environment named or identified by any of `wanted`
    /// (a name, as juju-brd records it, or a model UUID, which Juju's own archives carry).
    pub fn belongs_to(&self, wanted: &[&str]) -> bool {
        wanted
            .iter()
            .filter(|w| !w.is_empty())
            .any(|w| self.brd.as_ref().is_some_and(|b| b.environment == *w) || self.model() == *w)
    }

    /// How the archive's environment reads in a message: its name and model UUID as known.
    pub fn describe_environment(&self) -> String {
        match (&self.brd, self.model()) {
            (Some(b), "") => format!("`{}`", b.environment),
            (Some(b), uuid) => format!("`{}` (model {uuid})", b.environment),
            (None, "") => "an unnamed environment (no name or model UUID recorded)".into(),
            (None, uuid) => format!("model {uuid} (a Juju-made archive records no name)"),
        }
    }

    pub fn engine(&self) -> &str {
        self.brd.as_ref().map_or("unknown", |b| &b.database_engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_juju_written_metadata_file() {
        let juju = br#"{"ID":"20140909-115934.asdf-zxcv-qwe","Checksum":"123af2cef","ChecksumFormat":"SHA-1, base64 encoded","Size":10,"Stored":"0001-01-01T00:00:00Z","Started":"2014-09-09T11:59:34Z","Finished":"2014-09-09T12:00:34Z","Notes":"","Environment":"asdf-zxcv-qwe","Machine":"0","Hostname":"myhost","Version":"1.21-alpha3"}"#;
        let m = Metadata::parse(juju).unwrap();
        assert_eq!(m.machine, "0");
        assert_eq!(m.environment_name(), "asdf-zxcv-qwe");
        assert!(m.brd.is_none());
    }

    #[test]
    fn notes_are_measured_as_metadata_json_stores_them() {
        for s in [
            "plain",
            "quote\" back\\ nl\n tab\t",
            "\u{1}\u{1f}\u{7f} é ✓ 🦀",
            "",
        ] {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(stored_len(s), json.len() as u64 - 2, "{s:?}");
        }
        let limit = MAX_NOTES_BYTES as usize;
        assert!(check_notes(&"x".repeat(limit)).is_ok());
        assert!(check_notes(&"x".repeat(limit + 1)).is_err());
        // A sixth of the limit in control characters is the limit once escaped.
        assert!(check_notes(&"\u{1}".repeat(limit / 6)).is_ok());
        let e = check_notes(&"\u{1}".repeat(limit / 6 + 1)).unwrap_err();
        assert!(
            e.contains("notes are too long") && e.contains(&limit.to_string()),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        assert!(Metadata::parse(br#"{"ID": 5}"#).is_err());
        assert!(Metadata::parse(br#"{"HANodes": "three"}"#).is_err());
        assert!(Metadata::parse(br#"{"Started": "yesterday"}"#).is_err());
        assert!(Metadata::parse(br#"{"FormatVersion": 99}"#).is_err());
        assert!(Metadata::parse(br#"{"FormatVersion": -1}"#).is_err());
        assert!(Metadata::parse(br#"{"FormatVersion": 2}"#).is_ok());
        assert!(Metadata::parse(br#"[1,2]"#).is_err());
    }
}
