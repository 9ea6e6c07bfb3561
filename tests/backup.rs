//! End-to-end tests of taking backups and verifying archives: the real binary, real files, a real
//! SQLite database, the system `tar`, and a real tmpfs for the full-disk case.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{stderr, system_untar, Env};

/// Every member extracted from root.tar matches the original tree: bytes, mode, owner, mtime,
/// symlink target.
fn assert_tree_matches(original_root: &Path, extracted: &Path) -> usize {
    let mut n = 0;
    for e in walkdir::WalkDir::new(extracted).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(extracted).unwrap();
        let orig = original_root.join(rel);
        let (a, b) = (
            std::fs::symlink_metadata(&orig)
                .unwrap_or_else(|_| panic!("{} not in original", rel.display())),
            e.path().symlink_metadata().unwrap(),
        );
        assert_eq!(a.mode(), b.mode(), "mode of {}", rel.display());
        assert_eq!(
            (a.uid(), a.gid()),
            (b.uid(), b.gid()),
            "owner of {}",
            rel.display()
        );
        if a.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&orig).unwrap(),
                std::fs::read_link(e.path()).unwrap()
            );
        } else {
            assert_eq!(a.mtime(), b.mtime(), "mtime of {}", rel.display());
        }
        if a.is_file() {
            assert_eq!(
                std::fs::read(&orig).unwrap(),
                std::fs::read(e.path()).unwrap(),
                "bytes of {}",
                rel.display()
            );
        }
        n += 1;
    }
    n
}

#[test]
fn round_trip_through_system_tar() {
    round_trip(false);
}

/// As `round_trip_through_system_tar`, with a file owned by `nobody`: its owner survives the trip.
#[test]
#[ignore = "needs root: chowns a file to nobody and extracts with --same-owner"]
fn round_trip_through_system_tar_keeps_a_foreign_owner() {
    common::require_root("chowns a file to nobody and extracts with --same-owner");
    round_trip(true);
}

