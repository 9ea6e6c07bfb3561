//! Availability on hostile and unlucky days (issue 11, items 9, 10, 12, 13, 22, 23): idle and slow
//! API clients, children that leave processes behind, a locked database at SIGTERM, absurd config
//! values, secrets in the daemon's environment. Real daemons, real sockets, real processes; every
//! wait is bounded. Figures are printed (`cargo test --test availability -- --nocapture`).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{config_with_api, Start};
use common::Env;

/// systemd's default soft limit of open files, which every daemon here runs with.
const SYSTEMD_NOFILE: u64 = 1024;

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

/// One raw HTTP/1.1 exchange on the Unix socket; the whole response, or an error after `limit`.
fn unix_request(socket: &Path, request: &str, limit: Duration) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads until the peer closes; how long that took, or `None` if it stayed open past `limit`.
fn time_to_close(s: &mut impl Read, started: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if started.elapsed() >= limit {
                    return None;
                }
            }
            Err(_) => return Some(started.elapsed()),
        }
    }
}

fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The test's own limit of open files, raised so it can hold the flood.
fn raise_own_nofile(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let new = want.min(hard);
    if soft < new {
        setrlimit(Resource::RLIMIT_NOFILE, new, hard).unwrap();
    }
    assert!(
        new >= want,
        "the hard limit of open files ({hard}) is below {want}"
    );
}

const TOKEN: &str = "availability-token-0123456789";

/// Item 9: 1,100 idle TCP connections (half of them with a started request head) against a daemon
/// whose open-file limit is systemd's default 1024. The Unix socket still answers at once, a
/// triggered backup succeeds, and the daemon closes every idle connection within its header
/// timeout (5 s on TCP) plus slack.
#[test]
fn an_idle_tcp_flood_starves_neither_the_socket_nor_the_backups() {
    raise_own_nofile(4096);
    let env = Env::new(1);
    let port = common::free_port();
    write_private(&env.path("token"), TOKEN, 0o600);
    config_with_api(
        &env,
        &format!("tcp_listen = \"127.0.0.1:{port}\"\ntoken_file = \"token\"\n"),
        "",
    );
    let mut d = Start::new(&env).nofile(SYSTEMD_NOFILE).ready();

    let flood_started = Instant::now();
    let mut flood = Vec::new();
    let mut refused = 0;
    for i in 0..1100 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
                }
                flood.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    let opened = flood_started.elapsed();

    let asked = Instant::now();
    let health = unix_request(&d.socket, &get("/healthz"), Duration::from_secs(5))
        .expect("the Unix socket answers during the flood");
    let health_time = asked.elapsed();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health_time < Duration::from_secs(2), "{health_time:?}");

    let asked = Instant::now();
    let backup = unix_request(
        &d.socket,
        "POST /v1/backups?wait=true HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(120),
    )
    .expect("the backup answers");
    let backup_time = asked.elapsed();
    assert!(
        backup.starts_with("HTTP/1.1 200") && backup.contains("\"succeeded\""),
        "{backup}\n{}",
        d.log()
    );
    let metrics = unix_request(&d.socket, &get("/metrics"), Duration::from_secs(5)).unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
    };
    let rejected = value("juju_brd_api_connections_rejected_total{listener=\"tcp\"}");
    assert!(
        value("juju_brd_api_connections{listener=\"tcp\"}") <= 64.0,
        "{metrics}"
    );
    assert!(rejected >= 1100.0 - 64.0 - refused as f64, "{metrics}");

    // Every flood connection is closed by the daemon, none is left to hold a descriptor.
    let limit = Duration::from_secs(20);
    let mut slowest = Duration::ZERO;
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let t = time_to_close(s, flood_started, limit)
            .unwrap_or_else(|| panic!("a flood connection is still open after {limit:?}"));
        slowest = slowest.max(t);
    }
    println!(
        "flood: {} connections opened in {opened:?} ({refused} refused), /healthz on the socket in \
         {health_time:?}, backup in {backup_time:?}, {rejected} closed on arrival, all closed \
         {slowest:?} after the flood began",
        flood.len()
    );
    let (st, took) = d.stop_within(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", d.log());
    println!("stopped in {took:?}");
}

