//! Nothing silently lost, nothing hung (issue 11, items 11, 14-19): the tree changing under a
//! backup, archives whose names lie about their date, bit rot, oversized notes, a socket path
//! that names someone's file, and an archive directory inside the backed-up tree. Real processes,
//! real files, real sockets; every wait is bounded.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{config, config_at, Daemon, Start};
use common::{stderr, Env};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The members of an archive's root.tar, as `tar` lists them.
fn root_members(archive: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .args(["-c", "tar -xzOf \"$0\" juju-backup/root.tar | tar -tf -"])
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "listing {}", archive.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

/// One member of an archive's root.tar, read with the system tar.
fn root_member(archive: &Path, member: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .args([
            "-c",
            "tar -xzOf \"$0\" juju-backup/root.tar | tar -xOf - \"$1\"",
        ])
        .arg(archive)
        .arg(member)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading {member} from {}",
        archive.display()
    );
    out.stdout
}

fn archive_path(out: &Output) -> PathBuf {
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("archive path printed"),
    )
}

// ---- item 11: a FIFO (socket, device, symlink) swapped in between stat and open ----

/// What a flipping path turns into between our `lstat` and our `open`.
enum Odd {
    Fifo,
    Socket,
    Symlink,
    Device,
}

fn make_odd(path: &Path, kind: &Odd, link_target: &Path) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    match kind {
        Odd::Fifo => nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)).unwrap(),
        Odd::Socket => {
            // The socket file stays after the listener is gone.
            drop(std::os::unix::net::UnixListener::bind(path).unwrap());
        }
        Odd::Symlink => std::os::unix::fs::symlink(link_target, path).unwrap(),
        // /dev/null's numbers: harmless if anything did open it.
        Odd::Device => mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(1, 3),
        )
        .unwrap(),
    }
}

/// Turns each of `paths` alternately into a new regular file and a new `kind` thing (each made
/// beside it in `spares` and renamed over it, so every regular file is a fresh inode that no
/// later swap touches) until stopped; returns how many swaps it made.
fn flipper(
    paths: Vec<(PathBuf, Odd)>,
    spares: PathBuf,
    link_target: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (i, (live, kind)) in paths.iter().enumerate() {
                let spare = spares.join(format!("next-{i}"));
                let _ = std::fs::remove_file(&spare);
                if n % 2 == 0 {
                    make_odd(&spare, kind, &link_target);
                } else {
                    std::fs::write(&spare, format!("regular file {i}\n")).unwrap();
                }
                std::fs::rename(&spare, live).unwrap();
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        n * paths.len() as u64
    })
}

