//! The shipped systemd unit and configs: `systemd-analyze verify` passes, the exposure score stays
//! at or below 3.0, and every config parses (also covered in config's unit tests). The .deb's
//! asset table puts the man pages and completions where Debian looks for them
//! (`packaging/build-deb.sh` generates them and checks the built package holds them).

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

/// `[package.metadata.deb] assets` as (source, destination) pairs.
fn deb_assets() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("deb assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("asset [source, destination, mode]");
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn deb_installs_man_pages_and_completions_in_the_debian_places() {
    let assets = deb_assets();
    let dest_of = |source: &str| {
        assets
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, d)| d.as_str())
            .unwrap_or_else(|| panic!("no deb asset from {source}: {assets:?}"))
    };
    // Every page `juju-brd man --dir` writes, gzipped by build-deb.sh (cargo-deb keeps the name).
    assert_eq!(
        dest_of("target/packaging/man/*.1.gz"),
        "usr/share/man/man1/"
    );
    assert_eq!(
        dest_of("target/packaging/completions/juju-brd"),
        "usr/share/bash-completion/completions/juju-brd"
    );
    assert_eq!(
        dest_of("target/packaging/completions/_juju-brd"),
        "usr/share/zsh/vendor-completions/_juju-brd"
    );
    assert_eq!(
        dest_of("target/packaging/completions/juju-brd.fish"),
        "usr/share/fish/vendor_completions.d/juju-brd.fish"
    );
    // The script writes each of those sources.
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/build-deb.sh"
    ))
    .unwrap();
    for line in [
        "gen=target/packaging",
        r#"man --dir "$gen/man""#,
        r#"gzip -9n "$gen"/man/*.1"#,
        r#"completions bash >"$gen/completions/juju-brd""#,
        r#"completions zsh >"$gen/completions/_juju-brd""#,
        r#"completions fish >"$gen/completions/juju-brd.fish""#,
    ] {
        assert!(
            script.contains(line),
            "packaging/build-deb.sh no longer has `{line}`"
        );
    }
}
