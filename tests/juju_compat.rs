//! Juju compatibility both ways (issue 13).
//!
//! Archives built as Juju writes them, from a description of its layout (juju/juju
//! `state/backups/archive.go`, `create.go`, `files.go`, `metadata.go`; juju/utils `tar/tar.go`):
//! - the outer tar.gz holds `juju-backup/` and `juju-backup/dump` as directory entries (names
//!   without a trailing slash), `juju-backup/metadata.json`, `juju-backup/root.tar` and a
//!   mongodump `juju-backup/dump/` with `oplog.bson`;
//! - root.tar has the listed files and directories (`var/lib/juju/tools`,
//!   `var/lib/juju/agents/machine-0`, `system-identity`, `server.pem`, `shared-secret`, `nonce.txt`)
//!   but no entries for their parents, symlinks with the fully resolved absolute target
//!   (`filepath.EvalSymlinks`), no hardlinks;
//! - metadata.json as written before the backup finished (empty ID and Checksum, zero Stored):
//!   2.8 FormatVersion 0 (no FormatVersion key, `Environment` holds the model UUID, `Series`,
//!   `CACert`); 2.9 FormatVersion 1 (`ModelUUID`, `ControllerUUID`, `HANodes`,
//!   `ControllerMachineID`, `Series`); 3.6.22+ FormatVersion 2 (`Base`, no Checksum,
//!   ChecksumFormat or Size).
//!
//! Each goes through `verify`, `show`, `restore --dry-run` and a real restore into a target root.
//! The other way, `tests/common/juju_reader.rs` reads every archive the tests make as Juju does.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{juju_reader, stderr, Env};

const UUID: &str = "d1a2b3c4-0000-4000-8000-00000000beef";

#[derive(Clone, Copy, Debug)]
enum Juju {
    V28,
    V29,
    V36,
}

impl Juju {
    fn version(self) -> &'static str {
        match self {
            Juju::V28 => "2.8.13",
            Juju::V29 => "2.9.42",
            Juju::V36 => "3.6.22",
        }
    }

    fn metadata(self) -> serde_json::Value {
        let started = "2026-11-24T03:00:00.123456789Z";
        let zero = "0001-01-01T00:00:00Z";
        match self {
            Juju::V28 => serde_json::json!({
                "ID": "", "Checksum": "", "ChecksumFormat": "", "Size": 0, "Stored": zero,
                "Started": started, "Finished": zero, "Notes": "", "Environment": UUID,
                "Machine": "0", "Hostname": "juju-0", "Version": self.version(),
                "Series": "bionic", "CACert": "", "CAPrivateKey": ""
            }),
            Juju::V29 => serde_json::json!({
                "ID": "", "FormatVersion": 1, "Checksum": "", "ChecksumFormat": "", "Size": 0,
                "Stored": zero, "Started": started, "Finished": zero, "Notes": "",
                "ModelUUID": UUID, "Machine": "0", "Hostname": "juju-0",
                "Version": self.version(), "Series": "focal",
                "ControllerUUID": "c0ffee00-0000-4000-8000-000000000001", "HANodes": 1,
                "ControllerMachineID": "0", "ControllerMachineInstanceID": "i-0",
                "CACert": "", "CAPrivateKey": ""
            }),
            Juju::V36 => serde_json::json!({
                "ID": "", "FormatVersion": 2, "Stored": zero, "Started": started,
                "Finished": zero, "Notes": "", "ModelUUID": UUID, "Machine": "0",
                "Hostname": "juju-0", "Version": self.version(), "Base": "ubuntu@22.04",
                "ControllerUUID": "c0ffee00-0000-4000-8000-000000000001", "HANodes": 1,
                "ControllerMachineID": "0", "ControllerMachineInstanceID": "i-0"
            }),
        }
    }
}

fn header(kind: tar::EntryType, size: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_764_000_000);
    h
}

