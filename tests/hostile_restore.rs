//! Restore against hostile archives and unlucky hosts (issue 11, items 1-8 and 20). Each hostile
//! archive is forged from a real backup so that its manifest, metadata hash and sidecar all agree:
//! only the part under test is wrong, and verify's whole-archive checks cannot be what stops it.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{stderr, tree_state, Env};
use sha2::{Digest, Sha256};

/// The members of a gzip'd outer archive, in order.
fn unpack(archive: &Path) -> Vec<(String, Vec<u8>)> {
    let f = std::fs::File::open(archive).unwrap();
    let mut t = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    let mut out = Vec::new();
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_dir() {
            continue;
        }
        let name = e.path().unwrap().display().to_string();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        out.push((name, body));
    }
    out
}

/// The manifest entry (`kind`, `size`, `digest`, `link`) of every member of a root.tar.
fn manifest_root(root_tar: &[u8]) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    let mut t = tar::Archive::new(root_tar);
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let v = match e.header().entry_type() {
            tar::EntryType::Directory => serde_json::json!({"kind": "dir", "size": 0}),
            tar::EntryType::Symlink => {
                serde_json::json!({"kind": "symlink", "size": 0, "link": link.unwrap()})
            }
            tar::EntryType::Link => {
                serde_json::json!({"kind": "hardlink", "size": 0, "link": link.unwrap()})
            }
            _ => {
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                // Format 3, as juju-brd writes: BLAKE3 (all 256 bits are accepted too).
                serde_json::json!({"kind": "file", "size": body.len(),
                    "digest": blake3::hash(&body).to_hex().to_string()})
            }
        };
        out.insert(name, v);
    }
    out
}

/// Appends one member to a root.tar being built (the tar crate writes what we give it).
fn add(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, body: &[u8], link: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    if !link.is_empty() {
        h.set_link_name(link).unwrap();
    }
    h.set_cksum();
    b.append_data(&mut h, name, body).unwrap();
}

/// Members of `archive`'s root.tar, re-appended to a new builder (for extending it).
fn root_builder(root_tar: &[u8]) -> tar::Builder<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut t = tar::Archive::new(root_tar);
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        b.append(&h, &body[..]).unwrap();
    }
    b
}

/// A consistent juju-brd archive at `out`: `archive`'s members, edited, with the manifest,
/// the metadata hash and the sidecar recomputed to match.
fn forge(
    archive: &Path,
    out: &Path,
    edit_meta: impl FnOnce(&mut serde_json::Value),
    edit_root: impl FnOnce(Vec<u8>) -> Vec<u8>,
    outer_root_name: &str,
) {
    let members = unpack(archive);
    let get = |n: &str| {
        members
            .iter()
            .find(|(m, _)| m.ends_with(n))
            .unwrap()
            .1
            .clone()
    };
    let mut meta: serde_json::Value = serde_json::from_slice(&get("metadata.json")).unwrap();
    edit_meta(&mut meta);
    let meta = serde_json::to_vec(&meta).unwrap();
    let root_tar = edit_root(get("root.tar"));
    let mut manifest: serde_json::Value = serde_json::from_slice(&get("manifest.json")).unwrap();
    manifest["root"] = serde_json::Value::Object(manifest_root(&root_tar));
    manifest["metadata_sha256"] = hex::encode(Sha256::digest(&meta)).into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    let mut t = tar::Builder::new(gz);
    // Names are written raw: the tar crate would tidy `juju-backup/./root.tar` away.
    let mut put = |name: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(1_700_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        t.append(&h, body).unwrap();
    };
    put("juju-backup/metadata.json", &meta);
    put("juju-backup/juju-brd-manifest.json", &manifest);
    put(outer_root_name, &root_tar);
    for (name, body) in members.iter().filter(|(n, _)| n.contains("/dump/")) {
        put(name, body);
    }
    let bytes = t.into_inner().unwrap().finish().unwrap();
    std::fs::write(out, &bytes).unwrap();
    let name = out.file_name().unwrap().to_string_lossy();
    std::fs::write(
        PathBuf::from(format!("{}.sha256", out.display())),
        format!("{}  {name}\n", hex::encode(Sha256::digest(&bytes))),
    )
    .unwrap();
}