/// Item 9 on the Unix socket: 1,100 idle connections there (more than its 256 places) do not lock
/// out the next client, because the idlest connection makes room for a new one; and a client with
/// a request in progress (a backup with `?wait=true`) is never the one closed.
#[test]
fn an_idle_unix_flood_does_not_lock_out_the_next_client() {
    raise_own_nofile(4096);
    let env = Env::new(1);
    // A slow pre hook keeps the waiting request in progress while the flood runs.
    config_with_api(&env, "", "[hooks]\npre = [\"sleep\", \"4\"]\n");
    let d = Start::new(&env).nofile(SYSTEMD_NOFILE).ready();
    let socket = d.socket.clone();
    let waiting = std::thread::spawn(move || {
        unix_request(
            &socket,
            "POST /v1/backups?wait=true HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            Duration::from_secs(120),
        )
    });
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = unix_request(&d.socket, &get("/v1/status"), Duration::from_secs(5)).unwrap();
        if s.contains("\"state\":\"backing-up\"") {
            break;
        }
        assert!(Instant::now() < end, "the backup did not start: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..1100 {
        if let Ok(mut s) = UnixStream::connect(&d.socket) {
            if i % 2 == 0 {
                let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n");
            }
            flood.push(s);
        }
    }
    let opened = flood_started.elapsed();
    // Let the flood grow idle enough to be evictable, then ask.
    std::thread::sleep(Duration::from_millis(1200));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        let health = unix_request(&d.socket, &get("/healthz"), Duration::from_secs(5))
            .expect("the Unix socket answers during its own flood");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        slowest = slowest.max(asked.elapsed());
    }
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    let backup = waiting
        .join()
        .unwrap()
        .expect("the waiting client is answered");
    assert!(
        backup.starts_with("HTTP/1.1 200") && backup.contains("\"succeeded\""),
        "{backup}\n{}",
        d.log()
    );
    println!(
        "unix flood: {} connections in {opened:?}; /healthz answered in at most {slowest:?}; the \
         waiting backup request was kept",
        flood.len()
    );
}

/// Items 9 and 23: a request head sent a byte a second and a body trickled a byte every half
/// second are both cut off within their deadlines although bytes keep coming (the body gets 408
/// and never reaches the handler); an unauthenticated TCP peer is answered 401 and its
/// connection closed at once; the Bearer scheme is case-insensitive; a token file readable by
/// every user is warned about.
#[test]
fn slow_and_unauthenticated_clients_are_cut_off() {
    let env = Env::new(1);
    let port = common::free_port();
    write_private(&env.path("token"), TOKEN, 0o644);
    config_with_api(
        &env,
        &format!("tcp_listen = \"127.0.0.1:{port}\"\ntoken_file = \"token\"\n"),
        "",
    );
    let d = Start::new(&env).nofile(SYSTEMD_NOFILE).ready();
    assert!(
        d.log().contains("api.token_file") && d.log().contains("readable by every local user"),
        "{}",
        d.log()
    );

    let socket = d.socket.clone();
    let slow_head = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let head = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut buf = [0u8; 512];
        for byte in head.iter().cycle() {
            if s.write_all(&[*byte]).is_err() {
                return started.elapsed();
            }
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => return started.elapsed(),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return started.elapsed(),
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "a slow request head is still served after 30 s"
            );
        }
        unreachable!()
    });
    let socket = d.socket.clone();
    let slow_body = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        s.write_all(b"POST /v1/backups HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"notes\":\"")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let _ = s.write_all(b"a");
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                match s.read(&mut buf) {
                    Ok(0) => {
                        return (
                            started.elapsed(),
                            String::from_utf8_lossy(&got).into_owned(),
                        )
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        return (
                            started.elapsed(),
                            String::from_utf8_lossy(&got).into_owned(),
                        )
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "a trickled body is still read after 30 s"
            );
        }
    });

    // Unauthenticated TCP: 401 and the connection closed, without waiting for an idle timeout.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let closed = time_to_close(&mut s, started, Duration::from_secs(4))
        .expect("the connection of an unauthenticated peer is closed");
    assert!(closed < Duration::from_secs(2), "{closed:?}");
    // Any spelling of the scheme.
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{scheme}: {out}");
    }

    let head_closed = slow_head.join().unwrap();
    let (body_closed, body_response) = slow_body.join().unwrap();
    assert!(
        head_closed >= Duration::from_secs(9) && head_closed < Duration::from_secs(14),
        "slow head closed after {head_closed:?}"
    );
    assert!(
        body_response.starts_with("HTTP/1.1 408"),
        "{body_response:?}"
    );
    assert!(body_closed < Duration::from_secs(14), "{body_closed:?}");
    let status = unix_request(&d.socket, &get("/v1/status"), Duration::from_secs(5)).unwrap();
    assert!(
        status.contains("\"current_job\":null") && status.contains("\"last_attempt\":null"),
        "the trickled request reached the handler: {status}"
    );
    println!(
        "slow head closed after {head_closed:?}, trickled body answered 408 and closed after \
         {body_closed:?}, unauthenticated TCP peer closed after {closed:?}"
    );
}