/// Backup, then the system tar extracts the archive and its root.tar; everything matches the
/// original tree. With `foreign_owner` (root only) one file belongs to `nobody` and tar extracts
/// with the recorded owners.
fn round_trip(foreign_owner: bool) {
    let env = Env::new(4);
    let root = env.root();
    if foreign_owner {
        let p = root.join("var/lib/juju/nonce.txt");
        nix::unistd::chown(&p, Some(65534.into()), Some(65534.into())).unwrap();
    }
    let xattr_set = xattr::set(
        root.join("var/lib/juju/server.pem"),
        "user.juju-brd",
        b"kept",
    )
    .is_ok();
    env.config("", &env.sqlite_section());
    let archive = env.backup();
    let name = archive.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("juju-backup-") && name.ends_with(".tar.gz"),
        "{name}"
    );
    assert_eq!(std::fs::metadata(&archive).unwrap().mode() & 0o777, 0o600);
    let sidecar = archive.with_file_name(format!("{name}.sha256"));
    assert_eq!(std::fs::metadata(&sidecar).unwrap().mode() & 0o777, 0o600);
    // sha256sum agrees with the sidecar.
    let st = Command::new("sha256sum")
        .arg("-c")
        .arg(&sidecar)
        .current_dir(env.archives())
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", stderr(&st));

    let out = env.path("out");
    system_untar(&archive, &out, &[]);
    let inner = env.path("restored");
    let mut flags = vec!["--xattrs", "--xattrs-include=user.*"];
    if foreign_owner {
        flags.extend(["--same-owner", "--numeric-owner", "-p"]);
    }
    system_untar(&out.join("juju-backup/root.tar"), &inner, &flags);
    if foreign_owner {
        let m = inner.join("var/lib/juju/nonce.txt").metadata().unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (65534, 65534),
            "nobody's file lost its owner"
        );
    }
    let n = assert_tree_matches(&root, &inner);
    assert!(n > 15, "only {n} members");
    for must in [
        "var/lib/juju/agents/machine-0/agent.conf",
        "var/lib/juju/server.pem",
        "var/lib/juju/shared-secret",
        "var/lib/juju/system-identity",
        "var/lib/juju/nonce.txt",
        "var/lib/juju/tools/machine-0",
        "var/lib/juju/tools/2.9.42-focal-amd64/jujud",
        "var/lib/juju/init/jujud-machine-0/exec-start.sh",
        "home/ubuntu/.ssh/authorized_keys",
        "etc/systemd/system/jujud-machine-0.service",
    ] {
        assert!(
            inner.join(must).symlink_metadata().is_ok(),
            "{must} missing"
        );
    }
    // Logs are not part of the default set.
    assert!(!inner.join("var/log").exists());
    if xattr_set {
        let v = xattr::get(inner.join("var/lib/juju/server.pem"), "user.juju-brd").unwrap();
        assert_eq!(v.as_deref(), Some(&b"kept"[..]));
    }
    // The database dump opens and holds the rows.
    let db = rusqlite::Connection::open(out.join("juju-backup/dump/state.db")).unwrap();
    let (n, sum): (i64, i64) = db
        .query_row("SELECT count(*), sum(balance) FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, sum), (100, 100_000));
    // Metadata carries Juju's keys and ours.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("juju-backup/metadata.json")).unwrap())
            .unwrap();
    assert_eq!(meta["Machine"], "0");
    assert_eq!(meta["Version"], "2.9.42");
    assert_eq!(meta["ModelUUID"], "0b8e5d3a-7c2f-4a9e-9d1b-3e4f5a6b7c8d");
    assert_eq!(meta["juju-brd"]["environment"], "test-env");
    assert_eq!(meta["juju-brd"]["database_engine"], "sqlite");
    // verify, show and list agree.
    let v = env.run(&["verify", archive.to_str().unwrap()]);
    assert!(v.status.success(), "{}", stderr(&v));
    let s = env.run(&["show", "--json", archive.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&s.stdout).contains("\"environment\": \"test-env\""));
    let l = env.run(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(listed[0]["name"], name);
    assert_eq!(listed[0]["verification"], "verified");
}

#[test]
#[ignore = "needs zstd: Debian package zstd (tar --zstd reads the archive)"]
fn zstd_archives_round_trip() {
    common::require_debian("zstd", "zstd");
    let env = Env::new(2);
    env.config(
        "[backup]\ncompression = \"zstd\"\nlevel = 3\n",
        &env.sqlite_section(),
    );
    let archive = env.backup();
    assert!(archive.to_string_lossy().ends_with(".tar.zst"));
    let out = env.path("out");
    system_untar(&archive, &out, &["--zstd"]);
    assert!(out.join("juju-backup/root.tar").is_file());
    // The dump, compressed while the files were read, is whole: the full check passes and the
    // database tar extracted is sound.
    let v = env.run(&["verify", &archive.to_string_lossy()]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let db = rusqlite::Connection::open(out.join("juju-backup/dump/state.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn second_backup_in_the_same_second_gets_a_suffix() {
    let env = Env::new(1);
    env.config("[backup]\nverify_after = false\n", "");
    let names: Vec<PathBuf> = (0..3).map(|_| env.backup()).collect();
    let mut uniq = names.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "{names:?}");
}

/// A writer keeps an invariant (the sum of balances) in many small transactions while the backup
/// runs; a file is rewritten in place during the backup. The archive must hold a consistent
/// database and a whole version of the file.
#[test]
fn consistent_under_concurrent_writes() {
    let env = Env::new(2);
    let big = env
        .root()
        .join("var/lib/juju/agents/machine-0/rewritten.bin");
    std::fs::write(&big, vec![b'A'; 4 << 20]).unwrap();
    let cfg_path = env.config("[backup]\nfile_retries = 50\n", &env.sqlite_section());
    let cfg = juju_brd::config::Config::load(&cfg_path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    let db_path = env.root().join("var/lib/juju/db/state.db");
    let db_writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db_path).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut commits = 0u64;
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let tx = conn.unchecked_transaction().unwrap();
                let (from, to) = (i % 100, (i * 7 + 3) % 100);
                tx.execute(
                    "UPDATE accounts SET balance = balance - 5 WHERE id = ?1",
                    [from],
                )
                .unwrap();
                tx.execute(
                    "UPDATE accounts SET balance = balance + 5 WHERE id = ?1",
                    [to],
                )
                .unwrap();
                tx.execute("INSERT INTO txns(ts, doc) VALUES (?1, 'transfer')", [i])
                    .unwrap();
                tx.commit().unwrap();
                commits += 1;
                i += 1;
            }
            commits
        })
    };
    let file_writer = {
        let (stop, big) = (stop.clone(), big.clone());
        std::thread::spawn(move || {
            let mut rewrites = 0u64;
            let mut byte = b'B';
            while !stop.load(Ordering::Relaxed) {
                // In place, so a reader can catch it half-written: alternately in chunks (the
                // stamps move between them) and as one 4 MiB write(2), whose stamps move once,
                // when it starts, so only the settle rule catches a read that overlaps it.
                let mut f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
                if rewrites % 2 == 0 {
                    for _ in 0..4 {
                        f.write_all(&vec![byte; 1 << 20]).unwrap();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                } else {
                    f.write_all(&vec![byte; 4 << 20]).unwrap();
                }
                drop(f);
                rewrites += 1;
                byte = if byte == b'A' { b'B' } else { b'A' };
                std::thread::sleep(Duration::from_millis(40));
            }
            rewrites
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let mut outcomes = Vec::new();
    let started = std::time::Instant::now();
    while outcomes.len() < 3 || started.elapsed() < Duration::from_secs(2) {
        let progress = Arc::new(juju_brd::snapshot::Progress::default());
        outcomes.push(
            juju_brd::snapshot::take(&cfg.backup_settings(), &Default::default(), &progress)
                .unwrap(),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let commits = db_writer.join().unwrap();
    let rewrites = file_writer.join().unwrap();
    assert!(
        commits > 10 && rewrites > 3,
        "writers barely ran: {commits} commits, {rewrites} rewrites"
    );

    for (i, o) in outcomes.iter().enumerate() {
        let out = env.path(&format!("out{i}"));
        system_untar(&o.archive.path, &out, &[]);
        let db = rusqlite::Connection::open(out.join("juju-backup/dump/state.db")).unwrap();
        let sum: i64 = db
            .query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sum, 100_000, "archive {i}: the invariant broke");
        let inner = env.path(&format!("inner{i}"));
        system_untar(&out.join("juju-backup/root.tar"), &inner, &[]);
        let got = std::fs::read(inner.join("var/lib/juju/agents/machine-0/rewritten.bin")).unwrap();
        assert_eq!(got.len(), 4 << 20);
        assert!(
            got.iter().all(|b| *b == got[0]),
            "archive {i}: the rewritten file is torn"
        );
    }
}

/// Runs a backup that must fail; checks the message, that no `.part` or new archive is left and
/// that the earlier archive still verifies.
fn assert_fails_cleanly(env: &Env, earlier: &Path, want: &str) {
    let before = env.archive_dir_listing();
    let out = env.run(&["backup", "--offline"]);
    assert!(!out.status.success(), "backup should have failed");
    let err = stderr(&out);
    assert!(err.contains(want), "expected `{want}` in: {err}");
    let after = env.archive_dir_listing();
    assert_eq!(before, after, "the archive directory changed");
    assert!(!after.iter().any(|n| n.ends_with(".part")), "{after:?}");
    let v = env.run(&["verify", earlier.to_str().unwrap()]);
    assert!(
        v.status.success(),
        "earlier archive damaged: {}",
        stderr(&v)
    );
}

#[test]
fn failures_are_clear_and_leave_nothing_behind() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    let earlier = env.backup();
    let marker = env.path("post-ran");

    env.config(
        "",
        &format!(
            "[database]\nengine = \"command\"\ncommand = [\"sh\", \"-c\", \"echo partial; exit 3\"]\n\
             [hooks]\npost = [\"touch\", \"{}\"]\n",
            marker.display()
        ),
    );
    assert_fails_cleanly(&env, &earlier, "database dump: `sh` exited with status 3");
    assert!(
        marker.exists(),
        "the post hook must run after a failed backup"
    );

    env.config(
        "",
        "[database]\nengine = \"command\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"300ms\"\n",
    );
    assert_fails_cleanly(&env, &earlier, "timed out");

    std::fs::remove_file(&marker).unwrap();
    env.config(
        "",
        &format!(
            "[hooks]\npre = [\"false\"]\npost = [\"touch\", \"{}\"]\n",
            marker.display()
        ),
    );
    assert_fails_cleanly(&env, &earlier, "pre hook: `false` exited with status 1");
    assert!(
        marker.exists(),
        "the post hook must run after a failed pre hook"
    );

    env.config("", "");
    let text = std::fs::read_to_string(env.path("config.toml")).unwrap().replace(
        "[files]\nroot = \"root\"\n",
        "[files]\nroot = \"root\"\ninclude = [\"/var/lib/juju/agents/machine-*\", \"/var/lib/juju/missing-key.pem\"]\n",
    );
    std::fs::write(env.path("config.toml"), text).unwrap();
    assert_fails_cleanly(
        &env,
        &earlier,
        "required path /var/lib/juju/missing-key.pem is missing",
    );
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn full_disk_fails_cleanly() {
    common::require_root("mounts a tmpfs");
    let env = Env::new(3);
    let small = env.archives();
    std::fs::create_dir_all(&small).unwrap();
    let _tmpfs = common::Tmpfs::mount(&small, "6m");
    // A small state fits...
    std::fs::write(
        env.root()
            .join("var/lib/juju/tools/2.9.42-focal-amd64/jujud"),
        b"small",
    )
    .unwrap();
    env.config("", "");
    let earlier = env.backup();
    // ...a large one does not: refused before anything is written.
    let big: Vec<u8> = (0..(8u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(
        env.root()
            .join("var/lib/juju/tools/2.9.42-focal-amd64/jujud"),
        &big,
    )
    .unwrap();
    assert_fails_cleanly(&env, &earlier, "not enough free space in");
}

fn rewrite_outer(src: &Path, dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut data = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut data)
        .unwrap();
    let mut outer = tar::Archive::new(&data[..]);
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(dst).unwrap(),
        Default::default(),
    ));
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut h = e.header().clone();
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        if let Some(body) = edit(&name, body) {
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, &body[..]).unwrap();
        }
    }
    b.into_inner().unwrap().finish().unwrap();
}

#[test]
fn verify_catches_damage() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    let good = env.backup();
    let bad_dir = env.path("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let check = |p: &Path, want: &str| {
        let out = env.run(&["verify", p.to_str().unwrap()]);
        assert!(!out.status.success(), "{} verified", p.display());
        let err = stderr(&out);
        assert!(
            err.contains(want),
            "{}: expected `{want}` in: {err}",
            p.display()
        );
    };

    let bytes = std::fs::read(&good).unwrap();
    // A flipped byte in the middle: caught by deflate/CRC or the manifest.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    let p = bad_dir.join("flipped.tar.gz");
    std::fs::write(&p, &flipped).unwrap();
    check(&p, "verify failed");
    // The same archive beside its sidecar: the sidecar catches even a flip in gzip padding.
    let p = bad_dir.join(good.file_name().unwrap());
    std::fs::write(&p, &flipped).unwrap();
    std::fs::copy(
        good.with_extension("gz.sha256"),
        bad_dir.join(format!(
            "{}.sha256",
            good.file_name().unwrap().to_str().unwrap()
        )),
    )
    .unwrap();
    check(&p, "verify failed");
    // Truncated.
    let p = bad_dir.join("truncated.tar.gz");
    std::fs::write(&p, &bytes[..bytes.len() * 2 / 3]).unwrap();
    check(&p, "incomplete");
    // A member removed.
    let p = bad_dir.join("removed.tar.gz");
    rewrite_outer(&good, &p, |name, body| {
        (!name.ends_with("dump/state.db")).then_some(body)
    });
    check(
        &p,
        "dump member `state.db` listed in the manifest is missing",
    );
    // A manifest that lies about one file.
    let p = bad_dir.join("lying.tar.gz");
    rewrite_outer(&good, &p, |name, body| {
        if name.ends_with("manifest.json") {
            let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            m["root"]["var/lib/juju/server.pem"]["digest"] = "00".repeat(16).into();
            Some(serde_json::to_vec(&m).unwrap())
        } else {
            Some(body)
        }
    });
    check(
        &p,
        "member `var/lib/juju/server.pem` does not match the manifest",
    );
    // Metadata with wrong types.
    let p = bad_dir.join("badmeta.tar.gz");
    rewrite_outer(&good, &p, |name, body| {
        if name.ends_with("metadata.json") {
            Some(br#"{"FormatVersion": 1, "HANodes": "three"}"#.to_vec())
        } else {
            Some(body)
        }
    });
    check(&p, "metadata.json is not valid");
    // And the original is still fine.
    let out = env.run(&["verify", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An archive whose manifest is format 2 (the first 128 bits of each file's SHA-256, under
/// `sha256`, as the previous version wrote them) still verifies, and a wrong digest in it is
/// still caught: the format picks the hash.
#[test]
fn a_format_2_manifest_is_still_read_and_held_to_the_archive() {
    use sha2::{Digest, Sha256};
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    let good = env.backup();
    // Every file's SHA-256 as archived, by manifest section and key.
    let sums = std::cell::RefCell::new(Vec::new());
    rewrite_outer(&good, &env.path("scan.tar.gz"), |name, body| {
        if name.ends_with("/root.tar") {
            let mut t = tar::Archive::new(&body[..]);
            for e in t.entries().unwrap() {
                let mut e = e.unwrap();
                if e.header().entry_type() == tar::EntryType::Regular {
                    let key = e.path().unwrap().display().to_string();
                    let mut b = Vec::new();
                    e.read_to_end(&mut b).unwrap();
                    sums.borrow_mut()
                        .push(("root", key, hex::encode(Sha256::digest(&b))));
                }
            }
        } else if let Some((_, rel)) = name.split_once("/dump/").filter(|(_, r)| !r.is_empty()) {
            sums.borrow_mut()
                .push(("dump", rel.to_string(), hex::encode(Sha256::digest(&body))));
        }
        Some(body)
    });
    let sums = sums.into_inner();
    assert!(sums.len() > 5 && sums.iter().any(|(s, _, _)| *s == "dump"));
    let as_format_2 = |out: &Path, wrong: Option<&str>| {
        rewrite_outer(&good, out, |name, body| {
            if !name.ends_with("juju-brd-manifest.json") {
                return Some(body);
            }
            let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(m["format"], 3);
            m["format"] = 2.into();
            for (section, key, sum) in &sums {
                let e = m[*section][key.as_str()].as_object_mut().unwrap();
                assert!(e.remove("digest").is_some(), "{key} has no digest");
                let half = if Some(key.as_str()) == wrong {
                    "00".repeat(16)
                } else {
                    sum[..32].to_string()
                };
                e.insert("sha256".into(), half.into());
            }
            Some(serde_json::to_vec(&m).unwrap())
        })
    };
    let old = env.path("format2.tar.gz");
    as_format_2(&old, None);
    let out = env.run(&["verify", old.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lying = env.path("format2-lying.tar.gz");
    as_format_2(&lying, Some("var/lib/juju/server.pem"));
    let out = env.run(&["verify", lying.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("member `var/lib/juju/server.pem` does not match the manifest"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_errors_name_file_key_and_line_and_touch_nothing() {
    let env = Env::new(1);
    env.config("", "[retention]\nkeep_daily = \"seven\"\n");
    let out = env.run(&["backup", "--offline"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("config.toml:9: retention.keep_daily: invalid type"),
        "{err}"
    );
    assert!(
        !env.archives().exists(),
        "a broken config must not create anything"
    );
}

/// A byte flipped inside each member's content (then re-compressed, so gzip's own checksum is
/// valid and only juju-brd's checks can notice) is refused, naming the member.
#[test]
fn verify_catches_a_flipped_byte_in_every_member() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    let good = env.backup();
    let bad_dir = env.path("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    for (member, want) in [
        // A byte inside a JSON string value: still valid JSON, so only the recorded hash sees it.
        ("metadata.json", "metadata.json does not match the manifest"),
        ("manifest.json", "manifest.json is not valid"),
        ("root.tar", "root.tar"),
        (
            "dump/state.db",
            "dump member `state.db` does not match the manifest",
        ),
    ] {
        let p = bad_dir.join(format!("{}.tar.gz", member.replace('/', "-")));
        rewrite_outer(&good, &p, |name, mut body| {
            if name.ends_with(member) {
                let at = match member {
                    "metadata.json" => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        text.find("\"Hostname\": \"").unwrap() + 13
                    }
                    "manifest.json" => 1,
                    _ => body.len() / 2 + 7,
                };
                body[at] ^= 0x01;
            }
            Some(body)
        });
        let out = env.run(&["verify", p.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "{member}: a flipped byte passed verify"
        );
        let err = stderr(&out);
        assert!(err.contains(want), "{member}: expected `{want}` in: {err}");
    }
}

/// 300 MiB of zeros compresses about 1000:1; verify stops reading once the expansion passes its
/// ratio limit instead of inflating it all.
#[test]
fn verify_refuses_a_gzip_bomb() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("juju-backup-20260101-000000.tar.gz");
    {
        let f = std::fs::File::create(&p).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::best());
        let mut tar = tar::Builder::new(&mut gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(300 << 20);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(
            &mut h,
            "juju-backup/root.tar",
            std::io::repeat(0).take(300 << 20),
        )
        .unwrap();
        tar.into_inner().unwrap();
        gz.finish().unwrap();
    }
    let compressed = std::fs::metadata(&p).unwrap().len();
    assert!(
        compressed < 1 << 20,
        "not much of a bomb: {compressed} bytes"
    );
    let out = std::process::Command::new(common::BIN)
        .args(["verify", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("a compression bomb"),
        "{}",
        stderr(&out)
    );
}

/// `prune --dry-run` says what would go and why, and deletes nothing; `prune` deletes exactly
/// that, sidecars included; an empty policy is refused.
#[test]
fn prune_dry_run_then_prune() {
    let env = Env::new(1);
    env.config(
        "[backup]\nverify_after = true\n",
        "[retention]\nkeep_last = 1\n",
    );
    let made: Vec<PathBuf> = (0..3).map(|_| env.backup()).collect();
    let before = env.archive_dir_listing();
    let out = env.run(&["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("would delete").count(), 2, "{text}");
    assert!(
        text.contains("no rule keeps it") && text.contains("last 1/1"),
        "{text}"
    );
    assert_eq!(
        env.archive_dir_listing(),
        before,
        "a dry run deleted something"
    );
    let out = env.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = env.archive_dir_listing();
    // The last one made: of one second, `-3` is newer than the bare name.
    let newest = made
        .last()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(left, vec![newest.clone(), format!("{newest}.sha256")]);
    env.config("", "[retention]\nkeep_last = 0\n");
    let out = env.run(&["prune"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("keeps nothing"), "{}", stderr(&out));
}

/// JUJU_ENV is a check, not a label: naming another environment than the config's refuses the
/// backup (naming both) and writes nothing; naming this one, by name or model UUID, is fine.
#[test]
fn juju_env_must_name_this_state_server_s_environment() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    let run = |value: &str| {
        std::process::Command::new(common::BIN)
            .args(["backup", "--offline"])
            .env("JUJU_BRD_CONFIG", env.path("config.toml"))
            .env("JUJU_ENV", value)
            .output()
            .unwrap()
    };
    let out = run("prod");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("JUJU_ENV names environment `prod`, but this host's config is for `test-env` (model 0b8e5d3a-7c2f-4a9e-9d1b-3e4f5a6b7c8d)"),
        "{}",
        stderr(&out)
    );
    assert!(!env.archives().exists(), "nothing may be written");
    for ok in ["test-env", "0b8e5d3a-7c2f-4a9e-9d1b-3e4f5a6b7c8d"] {
        let out = run(ok);
        assert!(out.status.success(), "{ok}: {}", stderr(&out));
    }
    // Every archive says test-env.
    for name in env
        .archive_dir_listing()
        .iter()
        .filter(|n| n.ends_with(".tar.gz"))
    {
        let out = env.run(&[
            "show",
            "--json",
            env.archives().join(name).to_str().unwrap(),
        ]);
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(m["juju-brd"]["environment"], "test-env");
    }
}
