//! End-to-end tests of `juju-brd restore`: real archives, real extraction into a temp "host B"
//! root, real TCP listeners for the old-server probe, hostile tars built byte by byte.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{stderr, tree_state, Env};

fn host_b(env: &Env) -> PathBuf {
    let b = env.path("hostB");
    std::fs::create_dir_all(&b).unwrap();
    b
}

fn restore(env: &Env, archive: &Path, target: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = extra.to_vec();
    args.push(archive.to_str().unwrap());
    env.restore_into(target, &args)
}

/// Sets every file's and directory's mtime under `root` to one fixed moment in 2020, so that
/// anything a restore touches afterwards shows, whatever second the test runs in.
fn backdate(root: &Path) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    let mut dirs = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        if e.file_type().is_dir() {
            dirs.push(e.path().to_path_buf());
        } else if e.file_type().is_file() {
            std::fs::File::options()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_times(std::fs::FileTimes::new().set_modified(t))
                .unwrap();
        }
    }
    for d in dirs.iter().rev() {
        std::fs::File::open(d)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(t))
            .unwrap();
    }
}

#[test]
fn round_trip_from_host_a_to_an_empty_host_b() {
    let env = Env::new(3);
    backdate(&env.root());
    env.restore_config(&[], "");
    let archive = env.backup();
    let b = host_b(&env);
    let out = restore(&env, &archive, &b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("now point at 10.20.30.40"), "{stdout}");

    // Every archived file, mode, owner, mtime and symlink matches host A (agent.conf aside).
    let a_state = tree_state(&env.root(), &[]);
    let b_state = tree_state(
        &b,
        &[
            ".juju-brd-rollback",
            "var/lib/juju/db",
            "var/lib/juju/agents/machine-0/agent.conf",
        ],
    );
    assert!(b_state.len() > 15, "{b_state:?}");
    for (path, state) in &b_state {
        assert_eq!(a_state.get(path), Some(state), "{path}");
    }
    // The agent config carries the new address, everything else in it unchanged.
    let conf_a =
        std::fs::read_to_string(env.root().join("var/lib/juju/agents/machine-0/agent.conf"))
            .unwrap();
    let conf_b =
        std::fs::read_to_string(b.join("var/lib/juju/agents/machine-0/agent.conf")).unwrap();
    assert_eq!(conf_b, conf_a.replace("127.0.0.1:", "10.20.30.40:"));
    // The database is where it was on A and holds the rows.
    let db = rusqlite::Connection::open(b.join("var/lib/juju/db/state.db")).unwrap();
    let sum: i64 = db
        .query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sum, 100_000);
    // Running it again (as after an interruption) is safe and gives the same tree.
    let before = tree_state(&b, &[".juju-brd-rollback"]);
    let out = restore(&env, &archive, &b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = tree_state(&b, &[".juju-brd-rollback"]);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
}

#[test]
fn a_live_old_server_refuses_and_force_overrides() {
    let env = Env::new(1);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    env.restore_config(&[port], "");
    let archive = env.backup();
    let b = host_b(&env);
    let out = restore(&env, &archive, &b, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("127.0.0.1:{port}"))
            && err.contains("no state-server of this environment is working"),
        "{err}"
    );
    assert!(
        tree_state(&b, &[]).is_empty(),
        "a refused restore changed the target"
    );
    let out = restore(&env, &archive, &b, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(b.join("var/lib/juju/server.pem").is_file());
    drop(listener);
}

/// A host B with existing files that a refused or failed restore must leave exactly as they are.
fn populated_host_b(env: &Env) -> PathBuf {
    let b = host_b(env);
    for (p, body) in [
        ("var/lib/juju/server.pem", "old pem"),
        (
            "var/lib/juju/agents/machine-0/agent.conf",
            "tag: machine-0\napiaddresses:\n- 1.1.1.1:17070\n",
        ),
        ("var/lib/juju/db/state.db", "not really a db"),
        ("etc/hostname", "hostb"),
    ] {
        let f = b.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, body).unwrap();
    }
    std::os::unix::fs::symlink("server.pem", b.join("var/lib/juju/current")).unwrap();
    b
}