/// Item 10: a hook or dump command that leaves a background child holding its output does not
/// hold the backup; the child is stopped with its group. A hook whose child keeps it waiting is
/// stopped by the hook timeout, and the post hook still runs.
#[test]
fn background_children_of_hooks_and_dumps_never_hold_a_backup() {
    let env = Env::new(1);
    let pids = env.path("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let leave = |name: &str, then: &str| -> String {
        format!(
            "[\"sh\", \"-c\", \"sleep 600 & echo $! > {}/{name}; {then}\"]",
            pids.display()
        )
    };
    env.config(
        "",
        &format!(
            "[database]\nengine = \"command\"\ncommand = {}\n[hooks]\npre = {}\npost = {}\ntimeout = \"30s\"\n",
            leave("dump", "echo dumped"),
            leave("pre", "echo pre"),
            leave("post", "echo post"),
        ),
    );
    let started = Instant::now();
    let out = env
        .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(took < Duration::from_secs(20), "{took:?}");
    for name in ["pre", "dump", "post"] {
        let pid: i32 = std::fs::read_to_string(pids.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(gone(pid), "the {name} command's background child survived");
    }

    // The hook waits for its child: the timeout stops both, and post still runs.
    let marker = env.path("post-ran");
    env.config(
        "",
        &format!(
            "[hooks]\npre = {}\npost = [\"touch\", \"{}\"]\ntimeout = \"1s\"\n",
            leave("waiting", "wait"),
            marker.display()
        ),
    );
    let started = Instant::now();
    let out = env
        .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
        .unwrap();
    let timed_out = started.elapsed();
    assert!(!out.status.success());
    assert!(
        common::stderr(&out).contains("timed out after 1s"),
        "{}",
        common::stderr(&out)
    );
    assert!(timed_out < Duration::from_secs(10), "{timed_out:?}");
    assert!(marker.exists(), "the post hook did not run");
    let pid: i32 = std::fs::read_to_string(pids.join("waiting"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid), "the waiting hook's child survived the timeout");
    println!("backup with three background children: {took:?}; 1 s hook timeout: {timed_out:?}");
}

/// Whether `pid` is gone (or a zombie awaiting its reaper) within a few seconds.
fn gone(pid: i32) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Item 22: hooks and dump commands see a scrubbed environment (PATH, HOME, locale...) plus the
/// variables of their `environment_file`, never the daemon's secrets or systemd's sockets.
#[test]
fn children_never_see_the_daemons_secrets() {
    let env = Env::new(1);
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    write_private(&env.path("db.env"), "DUMP_USER=juju\n", 0o600);
    write_private(&env.path("hooks.env"), "HOOK_TARGET=controller-0\n", 0o600);
    let hook_env = env.path("hook.env");
    let dump_env = env.path("dump.env");
    env.config(
        "",
        &format!(
            "[database]\nengine = \"command\"\ncommand = [\"sh\", \"-c\", \"env > {}; echo dumped\"]\n\
             environment_file = \"db.env\"\n[hooks]\npre = [\"sh\", \"-c\", \"env > {}\"]\n\
             environment_file = \"hooks.env\"\n",
            dump_env.display(),
            hook_env.display()
        ),
    );
    let out = env
        .run_bounded_with(
            &[],
            &[
                ("AWS_SECRET_ACCESS_KEY", secret),
                ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"),
                ("NOTIFY_SOCKET", "/run/systemd/notify"),
                ("LC_TIME", "C.UTF-8"),
                ("TZ", "UTC"),
            ],
            &["backup", "--offline"],
            Duration::from_secs(60),
        )
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    for (file, own) in [
        (&hook_env, "HOOK_TARGET=controller-0"),
        (&dump_env, "DUMP_USER=juju"),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let names: Vec<&str> = text.lines().filter_map(|l| l.split('=').next()).collect();
        assert!(!text.contains(secret), "{}: {text}", file.display());
        for leaked in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "NOTIFY_SOCKET",
            "JUJU_BRD_CONFIG",
        ] {
            assert!(!names.contains(&leaked), "{leaked} in {}", file.display());
        }
        for kept in ["PATH", "LC_TIME", "TZ"] {
            assert!(
                names.contains(&kept),
                "{kept} missing from {}",
                file.display()
            );
        }
        assert!(text.lines().any(|l| l == own), "{own} missing: {text}");
    }
}