/// root.tar as Juju writes it; agent.conf names `api` as the state-server.
fn root_tar(j: Juju, api: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let tools = format!("var/lib/juju/tools/{}-focal-amd64", j.version());
    let agent = format!(
        "tag: machine-0\nmodel: model-{UUID}\nupgradedToVersion: {}\napiaddresses:\n- {api}\nstateaddresses:\n- {api}\nstatepassword: s3cret\n",
        j.version()
    );
    let dir = |b: &mut tar::Builder<Vec<u8>>, name: &str| {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        b.append_data(&mut h, name, &[][..]).unwrap();
    };
    dir(&mut b, "var/lib/juju/tools");
    dir(&mut b, &tools);
    dir(&mut b, "var/lib/juju/agents/machine-0");
    let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8], mode: u32| {
        let mut h = header(tar::EntryType::Regular, body.len(), mode);
        b.append_data(&mut h, name, body).unwrap();
    };
    file(&mut b, &format!("{tools}/jujud"), b"#!/bin/sh\n", 0o755);
    file(
        &mut b,
        "var/lib/juju/agents/machine-0/agent.conf",
        agent.as_bytes(),
        0o600,
    );
    file(
        &mut b,
        "var/lib/juju/system-identity",
        b"-----BEGIN KEY-----\n",
        0o600,
    );
    file(
        &mut b,
        "var/lib/juju/server.pem",
        b"-----BEGIN CERT-----\n",
        0o600,
    );
    file(&mut b, "var/lib/juju/shared-secret", b"secret", 0o600);
    file(&mut b, "var/lib/juju/nonce.txt", b"machine-0:nonce", 0o644);
    let mut h = header(tar::EntryType::Symlink, 0, 0o777);
    h.set_link_name(format!("/{tools}")).unwrap();
    b.append_data(&mut h, "var/lib/juju/tools/machine-0", &[][..])
        .unwrap();
    b.into_inner().unwrap()
}

/// The outer archive, named as Juju names it, with a sidecar-free layout (Juju writes none).
fn juju_archive(env: &Env, j: Juju, api: &str) -> PathBuf {
    let path = env.path(&format!(
        "juju-backup-20261124-{:06}.tar.gz",
        j as u32 + 30000
    ));
    let gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), Default::default());
    let mut t = tar::Builder::new(gz);
    let dir = |t: &mut tar::Builder<_>, name: &str| {
        let mut h = header(tar::EntryType::Directory, 0, 0o755);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        t.append(&h, &[][..]).unwrap();
    };
    dir(&mut t, "juju-backup");
    let meta = serde_json::to_vec(&j.metadata()).unwrap();
    let put = |t: &mut tar::Builder<_>, name: &str, body: &[u8]| {
        let mut h = header(tar::EntryType::Regular, body.len(), 0o644);
        t.append_data(&mut h, name, body).unwrap();
    };
    put(&mut t, "juju-backup/metadata.json", &meta);
    put(&mut t, "juju-backup/root.tar", &root_tar(j, api));
    dir(&mut t, "juju-backup/dump");
    put(&mut t, "juju-backup/dump/oplog.bson", b"");
    dir(&mut t, "juju-backup/dump/juju");
    put(
        &mut t,
        "juju-backup/dump/juju/machines.bson",
        b"\x05\x00\x00\x00\x00",
    );
    put(
        &mut t,
        "juju-backup/dump/juju/machines.metadata.json",
        b"{}",
    );
    t.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

fn restore_config(env: &Env, uuid: Option<&str>) {
    let controller = uuid.map_or(String::new(), |u| {
        format!("[controller]\nmodel_uuid = \"{u}\"\n")
    });
    env.config(
        "",
        &format!(
            "[restore]\nstop_commands = []\nstart_commands = []\nprobe_ports = []\nprobe_timeout = \"300ms\"\n{controller}"
        ),
    );
}

fn restore(env: &Env, archive: &Path, target: &Path, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.push(archive.to_str().unwrap());
    env.restore_into(target, &all)
}

