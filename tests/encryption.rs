//! Encrypted archives end to end: keys from the real `age-keygen`, decryption by the real `age`,
//! and a planted secret that must never appear in plaintext anywhere the backup wrote.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, system_untar, tree_state, Env};

/// A new age key pair from `age-keygen`: (public recipient, identity file).
fn keygen(env: &Env, name: &str) -> (String, PathBuf) {
    let path = env.path(name);
    let out = Command::new(common::require_debian("age-keygen", "age"))
        .arg("-o")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key as a comment")
        .to_string();
    (public, path)
}

/// Config for an encrypted backup of the fixture with a secret planted in server.pem; restore
/// settings for an empty host B with nothing to probe, stop or start.
fn encrypted_env(env: &Env, recipient: &str) -> String {
    let secret = format!("PLANTED-SECRET-{}", uuid::Uuid::new_v4().simple());
    let pem = env.root().join("var/lib/juju/server.pem");
    let mut text = std::fs::read_to_string(&pem).unwrap();
    text.push_str(&secret);
    text.push('\n');
    std::fs::write(&pem, text).unwrap();
    env.config(
        "",
        &format!(
            "{}\n[encryption]\nrecipients = [\"{recipient}\"]\n\
             [restore]\nstop_commands = []\nstart_commands = []\nprobe_ports = []\n",
            env.sqlite_section()
        ),
    );
    secret
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path())
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

fn backup_with_tmpdir(env: &Env, tmp: &Path) -> PathBuf {
    std::fs::create_dir_all(tmp).unwrap();
    let out = Command::new(common::BIN)
        .args(["backup", "--offline"])
        .env("JUJU_BRD_CONFIG", env.path("config.toml"))
        .env("TMPDIR", tmp)
        .env_remove("JUJU_ENV")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
}

#[test]
#[ignore = "needs age, age-keygen: Debian package age"]
fn encrypted_round_trip_with_the_age_tool_and_restore() {
    let age = common::require_debian("age", "age");
    common::require_debian("age-keygen", "age");
    let env = Env::new(2);
    let (public, identity) = keygen(&env, "id.txt");
    let secret = encrypted_env(&env, &public);
    let tmp = env.path("tmp");
    let archive = backup_with_tmpdir(&env, &tmp);
    let name = archive.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with(".tar.gz.age"), "{name}");
    // An age stream, not gzip: (gzip alone would hide the secret's bytes too, so this is the
    // check that the archive itself is sealed; the search below covers the plaintext staging.)
    let head = std::fs::read(&archive).unwrap();
    assert!(
        head.starts_with(b"age-encryption.org/v1\n-> X25519 "),
        "not an age file"
    );

    // The secret is nowhere in plaintext: not in the archive, its sidecar, the state directory
    // or any temp file the backup left.
    for dir in [env.archives(), env.path("state"), tmp.clone()] {
        let hits = files_containing(&dir, secret.as_bytes());
        assert!(hits.is_empty(), "plaintext secret found in {hits:?}");
    }
    assert_eq!(
        env.archive_dir_listing(),
        vec![name.clone(), format!("{name}.sha256")]
    );

    // The sidecar checks with sha256sum and carries what listing needs.
    let sidecar = std::fs::read_to_string(env.archives().join(format!("{name}.sha256"))).unwrap();
    assert!(
        sidecar.contains("\"environment\":\"test-env\""),
        "{sidecar}"
    );
    assert!(sidecar.contains("\"encrypted\":true"), "{sidecar}");
    let st = Command::new("sha256sum")
        .args(["-c", "--strict"])
        .arg(format!("{name}.sha256"))
        .current_dir(env.archives())
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", stderr(&st));
    let list = env.run(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["encrypted"], true);
    assert_eq!(listed[0]["environment"], "test-env");
    assert_eq!(listed[0]["verification"], "verified", "{listed}");

    // verify and show need the identity, and say so.
    let a = archive.to_str().unwrap();
    let out = env.run(&["verify", a]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--identity"), "{}", stderr(&out));
    let id = identity.to_str().unwrap();
    let out = env.run(&["verify", "--identity", id, a]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["show", "--identity", id, a]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("test-env"));

    // The standard age tool decrypts it into the archive tar and Juju read.
    let plain = env.path("plain.tar.gz");
    let out = Command::new(age)
        .arg("-d")
        .arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg(&plain)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "age -d: {}", stderr(&out));
    let out_dir = env.path("out");
    system_untar(&plain, &out_dir, &[]);
    let inner = env.path("inner");
    system_untar(&out_dir.join("juju-backup/root.tar"), &inner, &[]);
    assert_eq!(
        std::fs::read(inner.join("var/lib/juju/server.pem")).unwrap(),
        std::fs::read(env.root().join("var/lib/juju/server.pem")).unwrap()
    );

    // Restore straight from the encrypted archive.
    let b = env.path("hostB");
    std::fs::create_dir_all(&b).unwrap();
    let out = env.restore_into(&b, &["--identity", id, a]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(b.join("var/lib/juju/server.pem")).unwrap(),
        std::fs::read(env.root().join("var/lib/juju/server.pem")).unwrap()
    );
}

#[test]
#[ignore = "needs age-keygen: Debian package age"]
fn a_wrong_or_missing_identity_is_refused_and_changes_nothing() {
    common::require_debian("age-keygen", "age");
    let env = Env::new(1);
    let (public, _) = keygen(&env, "right.txt");
    let (_, wrong) = keygen(&env, "wrong.txt");
    let secret = encrypted_env(&env, &public);
    let archive = env.backup();
    let a = archive.to_str().unwrap();
    let w = wrong.to_str().unwrap();

    let out = env.run(&["verify", "--identity", w, a]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("none of the identities in"), "{err}");
    assert!(!err.contains(&secret));
    let out = env.run(&["show", "--identity", w, a]);
    assert!(!out.status.success());

    // Restore is refused before anything on host B changes, with and without an identity.
    let b = env.path("hostB");
    std::fs::create_dir_all(b.join("var/lib/juju")).unwrap();
    std::fs::write(b.join("var/lib/juju/keep-me"), "old").unwrap();
    let before = tree_state(&b, &[]);
    for extra in [vec!["--identity", w], vec![]] {
        let mut args = extra;
        args.push(a);
        let out = env.restore_into(&b, &args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("none of the identities") || err.contains("--identity"),
            "{err}"
        );
        assert_eq!(tree_state(&b, &[]), before, "host B changed");
    }
    // An identity file that is not one is named, its contents are not echoed.
    let junk = env.path("junk.txt");
    std::fs::write(&junk, format!("{secret}\n")).unwrap();
    let out = env.run(&["verify", "--identity", junk.to_str().unwrap(), a]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("junk.txt") && !err.contains(&secret), "{err}");
}
