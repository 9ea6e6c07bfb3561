//! The Juju version, series and base recorded in `metadata.json`, which Juju's readers require:
//! an empty `Version` fails every Juju reader (juju/version `Parse("")`), and Juju 2.x restore and
//! `juju-restore` refuse a backup whose series is not the target's.
//!
//! Looked for, in order: the `[controller]` overrides, the machine agent's `upgradedToVersion`,
//! the agent tools directory `tools/VERSION-SERIES-ARCH` (what Juju itself unpacks), and the
//! host's `/etc/os-release` for series and base. A version that cannot be found refuses the
//! backup; a series that cannot be found is recorded empty with a warning.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JujuIdentity {
    pub version: String,
    /// Ubuntu series (`focal`), as Juju 2.x records it.
    pub series: String,
    /// `ubuntu@20.04`, as Juju 3.x records it.
    pub base: String,
}

/// Ubuntu releases Juju controllers ran on: series and version.
const UBUNTU: [(&str, &str); 8] = [
    ("trusty", "14.04"),
    ("xenial", "16.04"),
    ("bionic", "18.04"),
    ("focal", "20.04"),
    ("jammy", "22.04"),
    ("mantic", "23.10"),
    ("noble", "24.04"),
    ("oracular", "24.10"),
];

/// `2.9.42`, `3.6.0`, `2.9-beta1`, `1.25.14.1`: what juju/version parses (digits, dots, and one
/// alphabetic tag after the minor number).
pub fn is_juju_version(v: &str) -> bool {
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

/// (version, series) of the `VERSION-SERIES-ARCH` directories under `tools/`, newest name last.
pub fn tools_dirs(root: &Path) -> Vec<(String, String)> {
    let Ok(rd) = std::fs::read_dir(root.join("var/lib/juju/tools")) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mut it = name.rsplitn(3, '-');
            let _arch = it.next()?;
            let series = it.next()?.to_string();
            let version = it.next()?.to_string();
            is_juju_version(&version).then_some((version, series))
        })
        .collect();
    out.sort();
    out
}

/// `VERSION_CODENAME` and `ID@VERSION_ID` from `etc/os-release` under `root`.
pub fn os_release(root: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(root.join("etc/os-release")).ok()?;
    let get = |key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_string())
        })
    };
    let id = get("ID")?;
    let version = get("VERSION_ID").unwrap_or_default();
    let codename = get("VERSION_CODENAME").unwrap_or_default();
    Some((codename, format!("{id}@{version}")))
}

fn base_of(series: &str) -> String {
    UBUNTU
        .iter()
        .find(|(s, _)| *s == series)
        .map_or(String::new(), |(_, v)| format!("ubuntu@{v}"))
}

fn series_of(base: &str) -> String {
    let version = base.strip_prefix("ubuntu@").unwrap_or_default();
    UBUNTU
        .iter()
        .find(|(_, v)| *v == version)
        .map_or(String::new(), |(s, _)| s.to_string())
}

/// What the metadata records; `Err` names what to set when the version cannot be found.
pub fn detect(
    root: &Path,
    agent_version: &str,
    version_override: Option<&str>,
    series_override: Option<&str>,
) -> Result<JujuIdentity, String> {
    let tools = tools_dirs(root);
    let version = [version_override, Some(agent_version)]
        .into_iter()
        .flatten()
        .find(|v| !v.is_empty())
        .map(str::to_string)
        .or_else(|| tools.last().map(|(v, _)| v.clone()))
        .ok_or(
            "cannot tell the Juju version: agent.conf has no upgradedToVersion and there is no \
             var/lib/juju/tools/VERSION-SERIES-ARCH directory; set controller.version",
        )?;
    if !is_juju_version(&version) {
        return Err(format!(
            "`{version}` is not a Juju version (like 2.9.42); set controller.version"
        ));
    }
    let os = os_release(root);
    let series = series_override
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            os.as_ref()
                .map(|(s, _)| s.clone())
                .filter(|s| !s.is_empty())
        })
        .or_else(|| tools.last().map(|(_, s)| s.clone()))
        .unwrap_or_default();
    let base = match os {
        Some((_, b)) if !b.ends_with('@') => b,
        _ => base_of(&series),
    };
    let series = if series.is_empty() {
        series_of(&base)
    } else {
        series
    };
    Ok(JujuIdentity {
        version,
        series,
        base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_juju_parses_them() {
        for ok in ["2.9.42", "3.6.0", "2.9-beta1", "1.25.14.1", "4.0.1"] {
            assert!(is_juju_version(ok), "{ok}");
        }
        for bad in ["", "2", "v2.9", "2.x", "2.9 ", "focal"] {
            assert!(!is_juju_version(bad), "{bad}");
        }
    }

    #[test]
    fn found_in_order_and_refused_when_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let e = detect(root, "", None, None).unwrap_err();
        assert!(e.contains("set controller.version"), "{e}");
        std::fs::create_dir_all(root.join("var/lib/juju/tools/2.9.42-focal-amd64")).unwrap();
        std::os::unix::fs::symlink(
            "2.9.42-focal-amd64",
            root.join("var/lib/juju/tools/machine-0"),
        )
        .unwrap();
        let id = detect(root, "", None, None).unwrap();
        assert_eq!(
            id,
            JujuIdentity {
                version: "2.9.42".into(),
                series: "focal".into(),
                base: "ubuntu@20.04".into()
            }
        );
        assert_eq!(
            detect(root, "2.9.43", None, None).unwrap().version,
            "2.9.43"
        );
        assert_eq!(
            detect(root, "2.9.43", Some("2.9.44"), None)
                .unwrap()
                .version,
            "2.9.44"
        );
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/os-release"),
            "ID=ubuntu\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\n",
        )
        .unwrap();
        let id = detect(root, "", None, None).unwrap();
        assert_eq!(
            (id.series.as_str(), id.base.as_str()),
            ("jammy", "ubuntu@22.04")
        );
        assert!(detect(root, "latest", None, None).is_err());
    }
}