#[test]
fn juju_made_archives_of_every_version_verify_show_and_restore() {
    let env = Env::new(1);
    // Nothing answers here: the probe of the agent.conf address finds the old server gone.
    let gone = format!("127.0.0.1:{}", common::free_port());
    for j in [Juju::V28, Juju::V29, Juju::V36] {
        restore_config(&env, None);
        let archive = juju_archive(&env, j, &gone);
        let out = env.run(&["verify", archive.to_str().unwrap()]);
        assert!(out.status.success(), "{j:?} verify: {}", stderr(&out));
        let out = env.run(&["show", "--json", archive.to_str().unwrap()]);
        assert!(out.status.success(), "{j:?} show: {}", stderr(&out));
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shown["Version"], j.version(), "{j:?}");

        let target = env.path(&format!("target-{j:?}"));
        std::fs::create_dir_all(&target).unwrap();
        // No -e and no model UUID configured: refused, naming both sides.
        let out = restore(&env, &archive, &target, &["--dry-run"]);
        assert!(!out.status.success(), "{j:?}");
        assert!(
            stderr(&out).contains(&format!(
                "model {UUID} (a Juju-made archive records no name), not `test-env`"
            )),
            "{j:?}: {}",
            stderr(&out)
        );
        // -e is a check against this host's config, not a relabelling: a UUID the config does
        // not know is refused, naming both.
        let out = restore(&env, &archive, &target, &["--dry-run", "-e", UUID]);
        assert!(!out.status.success(), "{j:?}");
        assert!(
            stderr(&out).contains(&format!(
                "-e names environment `{UUID}`, but this host's config is for `test-env`"
            )),
            "{j:?}: {}",
            stderr(&out)
        );
        // With the model UUID in the config, the archive matches, with -e or without.
        restore_config(&env, Some(UUID));
        let out = restore(
            &env,
            &archive,
            &target,
            &["--dry-run", "-e", UUID, "--skip-database"],
        );
        assert!(out.status.success(), "{j:?}: {}", stderr(&out));
        // This host has no mongorestore: without --skip-database, refused before any change.
        let out = restore(&env, &archive, &target, &[]);
        assert!(!out.status.success(), "{j:?}");
        assert!(
            stderr(&out).contains("cannot be restored on this host")
                && stderr(&out).contains("--skip-database"),
            "{j:?}: {}",
            stderr(&out)
        );
        assert!(
            std::fs::read_dir(&target).unwrap().next().is_none(),
            "{j:?}: target changed"
        );
        // The files alone, said in capitals.
        let out = restore(&env, &archive, &target, &["--skip-database"]);
        assert!(out.status.success(), "{j:?}: {}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("THE DATABASE WAS NOT RESTORED"),
            "{j:?}: {said}"
        );
        let conf = std::fs::read_to_string(target.join("var/lib/juju/agents/machine-0/agent.conf"))
            .unwrap();
        assert!(
            conf.contains("- 10.20.30.40:"),
            "{j:?}: agent.conf not re-pointed: {conf}"
        );
        assert_eq!(
            std::fs::read_link(target.join("var/lib/juju/tools/machine-0")).unwrap(),
            PathBuf::from(format!("/var/lib/juju/tools/{}-focal-amd64", j.version()))
        );
        // Parents root.tar does not list are made as on a Juju host.
        use std::os::unix::fs::PermissionsExt;
        for d in ["var", "var/lib", "var/lib/juju"] {
            let mode = std::fs::metadata(target.join(d))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o755, "{j:?}: {d}");
        }
    }
}

