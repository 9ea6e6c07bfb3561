//! Off-host copies against a real S3 server on loopback: `s3s-fs`, installed by `./test.sh`
//! (`cargo install s3s-fs@0.14.1 --locked --features binary`). The tests that need it are
//! ignored; the config checks run anywhere.
mod common;

use std::path::PathBuf;

use common::{free_port, stderr, Env, S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

/// Config for the fixture with one remote `offsite` on `port`, credentials in a 0600 file.
fn remote_config(env: &Env, port: u16, remote_extra: &str, top: &str) {
    let cred = env.path("s3.credentials");
    std::fs::write(
        &cred,
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    env.config(
        top,
        &format!(
            "{}\n[[remote]]\nname = \"offsite\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
             bucket = \"{BUCKET}\"\nprefix = \"prod/ctl\"\npath_style = true\n\
             credentials_file = \"s3.credentials\"\nretries = 1\nretry_delay = \"50ms\"\n{remote_extra}\n\
             [restore]\nstop_commands = []\nstart_commands = []\nprobe_ports = []\n",
            env.sqlite_section()
        ),
    );
}

fn backup_verbose(env: &Env) -> (PathBuf, String) {
    let out = env.run(&["--verbose", "backup", "--offline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = String::from_utf8(out.stdout.clone()).unwrap();
    (PathBuf::from(path.lines().last().unwrap()), stderr(&out))
}

#[test]
#[ignore = "needs s3s-fs: cargo install s3s-fs@0.14.1 --locked --features binary"]
fn a_backup_is_copied_read_back_listed_and_restored_from_the_bucket() {
    common::require_s3s_fs();
    let env = Env::new(2);
    let s3 = S3Server::start(&env.path("s3data"), free_port());
    remote_config(&env, s3.port, "", "");
    let (archive, log) = backup_verbose(&env);
    let name = archive.file_name().unwrap().to_str().unwrap().to_string();

    // Byte for byte on the server, sidecar beside it.
    let key = format!("prod/ctl/{name}");
    assert_eq!(
        std::fs::read(s3.object(&key)).unwrap(),
        std::fs::read(&archive).unwrap()
    );
    assert_eq!(
        std::fs::read(s3.object(&format!("{key}.sha256"))).unwrap(),
        std::fs::read(archive.with_file_name(format!("{name}.sha256"))).unwrap()
    );
    let ledger = std::fs::read_to_string(env.path("state/replicated.json")).unwrap();
    assert!(
        ledger.contains(&name) && ledger.contains("offsite"),
        "{ledger}"
    );
    // The secret never shows, even in debug logs.
    assert!(!log.contains(SECRET_KEY), "secret in the log");

    let out = env.run(&["list", "--remote", "offsite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&name) && listed.contains(&format!("s3://{BUCKET}/{key}")),
        "{listed}"
    );

    // Lose the local copy; restore from the bucket, by remote name and by s3:// URL.
    std::fs::remove_file(&archive).unwrap();
    std::fs::remove_file(archive.with_file_name(format!("{name}.sha256"))).unwrap();
    for (i, how) in [
        vec!["--remote", "offsite", name.as_str()],
        vec![&format!("s3://{BUCKET}/{key}")],
    ]
    .iter()
    .enumerate()
    {
        let b = env.path(&format!("hostB{i}"));
        std::fs::create_dir_all(&b).unwrap();
        let args: Vec<&str> = how.iter().map(|s| &**s).collect();
        let out = env.restore_into(&b, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stderr(&out).contains(SECRET_KEY));
        assert_eq!(
            std::fs::read(b.join("var/lib/juju/server.pem")).unwrap(),
            std::fs::read(env.root().join("var/lib/juju/server.pem")).unwrap()
        );
    }
    // The download went through verification: it sits in the archive directory, whole.
    let out = env.run(&["verify", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
#[ignore = "needs s3s-fs: cargo install s3s-fs@0.14.1 --locked --features binary"]
fn unreachable_remote_pins_local_archives_until_they_are_copied() {
    common::require_s3s_fs();
    let env = Env::new(1);
    let port = free_port();
    remote_config(&env, port, "", "");
    // keep_last = 1 locally; nothing may go while the remote is down.
    let text = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("{text}\n[retention]\nkeep_last = 1\n"),
    )
    .unwrap();

    let mut names = Vec::new();
    for i in 0..3 {
        let out = env.run(&["backup", "--offline"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("not every archive reached remote `offsite`"),
            "{err}"
        );
        assert!(!err.contains(SECRET_KEY));
        names.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        let out = env.run(&["prune"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let pruned = String::from_utf8_lossy(&out.stdout).into_owned();
        // From the second backup on, keep_last = 1 alone would delete the older ones.
        assert_eq!(
            pruned.matches("not yet copied to remote offsite").count(),
            i,
            "{pruned}"
        );
    }
    let archives = |env: &Env| {
        env.archive_dir_listing()
            .into_iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        archives(&env).len(),
        3,
        "an archive not yet off-host was deleted"
    );

    // The remote comes back: the next backup copies all four, then retention may act.
    let s3 = S3Server::start(&env.path("s3data"), port);
    let out = env.run(&["backup", "--offline"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        s3.objects("prod/ctl")
            .iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .count(),
        4
    );
    let out = env.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(archives(&env).len(), 1);
}

#[test]
#[ignore = "needs s3s-fs: cargo install s3s-fs@0.14.1 --locked --features binary"]
fn each_remote_prunes_with_its_own_policy() {
    common::require_s3s_fs();
    let env = Env::new(1);
    let s3 = S3Server::start(&env.path("s3data"), free_port());
    remote_config(&env, s3.port, "[remote.retention]\nkeep_last = 2\n", "");
    for _ in 0..4 {
        backup_verbose(&env);
    }
    // Oldest first, as the archives' names order them (`-N` after the bare name of a second).
    let by_age = |mut v: Vec<String>| {
        v.sort_by_key(|n| juju_brd::archive::name::ArchiveName::parse(n));
        v
    };
    let on_remote: Vec<String> = by_age(
        s3.objects("prod/ctl")
            .into_iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .collect(),
    );
    let local: Vec<String> = by_age(
        env.archive_dir_listing()
            .into_iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .collect(),
    );
    assert_eq!(local.len(), 4, "no local policy: all kept");
    assert_eq!(
        on_remote,
        local[2..].to_vec(),
        "the remote keeps its newest two"
    );
    assert_eq!(
        s3.objects("prod/ctl")
            .iter()
            .filter(|n| n.ends_with(".sha256"))
            .count(),
        2,
        "sidecars go with their archives"
    );
}

#[test]
fn bad_remote_config_is_named_and_credentials_are_never_echoed() {
    let env = Env::new(1);
    for (remote, want) in [
        ("name = \"a b\"\nbucket = \"xyz\"\n", "remote[0].name"),
        ("name = \"a\"\nbucket = \"\"\n", "remote[0].bucket"),
        ("name = \"a\"\nbucket = \"b\"\n", "not a bucket name"),
        (
            "name = \"a\"\nbucket = \"xyz\"\nendpoint = \"127.0.0.1:9000\"\n",
            "remote[0].endpoint",
        ),
        (
            "name = \"a\"\nbucket = \"xyz\"\npart_size = \"1MiB\"\n",
            "remote[0].part_size",
        ),
        (
            "name = \"a\"\nbucket = \"xyz\"\nbukket = \"y\"\n",
            "did you mean `bucket`",
        ),
    ] {
        env.config("", &format!("[[remote]]\n{remote}"));
        let out = env.run(&["check-config"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(want) && err.contains("config.toml:"),
            "{want}: {err}"
        );
    }
    // A credentials file without the secret: named, value not echoed.
    std::fs::write(
        env.path("half.cred"),
        format!("aws_access_key_id = {ACCESS_KEY}\n"),
    )
    .unwrap();
    env.config(
        "",
        &format!(
            "{}[[remote]]\nname = \"a\"\nbucket = \"xyz\"\nendpoint = \"http://127.0.0.1:1\"\ncredentials_file = \"half.cred\"\n",
            env.sqlite_section()
        ),
    );
    let out = env.run(&["list", "--remote", "a"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("half.cred has no `aws_secret_access_key`"),
        "{err}"
    );
    assert!(!err.contains(ACCESS_KEY), "{err}");
}