/// Item 12: with the SQLite database exclusively locked by another process, SIGTERM during the
/// dump stops the daemon after the 60 s grace for a running backup, well inside the unit's
/// TimeoutStopSec=120s, with no partial archive.
#[test]
fn sigterm_stops_the_daemon_while_the_database_is_locked() {
    let env = Env::new(1);
    config_with_api(&env, "", "");
    let _lock = lock_exclusively(&env.root().join("var/lib/juju/db/state.db"));
    let mut d = Start::new(&env).nofile(SYSTEMD_NOFILE).ready();
    let accepted = unix_request(
        &d.socket,
        "POST /v1/backups HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(accepted.starts_with("HTTP/1.1 202"), "{accepted}");
    let end = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("database is locked") {
        assert!(Instant::now() < end, "the dump never waited:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, took) = d.stop_within(Duration::from_secs(110));
    assert!(st.success(), "{st:?}\n{}", d.log());
    assert!(took < Duration::from_secs(70), "{took:?}");
    assert!(d.log().contains("cancelling it"), "{}", d.log());
    let listing = env.archive_dir_listing();
    assert!(
        !listing
            .iter()
            .any(|n| n.ends_with(".part") || n.ends_with(".tar.gz")),
        "{listing:?}"
    );
    println!("stopped {took:?} after SIGTERM with the database locked");
}

/// A connection holding an exclusive lock on `db` until dropped.
fn lock_exclusively(db: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
         CREATE TABLE IF NOT EXISTS availability_probe (x); \
         INSERT INTO availability_probe VALUES (1);",
    )
    .unwrap();
    c
}

/// Item 12, the engine itself: cancellation is honoured within moments while the lock is held,
/// and an error that retrying cannot fix fails at once with SQLite's message, not after the 30
/// minute timeout.
#[test]
fn the_sqlite_dump_honours_cancel_and_fails_fast() {
    use juju_brd::db::{sqlite::SqliteEngine, DbError, Engine};
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new(1);
    let db = env.root().join("var/lib/juju/db/state.db");
    let engine = SqliteEngine {
        path: db.clone(),
        timeout: Duration::from_secs(30 * 60),
        inventory_query: None,
    };
    let lock = lock_exclusively(&db);
    let cancel = AtomicBool::new(false);
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            cancel.store(true, Ordering::Relaxed);
        });
        engine.dump(out.path(), &cancel)
    });
    let cancelled_after = started.elapsed();
    assert!(
        matches!(result, Err(DbError::Cancelled { .. })),
        "{result:?}"
    );
    assert!(
        cancelled_after < Duration::from_secs(3),
        "{cancelled_after:?}"
    );

    // With a short timeout the lock is reported as such.
    let short = SqliteEngine {
        path: db.clone(),
        timeout: Duration::from_secs(1),
        inventory_query: None,
    };
    let out = tempfile::tempdir().unwrap();
    let e = short.dump(out.path(), &AtomicBool::new(false)).unwrap_err();
    assert!(e.to_string().contains("stayed locked"), "{e}");
    drop(lock);

    // Not a database: fails at once.
    let junk = env.path("junk.db");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    let engine = SqliteEngine {
        path: junk,
        timeout: Duration::from_secs(30 * 60),
        inventory_query: None,
    };
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let e = engine
        .dump(out.path(), &AtomicBool::new(false))
        .unwrap_err();
    let failed_after = started.elapsed();
    assert!(e.to_string().contains("not a database"), "{e}");
    assert!(failed_after < Duration::from_secs(3), "{failed_after:?}");
    println!("cancelled after {cancelled_after:?}; not a database: failed after {failed_after:?}");
}

