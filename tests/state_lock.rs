//! `daemon.lock` is honoured by every writer of the archive directory: `backup --offline` and
//! `prune` hold it when no daemon runs, and go through the daemon (and say so) when one does;
//! `status` reads the daemon's `/v1/status` through the typed client.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{archives, config, Daemon};
use common::{stderr, wait_until, Env, BIN};

#[test]
fn offline_backup_prune_and_status_go_through_a_running_daemon() {
    let env = Env::new(1);
    config(&env, "[retention]\nkeep_last = 1\n");
    let d = Daemon::start(&env);

    let out = env.run(&["backup", "--offline", "--notes", "by hand"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "the daemon is running (it holds the state lock); asking it for the backup instead"
        ),
        "{}",
        stderr(&out)
    );
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(std::path::Path::new(&printed).is_file(), "{printed}");
    // The daemon took it: its log has the job, and its state knows the archive.
    assert!(d.log().contains("backup complete"), "{}", d.log());

    let out = env.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("environment:   test-env"), "{text}");
    let name = std::path::Path::new(&printed)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(text.contains(&format!("last archive:  {name}")), "{text}");
    let out = env.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["archive_count"], 1);
    assert_eq!(json["state"], "idle");

    // A second archive by hand beside the daemon's, then prune through the daemon.
    std::fs::copy(
        &printed,
        env.archives().join("juju-backup-20200101-000000.tar.gz"),
    )
    .unwrap();
    let out = env.run(&["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("asking it for the prune instead"),
        "{}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("would delete  juju-backup-20200101-000000.tar.gz"),
        "{text}"
    );
    assert_eq!(archives(&env).len(), 2, "a dry run deletes nothing");
    let out = env.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("deleted       juju-backup-20200101-000000.tar.gz"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(archives(&env).len(), 1);
    assert!(d.log().contains("deleted by retention"), "{}", d.log());
}

#[test]
fn an_offline_backup_holds_the_lock_so_no_daemon_starts_beside_it() {
    let env = Env::new(1);
    // The pre hook waits for the test to let it go, so the backup is surely running.
    let gate = env.path("gate");
    config(
        &env,
        &format!(
            "[hooks]\npre = [\"sh\", \"-c\", \"touch {0}.started; while [ ! -e {0} ]; do sleep 0.05; done\"]\n",
            gate.display()
        ),
    );
    let backup = Command::new(BIN)
        .args(["backup", "--offline"])
        .env("JUJU_BRD_CONFIG", env.path("config.toml"))
        .env_remove("JUJU_ENV")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = env.path("gate.started");
    wait_until(
        Duration::from_secs(30),
        "the offline backup's pre hook",
        || started.exists(),
    );

    let daemon = Command::new(BIN)
        .arg("daemon")
        .env("JUJU_BRD_CONFIG", env.path("config.toml"))
        .output()
        .unwrap();
    assert!(!daemon.status.success());
    assert!(
        stderr(&daemon).contains("another juju-brd daemon is running")
            && stderr(&daemon).contains("or a backup or prune run by hand"),
        "{}",
        stderr(&daemon)
    );
    // A prune by hand meanwhile finds no daemon to ask and says which lock is held.
    let prune = env.run(&["prune", "--dry-run"]);
    assert!(!prune.status.success());
    assert!(
        stderr(&prune).contains("no juju-brd daemon answers"),
        "{}",
        stderr(&prune)
    );

    std::fs::write(&gate, b"").unwrap();
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(archives(&env).len(), 1);
    // The lock went with the process: a daemon starts now.
    let d = Daemon::start(&env);
    drop(d);
}