#[test]
fn the_state_server_in_a_juju_archive_s_agent_conf_is_probed() {
    let env = Env::new(1);
    restore_config(&env, Some(UUID));
    let alive = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = alive.local_addr().unwrap().to_string();
    let archive = juju_archive(&env, Juju::V29, &addr);
    let target = env.path("t");
    std::fs::create_dir_all(&target).unwrap();
    let out = restore(&env, &archive, &target, &["--dry-run", "--skip-database"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a recorded state-server still answers")
            && stderr(&out).contains(&addr),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_juju_4_manifest_is_held_to_the_archive() {
    let env = Env::new(1);
    let gone = format!("127.0.0.1:{}", common::free_port());
    let plain = juju_archive(&env, Juju::V29, &gone);
    // Re-pack with Juju 4's manifest (juju/juju core/backups/manifest.go) listing every file.
    let rebuild = |out: &Path, lie: bool| {
        let f = std::fs::File::open(&plain).unwrap();
        let mut t = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
        let mut members = Vec::new();
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut body).unwrap();
            if e.header().entry_type().is_file() {
                members.push((name, body));
            }
        }
        use sha2::Digest;
        let files: Vec<serde_json::Value> = members
            .iter()
            .map(|(n, b)| {
                let mut sha = hex::encode(sha2::Sha256::digest(b));
                if lie && n.ends_with("root.tar") {
                    sha = "00".repeat(32);
                }
                serde_json::json!({"path": n, "kind": "dump", "size": b.len(), "sha256": sha.to_uppercase()})
            })
            .collect();
        let manifest =
            serde_json::to_vec(&serde_json::json!({"format-version": 1, "files": files})).unwrap();
        let gz =
            flate2::write::GzEncoder::new(std::fs::File::create(out).unwrap(), Default::default());
        let mut t = tar::Builder::new(gz);
        let mut put = |name: &str, body: &[u8]| {
            let mut h = header(tar::EntryType::Regular, body.len(), 0o644);
            t.append_data(&mut h, name, body).unwrap();
        };
        put("juju-backup/manifest.json", &manifest);
        for (n, b) in &members {
            put(n, b);
        }
        t.into_inner().unwrap().finish().unwrap().flush().unwrap();
    };
    let good = env.path("juju4.tar.gz");
    rebuild(&good, false);
    let out = env.run(&["verify", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bad = env.path("juju4-lying.tar.gz");
    rebuild(&bad, true);
    let out = env.run(&["verify", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`juju-backup/root.tar` does not match manifest.json"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn juju_brd_archives_read_as_juju_reads_them() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    // Env::backup checks every archive with the Juju-side reader; this one also by hand.
    let archive = env.backup();
    juju_reader::assert_juju_readable(&archive);
    let out = env.run(&["show", "--json", archive.to_str().unwrap()]);
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["Version"], "2.9.42");
    assert_eq!(m["Series"], "focal");
    assert_eq!(m["Base"], "ubuntu@20.04");

    // No version anywhere: the backup is refused with what to set, and nothing is written.
    let bare = Env::new(1);
    let conf = bare.root().join("var/lib/juju/agents/machine-0/agent.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("upgradedToVersion: 2.9.42\n", "")).unwrap();
    for e in std::fs::read_dir(bare.root().join("var/lib/juju/tools")).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::rename(&p, p.with_file_name("unversioned")).unwrap();
        }
    }
    bare.config("", &bare.sqlite_section());
    let out = bare.run(&["backup", "--offline"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("set controller.version"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hardlinked_files_are_stored_whole_as_juju_does() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    let a = env.root().join("var/lib/juju/server.pem");
    let b = env.root().join("var/lib/juju/server-copy.pem");
    std::fs::hard_link(&a, &b).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!(
            "environment = \"test-env\"\narchive_dir = \"archives\"\nstate_dir = \"state\"\n\
             [files]\nroot = \"root\"\ninclude = [\"/var/lib/juju/server.pem\", \
             \"/var/lib/juju/server-copy.pem\", \"/var/lib/juju/agents/machine-*\", \"/var/lib/juju/tools\"]\n{}",
            env.sqlite_section()
        ),
    )
    .unwrap();
    // Env::backup reads the archive as Juju does, which refuses hardlink entries.
    let archive = env.backup();
    let t = env.path("t");
    std::fs::create_dir_all(&t).unwrap();
    common::system_untar(&archive, &t, &[]);
    let inner = t.join("juju-backup/root.tar");
    let bytes = std::fs::read(inner).unwrap();
    let mut tar = tar::Archive::new(&bytes[..]);
    let mut kinds = std::collections::BTreeMap::new();
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        kinds.insert(
            e.path().unwrap().display().to_string(),
            (e.header().entry_type(), e.header().size().unwrap()),
        );
    }
    let size = std::fs::metadata(&a).unwrap().len();
    for name in ["var/lib/juju/server.pem", "var/lib/juju/server-copy.pem"] {
        assert_eq!(kinds[name], (tar::EntryType::Regular, size), "{name}");
    }
}

#[test]
fn a_host_of_another_series_or_juju_version_is_refused_in_the_plan() {
    let env = Env::new(1);
    restore_config(&env, Some(UUID));
    let gone = format!("127.0.0.1:{}", common::free_port());
    let archive = juju_archive(&env, Juju::V29, &gone);
    let target = env.path("other-host");
    std::fs::create_dir_all(target.join("etc")).unwrap();
    std::fs::write(
        target.join("etc/os-release"),
        "ID=ubuntu\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\n",
    )
    .unwrap();
    std::fs::create_dir_all(target.join("var/lib/juju/tools/2.9.40-jammy-amd64")).unwrap();
    let out = restore(&env, &archive, &target, &["--dry-run", "--skip-database"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("series: the archive was taken on focal, this host runs jammy"),
        "{err}"
    );
    assert!(
        err.contains("juju version: the archive is Juju 2.9.42, this host has Juju 2.9.40"),
        "{err}"
    );
}