/// Item 13: an absurd duration is refused by key and line by `check-config` and at daemon start;
/// sent by SIGHUP it is rejected and the running schedule kept.
#[test]
fn absurd_config_values_are_refused_and_never_reach_the_scheduler() {
    let env = Env::new(1);
    let good = |jitter: &str| {
        env.config(
            "",
            &format!(
                "{}\n[api]\nsocket = \"run/juju-brd.sock\"\nsocket_mode = \"0600\"\n\n[schedule]\ncron = \"0 3 * * *\"\njitter = \"{jitter}\"\n",
                env.sqlite_section()
            ),
        )
    };
    good("99999999999d");
    let text = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let line = text.lines().position(|l| l.starts_with("jitter")).unwrap() + 1;
    let out = env
        .run_bounded(&["check-config"], Duration::from_secs(20))
        .unwrap();
    assert!(!out.status.success());
    let want = format!(":{line}: schedule.jitter: ");
    assert!(
        common::stderr(&out).contains(&want) && common::stderr(&out).contains("maximum of 1day"),
        "{}",
        common::stderr(&out)
    );
    // Refused: exits with a failure, saying why.
    let err = Start::new(&env).refused(Duration::from_secs(20));
    assert!(err.contains(&want), "{err}");

    good("10m");
    let d = Start::new(&env).nofile(SYSTEMD_NOFILE).ready();
    let next_run = || -> String {
        let s = unix_request(&d.socket, &get("/v1/status"), Duration::from_secs(5)).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(s.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        v["next_run"].as_str().unwrap_or_default().to_string()
    };
    let before = next_run();
    assert!(!before.is_empty());
    good("99999999999d");
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let end = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("new configuration rejected") {
        assert!(Instant::now() < end, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("schedule.jitter"), "{}", d.log());
    assert_eq!(next_run(), before, "the schedule changed");
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// Item 9, the response side: a client that asks for an archive and stops reading is cut off once
/// the daemon's writes stall for 30 s, so it cannot hold its place for ever.
#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let env = Env::new(1);
    // 8 MiB that do not compress, so the archive is far larger than the sockets' buffers.
    let mut noise = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(env.root().join("var/lib/juju/tools/noise.bin"), noise).unwrap();
    config_with_api(&env, "", "");
    let d = Start::new(&env).nofile(SYSTEMD_NOFILE).ready();
    let backup = unix_request(
        &d.socket,
        "POST /v1/backups?wait=true HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        Duration::from_secs(120),
    )
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(backup.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let name = v["job"]["archive"]["name"].as_str().unwrap().to_string();
    let size = v["job"]["archive"]["size"].as_u64().unwrap();
    assert!(
        size > 4 << 20,
        "the archive ({size} bytes) fits in socket buffers"
    );
    let open_connections = || -> f64 {
        let m = unix_request(&d.socket, &get("/metrics"), Duration::from_secs(5)).unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("juju_brd_api_connections{listener=\"unix\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };

    let mut stalled = UnixStream::connect(&d.socket).unwrap();
    write!(
        stalled,
        "GET /v1/backups/{name}/archive HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let asked = Instant::now();
    // Open: the stalled download and the metrics request itself.
    let end = Instant::now() + Duration::from_secs(10);
    while open_connections() < 2.0 {
        assert!(Instant::now() < end, "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let end = Instant::now() + Duration::from_secs(60);
    while open_connections() > 1.0 {
        assert!(
            Instant::now() < end,
            "a client that stopped reading is still served after 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let cut_after = asked.elapsed();
    assert!(cut_after >= Duration::from_secs(25), "{cut_after:?}");
    let mut got = Vec::new();
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stalled.read_to_end(&mut got);
    assert!((got.len() as u64) < size, "the whole archive was sent");
    println!(
        "a stalled download of {size} bytes was cut after {cut_after:?} ({} bytes sent)",
        got.len()
    );
}