/// The race made wide: strace holds every `open` of the flipping paths for 20 ms, so the path
/// `lstat` saw as a regular file is, about half the time, something else when it is opened.
#[test]
#[ignore = "needs strace: Debian package strace"]
fn a_fifo_socket_device_or_symlink_swapped_in_between_stat_and_open_never_hangs_a_backup() {
    let strace = common::require_debian("strace", "strace");
    let env = Env::new(1);
    env.config("", "");
    let dir = env.root().join("var/lib/juju/agents/machine-0");
    let spares = env.path("spares");
    std::fs::create_dir_all(&spares).unwrap();
    // Dangling: strace resolves a `-P` path that is a symlink when it starts, and the link
    // itself is what matters (a link to a FIFO is refused by O_NOFOLLOW all the same).
    let link_target = env.path("nowhere");
    let mut kinds = vec![Odd::Fifo, Odd::Socket, Odd::Symlink];
    if is_root() {
        kinds.push(Odd::Device);
    }
    let mut wrapper: Vec<String> = [
        strace.display().to_string(),
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-e".into(),
        "trace=open,openat,openat2".into(),
        "-e".into(),
        "inject=open,openat,openat2:delay_enter=20000".into(),
    ]
    .into();
    let mut paths = Vec::new();
    for (k, kind) in kinds.into_iter().enumerate() {
        let live = dir.join(format!("flip-{k}.conf"));
        std::fs::write(&live, format!("regular file {k}\n")).unwrap();
        wrapper.push("-P".into());
        wrapper.push(live.display().to_string());
        paths.push((live, kind));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = flipper(paths, spares, link_target, stop.clone());

    // At least a dozen backups, and more (up to 60) until the race has been hit three times: on a
    // loaded machine the injected delay lands in the window less often.
    let (min_rounds, max_rounds, min_hits) = (12, 60, 3);
    let mut rounds = 0;
    let (mut looked_again, mut skipped) = (0, 0);
    let mut failure = None;
    for round in 0..max_rounds {
        if round >= min_rounds && looked_again >= min_hits {
            break;
        }
        rounds += 1;
        match env.run_bounded_with(
            &wrapper,
            &[],
            &["backup", "--offline"],
            Duration::from_secs(60),
        ) {
            Ok(out) if out.status.success() => {
                let err = stderr(&out);
                looked_again += err.matches("replaced between stat and open").count();
                skipped += err
                    .matches("not a regular file, directory or symlink; skipped")
                    .count();
                // The archive verified (verify_after) and holds only whole regular files or
                // symlinks under the flipping names.
                let archive = archive_path(&out);
                for m in root_members(&archive)
                    .iter()
                    .filter(|m| m.contains("/flip-"))
                {
                    let body = root_member(&archive, m);
                    assert!(
                        body.is_empty() || body.starts_with(b"regular file "),
                        "round {round}: {m} holds {body:?}"
                    );
                }
            }
            Ok(out) => {
                failure = Some(format!("round {round} failed: {}", stderr(&out)));
                break;
            }
            Err(hung) => {
                failure = Some(format!("round {round}: {hung}"));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    println!(
        "{rounds} backups, {swaps} swaps: {looked_again} opens found something else than stat had seen, {skipped} odd files skipped"
    );
    if let Some(f) = failure {
        panic!("{f}");
    }
    // About one open in four finds something else (half the time lstat already sees the odd
    // thing); an idle machine gets a dozen hits in the first 12 backups.
    assert!(
        looked_again >= min_hits,
        "the race hit only {looked_again} times in {rounds} backups: not exercised"
    );
}

#[test]
fn odd_files_in_the_tree_are_skipped_with_a_message_and_refused_when_required() {
    let env = Env::new(1);
    let dir = env.root().join("var/lib/juju/agents/machine-0");
    let fifo_target = env.path("target.fifo");
    nix::unistd::mkfifo(
        &fifo_target,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    make_odd(&dir.join("a.fifo"), &Odd::Fifo, &fifo_target);
    make_odd(&dir.join("a.sock"), &Odd::Socket, &fifo_target);
    make_odd(&dir.join("a-link"), &Odd::Symlink, &fifo_target);
    if is_root() {
        make_odd(&dir.join("a.dev"), &Odd::Device, &fifo_target);
    }
    env.config("", "");
    let out = env
        .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("a FIFO, not a regular file"), "{err}");
    assert!(err.contains("a socket, not a regular file"), "{err}");
    if is_root() {
        assert!(
            err.contains("a character device, not a regular file"),
            "{err}"
        );
    }
    let members = root_members(&archive_path(&out));
    let m0 = "var/lib/juju/agents/machine-0";
    assert!(members.contains(&format!("{m0}/a-link")), "{members:?}");
    for odd in ["a.fifo", "a.sock", "a.dev"] {
        assert!(!members.contains(&format!("{m0}/{odd}")), "{odd} archived");
    }

    // Named by files.include itself, an odd file is refused, not skipped.
    env.config(
        "",
        "include = [\"/var/lib/juju/agents/machine-0/a.fifo\"]\n",
    );
    let out = env
        .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
        .unwrap();
    assert!(!out.status.success(), "a required FIFO was accepted");
    let err = stderr(&out);
    assert!(
        err.contains("a.fifo") && err.contains("required by files.include, but it is a FIFO"),
        "{err}"
    );
}

// ---- item 16: files that vanish between the walk and open ----

const AGENT_CONF_TAIL: &str = "# written whole by the test writer\n";

/// Writes `agent.conf` the way Juju does, through a temporary file in the same directory renamed
/// into place, in a loop, plus a scratch file created and removed each time; returns the count.
fn juju_like_writer(
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let template = std::fs::read_to_string(dir.join("agent.conf")).unwrap();
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let tmp = dir.join(format!("agent.conf.tmp{i}"));
            let scratch = dir.join(format!(".scratch-{i}"));
            {
                let mut f = std::fs::File::create(&tmp).unwrap();
                f.write_all(template.as_bytes()).unwrap();
                write!(f, "# version {i}\n{AGENT_CONF_TAIL}").unwrap();
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
            std::fs::write(&scratch, b"scratch").unwrap();
            std::fs::rename(&tmp, dir.join("agent.conf")).unwrap();
            std::fs::remove_file(&scratch).unwrap();
            writes.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(500));
        }
    })
}

#[test]
fn files_renamed_into_place_and_removed_during_60_backups_never_fail_one() {
    let env = Env::new(1);
    env.config("", "");
    let dir = env.root().join("var/lib/juju/agents/machine-0");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = juju_like_writer(dir, stop.clone(), writes.clone());
    let mut failures = Vec::new();
    let mut vanished = 0;
    let mut archives = Vec::new();
    let started = Instant::now();
    for round in 0..60 {
        match env.run_bounded(&["backup", "--offline"], Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {
                let err = stderr(&out);
                vanished += err.matches("removed before it could be read").count()
                    + err.matches("removed while the tree was read").count();
                archives.push(archive_path(&out));
            }
            Ok(out) => failures.push(format!("round {round}: {}", stderr(&out))),
            Err(hung) => failures.push(format!("round {round}: {hung}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    println!(
        "60 backups in {:.1?} while agent.conf was replaced {} times: {} failed, {vanished} vanished files skipped",
        started.elapsed(),
        writes.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of 60 failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        writes.load(Ordering::Relaxed) > 100,
        "the writer barely ran"
    );
    // Every archive holds one whole version of agent.conf.
    for a in &archives {
        let conf =
            String::from_utf8(root_member(a, "var/lib/juju/agents/machine-0/agent.conf")).unwrap();
        assert!(
            conf.starts_with("# format 2.0") && conf.ends_with(AGENT_CONF_TAIL),
            "{}: torn agent.conf:\n{conf}",
            a.display()
        );
    }
}

#[test]
fn a_required_path_that_vanishes_fails_the_backup_an_optional_one_is_skipped() {
    use juju_brd::snapshot::files;
    let env = Env::new(1);
    let cfg = juju_brd::config::Config::load(&env.config("", "")).unwrap();
    let root = env.root();
    let none: [&Path; 0] = [];
    let capture = |plan: &files::FilePlan| {
        let staging = env.path("staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        let spool = files::Spool::new(std::fs::File::create(staging.join("root.tar")).unwrap());
        let mut manifest = files::ManifestOut::new(std::io::BufWriter::new(
            std::fs::File::create(staging.join("manifest.json")).unwrap(),
        ))
        .unwrap();
        let cancel = AtomicBool::new(false);
        let progress = AtomicU64::new(0);
        let ctx = files::CaptureContext {
            root: &root,
            retries: 5,
            cancel: &cancel,
            progress: &progress,
        };
        files::capture(plan, &ctx, spool, &mut manifest).map(|(c, _)| c.files)
    };

    // Optional (found below an include, or matched by files.optional): skipped.
    let plan = files::plan(&cfg.files, &none).unwrap();
    std::fs::remove_file(root.join("var/lib/juju/agents/machine-0/agent.conf")).unwrap();
    std::fs::remove_file(root.join("var/lib/juju/nonce.txt")).unwrap();
    std::fs::remove_dir_all(root.join("var/lib/juju/init")).unwrap();
    let files_before = plan.paths.len();
    capture(&plan).expect("optional paths that vanished are skipped");
    assert!(files_before > 10);

    // Required (matched by a files.include glob itself): the backup fails, naming it.
    let plan = files::plan(&cfg.files, &none).unwrap();
    std::fs::remove_file(root.join("var/lib/juju/server.pem")).unwrap();
    let err = capture(&plan).unwrap_err().to_string();
    assert!(
        err.contains("/var/lib/juju/server.pem") && err.contains("files.include"),
        "{err}"
    );
}

// ---- item 19: the archive and state directories inside the backed-up tree ----

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

#[test]
fn archive_and_state_dirs_inside_the_backed_up_tree_are_never_archived() {
    let env = Env::new(1);
    let top =
        "archive_dir = \"root/var/lib/juju/brd/archives\"\nstate_dir = \"root/var/lib/juju/brd\"\n";
    // The whole of /var/lib/juju is required, and the archives live inside it.
    let write_config = |include: &str, optional: &str| {
        let text = format!(
            "environment = \"test-env\"\n{top}\n[files]\nroot = \"root\"\ninclude = [{include}]\noptional = [{optional}]\n"
        );
        std::fs::write(env.path("config.toml"), text).unwrap();
    };
    write_config("\"/var/lib/juju\"", "");
    let mut sizes = Vec::new();
    let mut last = PathBuf::new();
    for _ in 0..3 {
        let out = env
            .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        last = archive_path(&out);
        sizes.push(file_size(&last));
    }
    let members = root_members(&last);
    assert!(
        members
            .iter()
            .any(|m| m == "var/lib/juju/agents/machine-0/agent.conf"),
        "{members:?}"
    );
    let leaked: Vec<&String> = members
        .iter()
        .filter(|m| m.starts_with("var/lib/juju/brd"))
        .collect();
    assert!(leaked.is_empty(), "own files archived: {leaked:?}");
    // Each archive is about as large as the first, not the sum of those before it.
    assert!(
        sizes[2] < sizes[0] + sizes[0] / 10,
        "archives grow: {sizes:?}"
    );

    // Reached through a symlink in the tree (the walk follows a symlink it starts from).
    let link = env.root().join("var/lib/juju/archives-link");
    std::os::unix::fs::symlink(env.root().join("var/lib/juju/brd/archives"), &link).unwrap();
    write_config(
        "\"/var/lib/juju/agents/machine-*\"",
        "\"/var/lib/juju/archives-link\"",
    );
    let out = env
        .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("own archive or state directory is inside the backed-up tree"),
        "{}",
        stderr(&out)
    );
    let members = root_members(&archive_path(&out));
    assert!(
        !members.iter().any(|m| m.contains("juju-backup-")),
        "archives archived through a symlink: {members:?}"
    );

    // A required include that is nothing but the archive directory is refused, saying why.
    write_config("\"/var/lib/juju/brd/archives\"", "");
    let out = env
        .run_bounded(&["backup", "--offline"], Duration::from_secs(60))
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("matches only juju-brd's own archive or state directory"),
        "{}",
        stderr(&out)
    );
}

// ---- item 18: api.socket naming something that is not a stale socket ----

#[test]
fn api_socket_naming_anything_but_a_stale_socket_is_refused_and_left_alone() {
    let env = Env::new(1);
    let run = env.path("run");
    std::fs::create_dir_all(&run).unwrap();
    // The daemon, which must refuse to start: its stderr.
    let daemon_refuses = || Start::new(&env).refused(Duration::from_secs(30));

    // Someone's regular file.
    let file = run.join("precious.txt");
    std::fs::write(&file, b"do not delete me\n").unwrap();
    config_at(&env, &file, "");
    let err = daemon_refuses();
    assert!(
        err.contains("precious.txt") && err.contains("is a regular file, not a stale socket"),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"do not delete me\n");

    // A symlink to it: neither the link nor its target goes.
    let link = run.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    config_at(&env, &link, "");
    let err = daemon_refuses();
    assert!(err.contains("is a symlink, not a stale socket"), "{err}");
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&file).unwrap(), b"do not delete me\n");

    // A directory, a FIFO.
    let dir = run.join("dir.sock");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"x").unwrap();
    config_at(&env, &dir, "");
    assert!(daemon_refuses().contains("is a directory"));
    assert!(dir.join("inside").exists());
    let fifo = run.join("fifo.sock");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    config_at(&env, &fifo, "");
    assert!(daemon_refuses().contains("is a FIFO"));
    assert!(fifo.exists());

    // A socket someone listens on: refused, and it keeps working.
    let live = run.join("live.sock");
    let listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    config_at(&env, &live, "");
    assert!(daemon_refuses().contains("another juju-brd daemon answers"));
    assert!(std::os::unix::net::UnixStream::connect(&live).is_ok());
    drop(listener);

    // Now stale (nobody listens): removed, and the daemon serves there.
    config_at(&env, &live, "");
    let d = Start::new(&env).socket(&live).ready();
    let rt = common::rt();
    assert_eq!(
        d.request(&rt, hyper::Method::GET, "/healthz").0,
        hyper::StatusCode::OK
    );
    d.stop();
}