fn named(env: &Env, n: &str) -> PathBuf {
    env.path(&format!("juju-backup-2026112{n}-000000.tar.gz"))
}

/// A host B next to a sentinel directory that no restore may touch.
struct Hosts {
    target: PathBuf,
    outside: PathBuf,
}

fn hosts(env: &Env) -> Hosts {
    let target = env.path("hostB");
    let outside = env.path("outside");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"keep").unwrap();
    Hosts { target, outside }
}

fn restore(env: &Env, archive: &Path, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = extra.to_vec();
    args.push(archive.to_str().unwrap());
    env.restore_into(target, &args)
}

/// Refused by verify and by restore, naming `want`, with the target and its surroundings as
/// they were.
fn refused(env: &Env, h: &Hosts, archive: &Path, want: &str) {
    let before = tree_state(&h.target, &[]);
    let around = tree_state(&h.outside, &[]);
    let out = env.run(&["verify", archive.to_str().unwrap()]);
    assert!(!out.status.success(), "verify passed {}", archive.display());
    assert!(
        stderr(&out).contains(want),
        "verify: expected `{want}` in {}",
        stderr(&out)
    );
    let out = restore(env, archive, &h.target, &[]);
    assert!(!out.status.success(), "restored {}", archive.display());
    assert!(
        stderr(&out).contains(want),
        "restore: expected `{want}` in {}",
        stderr(&out)
    );
    assert_eq!(tree_state(&h.target, &[]), before, "the target changed");
    assert_eq!(
        tree_state(&h.outside, &[]),
        around,
        "outside the target changed"
    );
}

#[test]
fn a_database_path_that_leaves_the_target_is_refused() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let h = hosts(&env);
    let good = env.backup();
    for (i, path) in [
        "/../outside/keep",
        "/var/lib/juju/db/../../../../../outside/keep",
        "relative/state.db",
    ]
    .iter()
    .enumerate()
    {
        let bad = named(&env, &i.to_string());
        forge(
            &good,
            &bad,
            |m| m["juju-brd"]["database_path"] = (*path).into(),
            |r| r,
            "juju-backup/root.tar",
        );
        let want = if path.starts_with('/') {
            "database path"
        } else {
            "is not absolute"
        };
        refused(&env, &h, &bad, want);
    }
}

#[test]
fn the_database_is_never_written_through_a_link_the_archive_plants() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let h = hosts(&env);
    let good = env.backup();
    // An absolute link (meant from the restored root) and a relative one, each with the
    // database path going through it.
    for (i, (link, target)) in [("var/lib/juju/dbx", "/"), ("var/lib/juju/dbx", "../../..")]
        .iter()
        .enumerate()
    {
        let bad = named(&env, &i.to_string());
        forge(
            &good,
            &bad,
            |m| m["juju-brd"]["database_path"] = "/var/lib/juju/dbx/state.db".into(),
            |r| {
                let mut b = root_builder(&r);
                add(&mut b, link, tar::EntryType::Symlink, b"", target);
                b.into_inner().unwrap()
            },
            "juju-backup/root.tar",
        );
        refused(&env, &h, &bad, "goes through symlink `var/lib/juju/dbx`");
    }
}

#[test]
fn symlink_chains_are_resolved_as_the_kernel_would() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let h = hosts(&env);
    let good = env.backup();
    let bad = named(&env, "1");
    forge(
        &good,
        &bad,
        |_| {},
        |r| {
            let mut b = root_builder(&r);
            add(&mut b, "var/lib/up", tar::EntryType::Symlink, b"", "../..");
            add(&mut b, "var/lib/esc", tar::EntryType::Symlink, b"", "up/..");
            b.into_inner().unwrap()
        },
        "juju-backup/root.tar",
    );
    refused(
        &env,
        &h,
        &bad,
        "symlink `var/lib/esc` -> `up/..` escapes the root",
    );
}

