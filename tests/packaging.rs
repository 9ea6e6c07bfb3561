//! The shipped systemd unit and configs: `systemd-analyze verify` passes, the exposure score stays
//! at or below 3.0, and every config parses (also covered in config's unit tests).

mod common;

use std::process::Command;

fn unit_with_built_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/juju-brd.service"
    ))
    .unwrap();
    let unit = unit.replace("/usr/bin/juju-brd", common::BIN);
    let p = dir.join("juju-brd.service");
    std::fs::write(&p, unit).unwrap();
    p
}

#[test]
#[ignore = "needs systemd-analyze: Debian package systemd"]
fn systemd_unit_verifies_and_is_hardened() {
    common::require_debian("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !text.contains("Unknown key") && !text.contains("Failed to parse"),
        "{text}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in `{line}`"));
    assert!(score <= 3.0, "exposure {score} > 3.0");
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "Restart=on-failure",
        "UMask=0077",
        "StateDirectory=",
        "RuntimeDirectory=",
        "ConfigurationDirectory=",
    ] {
        assert!(
            std::fs::read_to_string(&unit).unwrap().contains(must),
            "{must} missing"
        );
    }
}