// ---- item 17: notes that would break the metadata size cap ----

fn archives_in(env: &Env) -> Vec<String> {
    env.archive_dir_listing()
        .into_iter()
        .filter(|n| n.ends_with(".tar.gz"))
        .collect()
}

#[test]
fn notes_too_long_for_the_metadata_are_refused_at_the_door() {
    let env = Env::new(1);
    // Without verify_after the old daemon wrote such an archive and called it a success.
    config(&env, "[backup]\nverify_after = false\n");
    let d = Daemon::start(&env);
    let rt = common::rt();
    let limit = juju_brd::archive::metadata::MAX_NOTES_BYTES as usize;
    let post = |notes: &str| {
        let body = serde_json::to_vec(&serde_json::json!({ "notes": notes })).unwrap();
        d.send(&rt, hyper::Method::POST, "/v1/backups", Some(body))
    };

    // 1.5 MB of text: under the 2 MB body limit, four times over the notes limit.
    let short = |b: &str| b.chars().take(300).collect::<String>();
    let (code, body) = post(&"n".repeat(1_500_000));
    assert_eq!(code, hyper::StatusCode::BAD_REQUEST, "{}", short(&body));
    assert!(body.contains("notes are too long"), "{body}");
    // Control characters count as stored: 200,000 of them are 1.2 MB of metadata.json.
    let (code, body) = post(&"\u{1}".repeat(200_000));
    assert_eq!(code, hyper::StatusCode::BAD_REQUEST, "{}", short(&body));
    assert!(archives_in(&env).is_empty(), "an archive was written");
    assert!(d.get::<serde_json::Value>(&rt, "/v1/status")["current_job"].is_null());

    // At the limit: taken, and the archive verifies and shows its notes.
    let (code, body) = post(&"n".repeat(limit));
    assert_eq!(code, hyper::StatusCode::ACCEPTED, "{}", short(&body));
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["job"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let job = d.wait_job_within(&rt, &id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{}", job["error"]);
    let path = job["archive"]["path"].as_str().unwrap().to_string();
    let v = env.run(&["verify", &path]);
    assert!(v.status.success(), "{}", stderr(&v));

    // The CLI through the daemon: refused before anything is sent.
    let out = env.run(&["backup", "--notes", &"\u{1}".repeat(100_000)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("notes are too long"),
        "{}",
        stderr(&out)
    );
    d.stop();

    // And offline: refused, nothing written.
    let before = env.archive_dir_listing();
    let out = env.run(&["backup", "--offline", "--notes", &"\u{1}".repeat(100_000)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("notes are too long"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.archive_dir_listing(), before);
}

// ---- item 14: archives named in the future ----

/// Triggers a backup through the daemon and waits for it; returns the job record.
fn backup_through(d: &Daemon, rt: &tokio::runtime::Runtime) -> serde_json::Value {
    let (code, body) = d.send(rt, hyper::Method::POST, "/v1/backups?wait=true", None);
    assert_eq!(code, hyper::StatusCode::OK, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["job"].clone()
}

#[test]
fn a_future_dated_archive_never_makes_retention_delete_the_backup_just_taken() {
    let env = Env::new(1);
    config(&env, "[retention]\nkeep_last = 1\n");
    let d = Daemon::start(&env);
    let rt = common::rt();
    let first = backup_through(&d, &rt);
    let first_path = PathBuf::from(first["archive"]["path"].as_str().unwrap());

    // The clock was years ahead when this one was taken: a good archive with a lying name,
    // verified, so that it would also pass for the newest verified one.
    let future = "juju-backup-20991231-235959.tar.gz";
    let future_path = env.archives().join(future);
    std::fs::copy(&first_path, &future_path).unwrap();
    let sidecar = std::fs::read_to_string(format!("{}.sha256", first_path.display())).unwrap();
    std::fs::write(
        format!("{}.sha256", future_path.display()),
        sidecar.replace(first_path.file_name().unwrap().to_str().unwrap(), future),
    )
    .unwrap();
    let v = env.run(&["verify", future_path.to_str().unwrap()]);
    assert!(v.status.success(), "{}", stderr(&v));

    // Two more real backups, each pruned after it is taken with keep_last = 1.
    for round in 0..2 {
        let job = backup_through(&d, &rt);
        let name = job["archive"]["name"].as_str().unwrap().to_string();
        let now = archives_in(&env);
        assert!(
            now.contains(&name),
            "round {round}: the backup just taken ({name}) was deleted; left: {now:?}"
        );
        assert!(now.contains(&future.to_string()), "{now:?}");
        assert_eq!(now.len(), 2, "round {round}: {now:?}");
    }
    assert!(
        !first_path.exists(),
        "keep_last = 1 kept the oldest real archive"
    );

    // Said in status, in prune's output (API and CLI) and in the log.
    let status = d.get::<serde_json::Value>(&rt, "/v1/status");
    assert_eq!(
        status["future_dated_archives"],
        serde_json::json!([future]),
        "{status}"
    );
    let (code, body) = d.send(&rt, hyper::Method::POST, "/v1/prune?dry_run=true", None);
    assert_eq!(code, hyper::StatusCode::OK);
    let decisions: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fd = decisions["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == future)
        .unwrap();
    assert_eq!(fd["keep"], true);
    assert!(
        fd["reason"]
            .as_str()
            .unwrap()
            .starts_with("future-dated: named 2099-12-31 23:59:59 UTC"),
        "{fd}"
    );
    let out = env.run(&["prune", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(future-dated: named 2099-12-31"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = env.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("FUTURE-DATED:  {future}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(d.log().contains("future-dated archive"), "{}", d.log());
    // Deleting the real newest verified archive still needs ?force=true.
    let newest = archives_in(&env).into_iter().find(|n| n != future).unwrap();
    let (code, _) = d.send(
        &rt,
        hyper::Method::DELETE,
        &format!("/v1/backups/{newest}"),
        None,
    );
    assert_eq!(code, hyper::StatusCode::CONFLICT);
    d.stop();
}

// ---- item 15: bit rot, and the scrub that finds it ----

/// Flips one byte in the middle of `path`, keeping its size and mtime: what rot looks like.
fn rot(path: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let md = std::fs::metadata(path).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = md.len() / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x10]).unwrap();
    f.set_times(
        std::fs::FileTimes::new()
            .set_modified(md.modified().unwrap())
            .set_accessed(md.accessed().unwrap()),
    )
    .unwrap();
    drop(f);
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (md.len(), md.modified().unwrap())
    );
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bit_rot_is_seen_by_list_verify_and_then_retention_stops_trusting_the_archive() {
    let env = Env::new(1);
    env.config("", "[retention]\nkeep_last = 1\n");
    let older = env.backup();
    let newest = env.backup();
    let newest_name = newest.file_name().unwrap().to_str().unwrap().to_string();
    let older_name = older.file_name().unwrap().to_str().unwrap().to_string();
    rot(&newest);
    // verify (of a copy, so that nothing is recorded for the original) sees it.
    let copy = env.path("copy.tar.gz");
    std::fs::copy(&newest, &copy).unwrap();
    let v = env.run(&["verify", copy.to_str().unwrap()]);
    assert!(!v.status.success(), "verify missed the flipped byte");

    // A plain list shows what was found when it was last read: it cannot know more.
    let out = env.run(&["list"]);
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with(&newest_name) && l.contains("verified")),
        "{}",
        stdout(&out)
    );
    // list --verify reads every archive, cached result or not.
    let out = env.run(&["list", "--verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{table}"))
            .to_string()
    };
    assert!(row(&newest_name).contains("FAILED"), "{table}");
    assert!(row(&older_name).contains("verified"), "{table}");
    let out = env.run(&["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["verification"], "failed", "{listed}");
    assert!(listed[0]["checked_at"].is_string(), "{listed}");

    // Retention now keeps the older, sound archive as the newest verified one.
    let out = env.run(&["prune", "--dry-run"]);
    let plan = stdout(&out);
    let older_line = plan.lines().find(|l| l.contains(&older_name)).unwrap();
    assert!(
        older_line.starts_with("keep") && older_line.contains("newest verified archive"),
        "{plan}"
    );
}

fn s3_credentials(env: &Env) {
    std::fs::write(
        env.path("s3.credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            common::ACCESS_KEY,
            common::SECRET_KEY
        ),
    )
    .unwrap();
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits (bounded) until `/v1/status` satisfies `f`; returns it.
fn wait_status(
    d: &Daemon,
    rt: &tokio::runtime::Runtime,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.get::<serde_json::Value>(rt, "/v1/status");
        if f(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "no {what} within 60 s: {}\n{}",
            s["scrub"],
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_scrubs_on_its_cadence_and_a_rotten_archive_stops_counting_as_verified() {
    let env = Env::new(1);
    config(
        &env,
        "[retention]\nkeep_last = 2\n[scrub]\ninterval = \"1s\"\n",
    );
    let d = Daemon::start(&env);
    let rt = common::rt();
    let older = backup_through(&d, &rt)["archive"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let newest = backup_through(&d, &rt)["archive"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let s = wait_status(&d, &rt, "a sound scrub", |s| s["scrub"]["state"] == "ok");
    assert_eq!(s["scrub"]["enabled"], true);
    assert!(s["scrub"]["next_run"].is_string(), "{}", s["scrub"]);
    let m = d.send(&rt, hyper::Method::GET, "/metrics", None).1;
    assert!(metric(&m, "juju_brd_scrub_last_success_timestamp_seconds") > 0.0);
    assert!(metric(&m, "juju_brd_scrub_runs_total") >= 1.0);
    assert_eq!(metric(&m, "juju_brd_scrub_failures_total"), 0.0);
    // Before the rot, the older archive may be deleted: it is not the newest verified.
    let (_, body) = d.send(&rt, hyper::Method::POST, "/v1/prune?dry_run=true", None);
    assert!(!body.contains("newest verified"), "{body}");

    rot(&env.archives().join(&newest));
    let s = wait_status(&d, &rt, "a failed scrub", |s| {
        s["scrub"]["state"] == "failed"
    });
    assert_eq!(s["scrub"]["damaged"], serde_json::json!([newest]));
    let m = d.send(&rt, hyper::Method::GET, "/metrics", None).1;
    assert!(metric(&m, "juju_brd_scrub_failures_total") >= 1.0, "{m}");
    assert!(
        d.log().contains("scrub: the archive is damaged"),
        "{}",
        d.log()
    );
    let listed = d.get::<serde_json::Value>(&rt, "/v1/backups");
    let rotten = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == newest.as_str())
        .unwrap();
    assert_eq!(rotten["verification"], "failed");
    // The older, sound archive is now the newest verified: kept, and not deleted without force.
    let (code, body) = d.send(
        &rt,
        hyper::Method::DELETE,
        &format!("/v1/backups/{older}"),
        None,
    );
    assert_eq!(code, hyper::StatusCode::CONFLICT, "{body}");
    assert!(body.contains("newest verified"), "{body}");
    let out = env.run(&["status"]);
    assert!(
        stdout(&out).contains("scrub:         FAILED") && stdout(&out).contains(&newest),
        "{}",
        stdout(&out)
    );
    // A backup asked for while scrubs keep running is taken, and the scrub goes on.
    let job = backup_through(&d, &rt);
    assert_eq!(job["state"], "succeeded", "{}", job["error"]);
    d.stop();
}

#[test]
#[ignore = "needs s3s-fs: cargo install s3s-fs@0.14.1 --locked --features binary"]
fn the_scrub_finds_rot_here_and_on_the_remote_and_acts_on_it() {
    common::require_s3s_fs();
    let env = Env::new(1);
    let s3 = common::S3Server::start(&env.path("s3data"), common::free_port());
    s3_credentials(&env);
    let remote = format!(
        "[retention]\nkeep_last = 2\n[scrub]\ninterval = \"2s\"\n\
         [[remote]]\nname = \"offsite\"\nendpoint = \"http://127.0.0.1:{}\"\nbucket = \"{}\"\n\
         prefix = \"ctl\"\npath_style = true\ncredentials_file = \"s3.credentials\"\n\
         retries = 1\nretry_delay = \"50ms\"\n",
        s3.port,
        common::BUCKET
    );
    config(&env, &remote);
    let d = Daemon::start(&env);
    let rt = common::rt();
    let older = backup_through(&d, &rt)["archive"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let newest = backup_through(&d, &rt)["archive"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(archives_in(&env), {
        let mut v = vec![older.clone(), newest.clone()];
        v.sort();
        v
    });
    let wait_for = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let s = d.get::<serde_json::Value>(&rt, "/v1/status");
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "no {what} within 60 s: {}\n{}",
                s["scrub"],
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The first scrubs find everything sound.
    let s = wait_for("sound scrub", &|s| s["scrub"]["state"] == "ok");
    assert!(s["scrub"]["next_run"].is_string(), "{}", s["scrub"]);
    let m = d.send(&rt, hyper::Method::GET, "/metrics", None).1;
    assert!(metric(&m, "juju_brd_scrub_last_success_timestamp_seconds") > 0.0);
    assert_eq!(metric(&m, "juju_brd_scrub_failures_total"), 0.0);

    // Rot: a byte of the newest archive here, a byte of the older one's copy there.
    rot(&env.archives().join(&newest));
    rot(&s3.object(&format!("ctl/{older}")));
    let s = wait_for("failed scrub", &|s| s["scrub"]["state"] == "failed");
    let damaged: Vec<String> = serde_json::from_value(s["scrub"]["damaged"].clone()).unwrap();
    assert!(damaged.contains(&newest), "{damaged:?}");
    assert!(
        damaged.contains(&format!("{older} on remote offsite")),
        "{damaged:?}"
    );
    let m = d.send(&rt, hyper::Method::GET, "/metrics", None).1;
    assert!(metric(&m, "juju_brd_scrub_failures_total") >= 2.0, "{m}");
    assert!(
        d.log().contains("scrub: the archive is damaged"),
        "{}",
        d.log()
    );

    // The rotten archive is failed, so the older one is now the newest verified: the API
    // refuses to delete it without ?force, as retention keeps it.
    let listed = d.get::<serde_json::Value>(&rt, "/v1/backups");
    let rotten = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == newest.as_str())
        .unwrap();
    assert_eq!(rotten["verification"], "failed");
    let (code, body) = d.send(
        &rt,
        hyper::Method::DELETE,
        &format!("/v1/backups/{older}"),
        None,
    );
    assert_eq!(code, hyper::StatusCode::CONFLICT, "{body}");
    assert!(body.contains("newest verified"), "{body}");
    // ...and its damaged remote copy is copied again after the next backup.
    let ledger = std::fs::read_to_string(env.path("state/replicated.json")).unwrap();
    let ledger: serde_json::Value = serde_json::from_str(&ledger).unwrap();
    assert!(
        ledger["copies"][&older]["offsite"].is_null(),
        "still counted as copied: {ledger}"
    );
    backup_through(&d, &rt);
    // Replication runs after the job is reported done.
    let sound_copy = || {
        use sha2::Digest;
        let copy = std::fs::read(s3.object(&format!("ctl/{older}"))).unwrap_or_default();
        let side =
            std::fs::read_to_string(s3.object(&format!("ctl/{older}.sha256"))).unwrap_or_default();
        side.split_whitespace().next() == Some(&hex::encode(sha2::Sha256::digest(&copy)))
    };
    let end = Instant::now() + Duration::from_secs(60);
    while !sound_copy() {
        assert!(
            Instant::now() < end,
            "the damaged remote copy was not replaced:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.run(&["status"]);
    assert!(
        stdout(&out).contains("scrub:         FAILED"),
        "{}",
        stdout(&out)
    );
    d.stop();
}