/// A root.tar with one more regular file whose header is edited by `edit`.
fn with_member(r: Vec<u8>, name: &str, edit: impl FnOnce(&mut tar::Header)) -> Vec<u8> {
    let mut b = root_builder(&r);
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    edit(&mut h);
    h.set_cksum();
    b.append_data(&mut h, name, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn numbers_out_of_range_are_refused_before_anything_changes() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let h = hosts(&env);
    let good = env.backup();
    type Edit = fn(&mut tar::Header);
    let cases: [(&str, Edit, &str); 3] = [
        (
            "mtime",
            |h| h.set_mtime(1 << 63),
            "mtime 9223372036854775808",
        ),
        ("uid", |h| h.set_uid(1 << 40), "uid 1099511627776"),
        ("gid", |h| h.set_gid(u64::from(u32::MAX)), "gid 4294967295"),
    ];
    for (i, (what, edit, want)) in cases.into_iter().enumerate() {
        let bad = named(&env, &i.to_string());
        forge(
            &good,
            &bad,
            |_| {},
            |r| with_member(r, &format!("var/lib/juju/{what}"), edit),
            "juju-backup/root.tar",
        );
        refused(&env, &h, &bad, want);
    }
}

#[test]
fn privileges_are_stripped_unless_kept_and_the_plan_says_so() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let good = env.backup();
    let archive = named(&env, "1");
    forge(
        &good,
        &archive,
        |_| {},
        |r| with_member(r, "var/lib/juju/suid", |h| h.set_mode(0o4755)),
        "juju-backup/root.tar",
    );
    let plain = env.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let out = restore(&env, &archive, &plain, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("setuid/setgid/capabilities on 1 file(s) stripped")
            && plan.contains("var/lib/juju/suid"),
        "{plan}"
    );
    let mode = std::fs::metadata(plain.join("var/lib/juju/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);

    let kept = env.path("kept");
    std::fs::create_dir_all(&kept).unwrap();
    let out = restore(&env, &archive, &kept, &["--keep-privileges"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("KEPT (--keep-privileges)"));
    let mode = std::fs::metadata(kept.join("var/lib/juju/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
}

#[test]
fn the_database_keeps_the_mode_of_the_file_it_replaces() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let archive = env.backup();
    for (name, host_mode, want) in [
        ("private", Some(0o600), 0o600),
        ("group", Some(0o640), 0o640),
        ("new", None, 0o600),
    ] {
        let t = env.path(name);
        let db = t.join("var/lib/juju/db/state.db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        if let Some(m) = host_mode {
            std::fs::write(&db, b"old").unwrap();
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let out = restore(&env, &archive, &t, &[]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, want, "{name}");
    }
}

#[test]
fn a_dot_in_the_outer_path_means_the_same_to_verify_and_restore() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let good = env.backup();
    let archive = named(&env, "1");
    forge(&good, &archive, |_| {}, |r| r, "juju-backup/./root.tar");
    let names: Vec<String> = unpack(&archive).into_iter().map(|(n, _)| n).collect();
    let raw = {
        let f = std::fs::File::open(&archive).unwrap();
        let mut t = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
        t.entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        raw.iter().any(|n| n == "juju-backup/./root.tar"),
        "{raw:?} {names:?}"
    );
    let out = env.run(&["verify", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = env.path("t");
    std::fs::create_dir_all(&t).unwrap();
    let out = restore(&env, &archive, &t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(t.join("var/lib/juju/server.pem").is_file());
}

#[test]
fn a_host_link_leading_out_of_the_target_is_refused_in_the_plan() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let h = hosts(&env);
    let archive = env.backup();
    // The host keeps /var/lib/juju elsewhere, as operators do for a bigger disk.
    let data = env.path("data-juju");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(h.target.join("var/lib")).unwrap();
    std::os::unix::fs::symlink(&data, h.target.join("var/lib/juju")).unwrap();
    let before = tree_state(&h.target, &[]);
    let out = restore(&env, &archive, &h.target, &["--dry-run"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{} -> {}",
            h.target.join("var/lib/juju").display(),
            data.display()
        )) && err.contains("leads outside the target root"),
        "{err}"
    );
    assert_eq!(tree_state(&h.target, &[]), before);
    assert!(std::fs::read_dir(&data).unwrap().next().is_none());
}

#[test]
fn two_restores_on_one_target_do_not_run_at_once() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let archive = env.backup();
    let t = env.path("t");
    std::fs::create_dir_all(&t).unwrap();
    let cfg = juju_brd::config::Config::load(&env.path("config.toml")).unwrap();
    let opts = juju_brd::restore::RestoreOptions {
        archive: archive.clone(),
        environment: "test-env".into(),
        target_root: t.clone(),
        address: Some("10.20.30.40".into()),
        ..Default::default()
    };
    // The first holds its plan (and the target's lock) while the second starts.
    let first = juju_brd::restore::plan(&cfg.restore, &cfg.database, &opts).unwrap();
    let out = restore(&env, &archive, &t, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another restore is running on"),
        "{}",
        stderr(&out)
    );
    juju_brd::restore::execute(&cfg.restore, &first, &mut |_, _| {}).unwrap();
    drop(first);
    let out = restore(&env, &archive, &t, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn restore_extracts_exactly_the_bytes_it_verified() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let good = env.backup();
    let cfg = juju_brd::config::Config::load(&env.path("config.toml")).unwrap();
    // A forgery that verify would refuse: it writes through a link to outside the target.
    let hostile = env.path("hostile.tar.gz");
    forge(
        &good,
        &hostile,
        |_| {},
        |r| {
            let mut b = root_builder(&r);
            add(&mut b, "var/lib/evil", tar::EntryType::Symlink, b"", "/");
            add(
                &mut b,
                "var/lib/evil/planted",
                tar::EntryType::Regular,
                b"x",
                "",
            );
            b.into_inner().unwrap()
        },
        "juju-backup/root.tar",
    );
    let plan_on = |name: &str, archive: &Path| {
        let t = env.path(name);
        std::fs::create_dir_all(&t).unwrap();
        let opts = juju_brd::restore::RestoreOptions {
            archive: archive.to_path_buf(),
            environment: "test-env".into(),
            target_root: t.clone(),
            address: Some("10.20.30.40".into()),
            ..Default::default()
        };
        (
            t,
            juju_brd::restore::plan(&cfg.restore, &cfg.database, &opts).unwrap(),
        )
    };

    // Replaced by another file while the operator reads the plan: the verified one is restored.
    let swapped = env.path("swapped.tar.gz");
    std::fs::copy(&good, &swapped).unwrap();
    let (t, plan) = plan_on("t1", &swapped);
    std::fs::rename(&hostile, &swapped).unwrap();
    juju_brd::restore::execute(&cfg.restore, &plan, &mut |_, _| {}).unwrap();
    assert!(t.join("var/lib/juju/server.pem").is_file());
    assert!(!t.join("var/lib/evil").exists() && !t.join("planted").exists());

    // Changed in place (same file): caught, rolled back, the target as it was.
    let inplace = env.path("inplace.tar.gz");
    std::fs::copy(&good, &inplace).unwrap();
    let (t, plan) = plan_on("t2", &inplace);
    let before = tree_state(&t, &[]);
    let mut bytes = std::fs::read(&inplace).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&inplace)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let err = juju_brd::restore::execute(&cfg.restore, &plan, &mut |_, _| {}).unwrap_err();
    let err = err.to_string();
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(tree_state(&t, &[]), before);
}
