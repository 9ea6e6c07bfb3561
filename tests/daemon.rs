//! End-to-end tests of `juju-brd daemon`: the real binary, a real Unix socket, a test
//! NOTIFY_SOCKET collecting sd_notify datagrams, real signals.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{archives, config, config_with_api, Daemon};
use common::{rt, wait_until, Env, BIN};
use juju_brd::api::client;
use juju_brd::api::types::{JobInfo, JobState, TriggerResponse};

#[test]
fn trigger_notify_and_concurrent_triggers() {
    let env = Env::new(2);
    // A slow pre hook keeps the backup running while the triggers arrive.
    config(&env, "[hooks]\npre = [\"sleep\", \"1\"]\n");
    let d = Daemon::start(&env);
    let rt = rt();

    // The socket is private to its owner.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second daemon on the same state directory refuses to start.
    let second = Command::new(BIN)
        .arg("daemon")
        .env("JUJU_BRD_CONFIG", env.path("config.toml"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another juju-brd daemon is running"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    // 50 concurrent triggers: one job, one backup.
    let socket = d.socket.clone();
    let ids: Vec<String> = rt.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let s = socket.clone();
                tokio::spawn(async move {
                    let (st, body) = client::request(&s, hyper::Method::POST, "/v1/backups", None)
                        .await
                        .unwrap();
                    assert_eq!(st, 202);
                    serde_json::from_slice::<TriggerResponse>(&body)
                        .unwrap()
                        .job
                        .id
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids
    });
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "more than one job id: {ids:?}"
    );
    // Wait for that job, then the archive verifies.
    let j = d.wait_job(&rt, &ids[0]);
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(archives(&env).len(), 1, "{:?}", archives(&env));
    let out = env.run(&["verify", archives(&env)[0].to_str().unwrap()]);
    assert!(out.status.success());
    d.wait_note("STATUS=idle, last backup ok", Duration::from_secs(5));
    d.wait_note("WATCHDOG=1", Duration::from_secs(5));
    assert!(d.count_notes("STATUS=") >= 2);

    // `juju-brd backup` asks the daemon and prints the archive path.
    let out = env.run(&["backup", "--notes", "via socket"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(PathBuf::from(&printed).is_file(), "{printed}");
    let status = d.status(&rt);
    assert_eq!(status.archive_count, 2);
    assert_eq!(status.environment, "test-env");

    // Metrics count both.
    let (_, text) = d.text(&rt, "/metrics");
    assert!(text.contains("juju_brd_backup_attempts_total 2"), "{text}");

    assert!(d.stop().success());
}

/// `promtool check metrics` accepts `body`; panics if promtool is missing.
fn promtool_check(body: &[u8]) {
    let mut p = Command::new(common::require_debian("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin.take().unwrap().write_all(body).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A live scrape after two backups, without remotes, passes `promtool check metrics` (the
/// scrape with remotes is checked in `off_host_copies_are_reported_in_status_and_metrics`).
#[test]
#[ignore = "needs promtool: Debian package prometheus"]
fn live_metrics_pass_promtool_check() {
    common::require_debian("promtool", "prometheus");
    let env = Env::new(1);
    config(&env, "");
    let d = Daemon::start(&env);
    let rt = rt();
    for _ in 0..2 {
        let (status, body) = d.request(&rt, hyper::Method::POST, "/v1/backups?wait=true");
        assert!(status.is_success(), "{}", String::from_utf8_lossy(&body));
    }
    let (_, body) = d.request(&rt, hyper::Method::GET, "/metrics");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("juju_brd_backup_attempts_total 2"), "{text}");
    promtool_check(&body);
    assert!(d.stop().success());
}

/// A remote that is down: the backup still succeeds, the failure shows in /v1/status and the
/// metrics; once the remote is back, the next backup copies both archives.
#[test]
#[ignore = "needs s3s-fs (cargo install s3s-fs@0.14.1 --locked --features binary) and promtool (Debian package prometheus)"]
fn off_host_copies_are_reported_in_status_and_metrics() {
    common::require_s3s_fs();
    common::require_debian("promtool", "prometheus");
    let env = Env::new(1);
    let port = common::free_port();
    std::fs::write(
        env.path("s3.credentials"),
        format!(
            "aws_access_key_id = {}\naws_secret_access_key = {}\n",
            common::ACCESS_KEY,
            common::SECRET_KEY
        ),
    )
    .unwrap();
    config(
        &env,
        &format!(
            "[[remote]]\nname = \"offsite\"\nendpoint = \"http://127.0.0.1:{port}\"\nbucket = \"{}\"\n\
             path_style = true\ncredentials_file = \"s3.credentials\"\nretries = 1\nretry_delay = \"20ms\"\n",
            common::BUCKET
        ),
    );
    let d = Daemon::start(&env);
    let rt = rt();
    let trigger = |d: &Daemon| {
        let (status, body) = d.request(&rt, hyper::Method::POST, "/v1/backups?wait=true");
        assert!(status.is_success(), "{}", String::from_utf8_lossy(&body));
    };
    trigger(&d);
    wait_until(
        Duration::from_secs(30),
        "the failed upload in /v1/status",
        || {
            let s = d.status(&rt);
            s.remotes[0].upload_failures == 1
        },
    );
    let s = d.status(&rt);
    let r = &s.remotes[0];
    assert_eq!((r.name.as_str(), r.pending), ("offsite", 1));
    assert!(
        r.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("offsite"),
        "{r:?}"
    );
    assert!(r.last_success.is_none());
    let (_, body) = d.request(&rt, hyper::Method::GET, "/metrics");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("juju_brd_remote_upload_failures_total{remote=\"offsite\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("juju_brd_remote_last_success_timestamp_seconds{remote=\"offsite\"} 0"),
        "{text}"
    );
    promtool_check(&body);

    let s3 = common::S3Server::start(&env.path("s3data"), port);
    trigger(&d);
    wait_until(Duration::from_secs(30), "both archives off-host", || {
        let s = d.status(&rt);
        s.remotes[0].pending == 0 && s.remotes[0].last_success.is_some()
    });
    assert_eq!(
        s3.objects("")
            .iter()
            .filter(|n| n.ends_with(".tar.gz"))
            .count(),
        2
    );
    let (_, body) = d.request(&rt, hyper::Method::GET, "/metrics");
    let text = String::from_utf8_lossy(&body).into_owned();
    let last = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("juju_brd_remote_last_success_timestamp_seconds{remote=\"offsite\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(last > 1.7e9, "{text}");
    promtool_check(&body);
    assert!(
        !d.log().contains(common::SECRET_KEY),
        "secret in the daemon's log"
    );
    assert!(d.stop().success());
}

#[test]
fn sighup_keeps_the_old_config_when_the_new_one_is_broken() {
    let env = Env::new(1);
    config(&env, "");
    let d = Daemon::start(&env);
    let good = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        format!("{good}\n[retention]\nkeep_last = \"many\"\n"),
    )
    .unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    d.wait_note("RELOADING=1", Duration::from_secs(10));
    wait_until(
        Duration::from_secs(10),
        "the rejection to be logged",
        || d.log().contains("new configuration rejected"),
    );
    assert!(d.log().contains("retention.keep_last"), "{}", d.log());
    // Still serving, with the old config (the CLI itself needs a loadable file to find the socket).
    std::fs::write(env.path("config.toml"), &good).unwrap();
    let out = env.run(&["backup"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(d.stop().success());
}

#[test]
fn sigterm_during_a_backup_leaves_a_whole_archive_or_none() {
    let env = Env::new(2);
    config(&env, "[hooks]\npre = [\"sleep\", \"2\"]\n");
    let d = Daemon::start(&env);
    let rt = rt();
    let (st, body) = d.request(&rt, hyper::Method::POST, "/v1/backups");
    assert_eq!(st, 202);
    let job = serde_json::from_slice::<TriggerResponse>(&body)
        .unwrap()
        .job;
    // SIGTERM must land during the backup (its pre hook sleeps 2 s): the daemon says it is backing
    // up, and the job is still running when the signal goes.
    d.wait_note("STATUS=backing up", Duration::from_secs(5));
    let j: JobInfo = rt.block_on(d.client().job(&job.id)).unwrap();
    assert_eq!(j.state, JobState::Running, "{j:?}");
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    let listing = env.archive_dir_listing();
    assert!(!listing.iter().any(|n| n.ends_with(".part")), "{listing:?}");
    for a in archives(&env) {
        let out = env.run(&["verify", a.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            a.display(),
            common::stderr(&out)
        );
    }
}

#[test]
fn schedule_fires_and_retention_keeps_what_the_policy_says() {
    let env = Env::new(1);
    env.config(
        "",
        &format!(
            "{}\n[api]\nsocket = \"run/juju-brd.sock\"\n[schedule]\ncron = \"*/2 * * * * *\"\n[retention]\nkeep_last = 2\n",
            env.sqlite_section()
        ),
    );
    let d = Daemon::start(&env);
    let rt = rt();
    // Two clients keep the API busy the whole time: the schedule must keep firing regardless.
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (socket, busy) = (d.socket.clone(), busy.clone());
            std::thread::spawn(move || {
                let client_rt = self::rt();
                let mut n = 0u64;
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    for path in ["/v1/status", "/v1/backups", "/metrics"] {
                        let (st, _) = client_rt
                            .block_on(client::request(&socket, hyper::Method::GET, path, None))
                            .unwrap();
                        assert!(st.is_success());
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    wait_until(Duration::from_secs(60), "four scheduled backups", || {
        let s = d.status(&rt);
        s.last_success.is_some() && d.log().matches("kind=Scheduled").count() >= 4
    });
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let requests: u64 = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(requests > 100, "the load barely ran ({requests} requests)");
    wait_until(Duration::from_secs(10), "retention to settle", || {
        archives(&env).len() == 2
    });
    assert!(d.log().contains("deleted by retention"), "{}", d.log());
    let listing = env.archive_dir_listing();
    // Every archive kept still has its sidecar; deleted ones took theirs along.
    assert_eq!(
        listing.iter().filter(|n| n.ends_with(".sha256")).count(),
        archives(&env).len(),
        "{listing:?}"
    );
    assert!(d.stop().success());
}

#[test]
fn overlapping_schedule_slots_are_skipped_and_counted() {
    let env = Env::new(1);
    // Every second, but each backup takes 3 s: slots fall on a running backup.
    env.config(
        "",
        &format!(
            "{}\n[api]\nsocket = \"run/juju-brd.sock\"\n[schedule]\ncron = \"* * * * * *\"\n[hooks]\npre = [\"sleep\", \"3\"]\n[retention]\nkeep_last = 10\n",
            env.sqlite_section()
        ),
    );
    let d = Daemon::start(&env);
    let rt = rt();
    wait_until(Duration::from_secs(30), "a skipped slot", || {
        d.metric(&rt, "juju_brd_schedule_skipped_total") >= 2.0
    });
    wait_until(Duration::from_secs(30), "a finished backup", || {
        d.log().contains("backup complete")
    });
    // Never two at once: every "started" is followed by its end before the next "started".
    let log = d.log();
    let events: Vec<&str> = log
        .lines()
        .filter_map(|l| {
            if l.contains("backup started") {
                Some("start")
            } else if l.contains("backup complete") || l.contains("backup failed") {
                Some("end")
            } else {
                None
            }
        })
        .collect();
    for pair in events.windows(2) {
        assert_ne!(pair, ["start", "start"], "two backups overlapped:\n{log}");
    }
    assert!(
        log.contains("scheduled backup skipped: a backup is already running"),
        "{log}"
    );
    assert!(d.stop().success());
}

#[test]
fn a_missed_run_is_caught_up_once_and_crash_leftovers_are_cleaned() {
    let env = Env::new(1);
    let daily = "[schedule]\ncron = \"0 3 * * *\"\ncatch_up = true\n";
    env.config(
        "",
        &format!(
            "{}\n[api]\nsocket = \"run/juju-brd.sock\"\n{daily}",
            env.sqlite_section()
        ),
    );
    // The previous daemon last ran three days ago and died during a backup.
    let state_dir = env.path("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let three_days_ago = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
    std::fs::write(
        state_dir.join("state.json"),
        format!("{{\"last_attempt\": \"{three_days_ago}\", \"running_job\": \"dead-job\"}}"),
    )
    .unwrap();
    std::fs::create_dir_all(env.archives()).unwrap();
    std::fs::write(
        env.archives()
            .join("juju-backup-20260101-030000.tar.gz.part"),
        b"half",
    )
    .unwrap();
    std::fs::create_dir_all(env.archives().join(".staging-abc.part")).unwrap();

    let d = Daemon::start(&env);
    let rt = rt();
    wait_until(Duration::from_secs(30), "the catch-up backup", || {
        d.log().contains("backup complete")
    });
    let log = d.log();
    assert!(log.contains("kind=CatchUp"), "{log}");
    assert!(log.contains("died during a backup"), "{log}");
    // The catch-up decision is made before READY=1 (the second start below relies on it): the
    // "missed" line comes before the "ready" line.
    let missed = log.find(MISSED).unwrap_or_else(|| panic!("{log}"));
    let ready = log.find(READY).unwrap_or_else(|| panic!("{log}"));
    assert!(
        missed < ready,
        "catch-up must be decided before the daemon reports ready:\n{log}"
    );
    let listing = env.archive_dir_listing();
    assert!(!listing.iter().any(|n| n.ends_with(".part")), "{listing:?}");
    // Nothing else can start a backup now: the catch-up job is done (none queued or running), and
    // the scheduler has set its next run (03:00), which it sleeps until.
    wait_until(
        Duration::from_secs(10),
        "no job and the next run set",
        || {
            let s = d.status(&rt);
            s.current_job.is_none() && s.next_run.is_some()
        },
    );
    assert_eq!(archives(&env).len(), 1, "caught up more than once");
    assert_eq!(d.log().matches("kind=CatchUp").count(), 1, "{}", d.log());
    let first = d.status(&rt);
    assert!(d.stop().success());

    // Started again right away: nothing was missed since, so no second catch-up. Catch-up is
    // decided before READY=1 (checked above), so by now it has been decided, and the log says
    // whether it found a missed run; a job it started would be queued or running.
    let d = Daemon::start(&env);
    let s = d.status(&rt);
    assert!(!d.log().contains(MISSED), "{}", d.log());
    assert!(s.current_job.is_none(), "{:?}", s.current_job);
    assert_eq!(s.last_attempt, first.last_attempt);
    assert!(!d.log().contains("kind=CatchUp"), "{}", d.log());
    assert!(d.stop().success());
    assert_eq!(archives(&env).len(), 1);
}

/// Logged when catch-up finds a scheduled run missed while the daemon was down.
const MISSED: &str = "was missed while the daemon was down";
/// Logged once the daemon has sent READY=1.
const READY: &str = "juju-brd daemon ready";

#[test]
fn the_tcp_listener_requires_the_bearer_token() {
    let env = Env::new(1);
    let port = common::free_port();
    let token = "s3cret-token-0123456789abcdef";
    std::fs::write(env.path("token"), token).unwrap();
    config_with_api(
        &env,
        &format!("tcp_listen = \"127.0.0.1:{port}\"\ntoken_file = \"token\"\n"),
        "",
    );
    let d = Daemon::start(&env);
    let get = |auth: Option<&str>| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        write!(
            s,
            "GET /v1/status HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(get(None).starts_with("HTTP/1.1 401"));
    assert!(get(Some("Bearer wrong-token-wrong-token")).starts_with("HTTP/1.1 401"));
    let ok = get(Some(&format!("Bearer {token}")));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(!d.log().contains(token), "the token reached the log");
    assert!(d.stop().success());
}

/// SIGTERM while off-host copies are being retried stops the daemon at once, cleanly; the copy is
/// left for the next backup.
#[test]
fn sigterm_interrupts_off_host_copies() {
    let env = Env::new(1);
    std::fs::write(
        env.path("s3.credentials"),
        "aws_access_key_id = a\naws_secret_access_key = b\n",
    )
    .unwrap();
    config(
        &env,
        &format!(
            "[[remote]]\nname = \"offsite\"\nendpoint = \"http://127.0.0.1:{}\"\nbucket = \"bkt\"\n\
             path_style = true\ncredentials_file = \"s3.credentials\"\nretries = 3\nretry_delay = \"30s\"\n",
            common::free_port()
        ),
    );
    let d = Daemon::start(&env);
    let rt = rt();
    let (status, body) = d.request(&rt, hyper::Method::POST, "/v1/backups?wait=true");
    assert!(status.is_success(), "{}", String::from_utf8_lossy(&body));
    wait_until(
        Duration::from_secs(30),
        "a failed upload being retried",
        || d.log().contains("upload failed; retrying"),
    );
    let asked = Instant::now();
    let st = d.stop();
    assert!(st.success(), "{st:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?} to stop",
        asked.elapsed()
    );
    assert_eq!(archives(&env).len(), 1, "the local archive is kept");
}

/// After a restart the metrics still show the last success and its archive's size (from the
/// daemon's state), so an alert on the age of the last backup does not page on every restart.
#[test]
fn the_last_success_survives_a_restart_in_the_metrics() {
    let env = Env::new(1);
    config(&env, "");
    let rt = rt();
    let d = Daemon::start(&env);
    let (code, _) = d.post(&rt, "/v1/backups?wait=true");
    assert_eq!(code, 200);
    let when = d.metric(&rt, "juju_brd_backup_last_success_timestamp_seconds");
    let size = d.metric(&rt, "juju_brd_backup_archive_size_bytes");
    assert!(when > 0.0 && size > 0.0, "{when} {size}");
    assert!(d.stop().success());
    let d = Daemon::start_logged(&env, "second.log");
    assert_eq!(
        d.metric(&rt, "juju_brd_backup_last_success_timestamp_seconds"),
        when
    );
    assert_eq!(d.metric(&rt, "juju_brd_backup_archive_size_bytes"), size);
}