#[test]
fn refusals_leave_the_target_unchanged() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let archive = env.backup();
    let b = populated_host_b(&env);
    let before = tree_state(&b, &[]);
    let check = |archive: &Path, extra: &[&str], want: &str| {
        let out = restore(&env, archive, &b, extra);
        assert!(
            !out.status.success(),
            "restore of {} with {extra:?} succeeded",
            archive.display()
        );
        let err = stderr(&out);
        assert!(err.contains(want), "expected `{want}` in: {err}");
        assert_eq!(tree_state(&b, &[]), before, "the target changed");
    };
    check(
        &archive,
        &["--constraints", "mem=100000G cores=512 arch=s390x"],
        "mem=102400000M: this host has",
    );
    check(
        &archive,
        &["-e", "other-env"],
        "-e names environment `other-env`, but this host's config is for `test-env` (model 0b8e5d3a-7c2f-4a9e-9d1b-3e4f5a6b7c8d)",
    );
    let bad = env.path("corrupt.tar.gz");
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&bad, bytes).unwrap();
    check(&bad, &[], "the archive is not sound");
    // The dry run passes every check and changes nothing.
    let out = restore(&env, &archive, &b, &["--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing was changed"));
    assert_eq!(tree_state(&b, &[]), before);
}

/// One raw tar member with exactly the given name bytes (the tar crate refuses to write `..`).
fn raw_member(
    out: &mut Vec<u8>,
    name: &[u8],
    kind: tar::EntryType,
    data: &[u8],
    link: &[u8],
    claimed_size: Option<u64>,
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(claimed_size.unwrap_or(data.len() as u64));
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A Juju-format archive (no manifest, Juju's metadata keys only) around `root_tar`.
fn juju_archive(path: &Path, root_tar: &[u8]) {
    let meta = br#"{"ID":"20261124-000000.uuid","Started":"2026-11-24T00:00:00Z","Finished":"2026-11-24T00:01:00Z","Notes":"","Environment":"test-env","Machine":"0","Hostname":"a","Version":"2.9.42"}"#;
    let mut outer = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        Default::default(),
    ));
    for (name, body) in [
        ("juju-backup/metadata.json", &meta[..]),
        ("juju-backup/root.tar", root_tar),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        outer.append_data(&mut h, name, body).unwrap();
    }
    outer
        .into_inner()
        .unwrap()
        .finish()
        .unwrap()
        .flush()
        .unwrap();
}

#[test]
fn hostile_archives_are_refused_before_anything_changes() {
    use tar::EntryType::*;
    let env = Env::new(1);
    env.restore_config(&[], "");
    let b = populated_host_b(&env);
    let before = tree_state(&b, &[]);
    type Build = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "traversal",
            |t| raw_member(t, b"var/../../../etc/passwd", Regular, b"x", b"", None),
            "path traversal",
        ),
        (
            "absolute",
            |t| raw_member(t, b"/etc/passwd", Regular, b"x", b"", None),
            "absolute path",
        ),
        (
            "symlink-escape",
            |t| raw_member(t, b"var/evil", Symlink, b"", b"../../../../etc", None),
            "escapes the root",
        ),
        (
            "write-through-symlink",
            |t| {
                raw_member(t, b"var/evil", Symlink, b"", b"/etc", None);
                raw_member(t, b"var/evil/passwd", Regular, b"x", b"", None);
            },
            "would be written through symlink",
        ),
        (
            "hardlink-escape",
            |t| raw_member(t, b"var/evil", Link, b"", b"../../etc/shadow", None),
            "hardlink",
        ),
        (
            "device",
            |t| raw_member(t, b"var/sda", Block, b"", b"", None),
            "device node",
        ),
        (
            "duplicate",
            |t| {
                raw_member(t, b"var/a", Regular, b"1", b"", None);
                raw_member(t, b"var/a", Regular, b"2", b"", None);
            },
            "duplicate member",
        ),
        (
            "oversized-header",
            |t| raw_member(t, b"var/big", Regular, b"short", b"", Some(1 << 40)),
            "root.tar",
        ),
    ];
    for (name, build, want) in cases {
        let mut root_tar = Vec::new();
        build(&mut root_tar);
        root_tar.extend_from_slice(&[0u8; 1024]);
        let p = env.path(&format!("{name}.tar.gz"));
        juju_archive(&p, &root_tar);
        let out = restore(&env, &p, &b, &[]);
        assert!(!out.status.success(), "{name}: restored");
        let err = stderr(&out);
        assert!(err.contains(want), "{name}: expected `{want}` in: {err}");
        assert_eq!(tree_state(&b, &[]), before, "{name}: the target changed");
    }
}

#[test]
fn a_juju_made_archive_restores_its_files() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let mut root_tar = Vec::new();
    raw_member(
        &mut root_tar,
        b"var/lib/juju/server.pem",
        tar::EntryType::Regular,
        b"juju pem",
        b"",
        None,
    );
    root_tar.extend_from_slice(&[0u8; 1024]);
    let p = env.path("juju-made.tar.gz");
    juju_archive(&p, &root_tar);
    let show = env.run(&["show", p.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("2.9.42"));
    let b = host_b(&env);
    let out = restore(&env, &p, &b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(b.join("var/lib/juju/server.pem")).unwrap(),
        b"juju pem"
    );
}

#[test]
fn a_failure_in_the_database_step_rolls_back_to_the_exact_previous_tree() {
    let env = Env::new(1);
    // Back up with the command engine; restore with a restore command that fails.
    env.config(
        "",
        "[database]\nengine = \"command\"\ncommand = [\"sh\", \"-c\", \"echo dumped-state\"]\n\
         restore_command = [\"sh\", \"-c\", \"cat >/dev/null; echo restore broke >&2; exit 4\"]\n\
         [restore]\nstop_commands = []\nstart_commands = []\nprobe_ports = []\n",
    );
    let archive = env.backup();
    let b = populated_host_b(&env);
    let before = tree_state(&b, &[]);
    let out = restore(&env, &archive, &b, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("restore failed while restoring the database")
            && err.contains("exited with status 4"),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(
        tree_state(&b, &[]),
        before,
        "rollback did not restore the exact tree"
    );
}

/// `restore.readdress_command` tells a sqlite/command database its new address after the load,
/// with `{address}` replaced and `JUJU_BRD_ADDRESS` set; when it fails, the restore rolls back.
#[test]
fn the_database_learns_the_new_address_and_a_failure_rolls_back() {
    let env = Env::new(1);
    let marker = env.path("readdressed");
    env.restore_config(
        &[],
        &format!(
            "readdress_command = [\"sh\", \"-c\", \"echo \\\"$1 $JUJU_BRD_ADDRESS\\\" > {}\", \"sh\", \"{{address}}\"]\n",
            marker.display()
        ),
    );
    let archive = env.backup();
    let b = host_b(&env);
    let out = restore(&env, &archive, &b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "10.20.30.40 10.20.30.40\n"
    );

    env.restore_config(
        &[],
        "readdress_command = [\"sh\", \"-c\", \"echo no such table >&2; exit 3\"]\n",
    );
    let fresh = env.path("hostC");
    std::fs::create_dir_all(&fresh).unwrap();
    let before = tree_state(&fresh, &[]);
    let out = restore(&env, &archive, &fresh, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("telling the database its new address"),
        "{err}"
    );
    assert!(err.contains("no such table"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(
        tree_state(&fresh, &[]),
        before,
        "a failed restore left changes"
    );
}

/// The address restore writes into agent.conf (and sends to other machines) must be an IP address
/// or a host name: anything else is refused before the archive is even read.
#[test]
fn an_address_that_is_not_one_is_refused_before_anything_changes() {
    let env = Env::new(1);
    env.restore_config(&[], "");
    let archive = env.backup();
    let b = host_b(&env);
    let before = tree_state(&b, &[]);
    for bad in ["10.0.0.1\nstatepassword: x", "-oProxyCommand=x", "a b"] {
        let flag = format!("--address={bad}");
        let out = env.run(&[
            "restore",
            "--yes",
            &flag,
            "--target-root",
            b.to_str().unwrap(),
            archive.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            stderr(&out).contains("is not an IP address or host name"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(tree_state(&b, &[]), before);
}
