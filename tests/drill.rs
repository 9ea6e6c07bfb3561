//! Restore drills: `juju-brd drill` and the daemon's `[drill] cron` / `POST /v1/drills` restore a
//! real archive into a scratch root, check it, report the time, and leave nothing behind.

mod common;

use std::time::Duration;

use common::daemon::{self, Daemon};
use common::{rt, stderr, tree_state, Env};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Everything under the env's directory except the state dir (where the scratch root lives while
/// a drill runs) and logs: a drill must change none of it.
fn outside_state(env: &Env) -> std::collections::BTreeMap<String, String> {
    tree_state(env.dir.path(), &["state", "daemon.log", "drill.log"])
}

fn no_scratch_left(env: &Env) {
    let drills = env.path("state/drills");
    let left: Vec<_> = std::fs::read_dir(&drills)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "scratch roots left in {}: {left:?}",
        drills.display()
    );
}

#[test]
fn a_drill_restores_checks_reports_and_changes_nothing() {
    let env = Env::new(3);
    env.config(
        "",
        &format!(
            "{}inventory_query = \"SELECT name, '10.1.0.' || id, name = 'machine-0' FROM machines\"\n",
            env.sqlite_section()
        ),
    );
    let archive = env.backup();
    let before = outside_state(&env);
    let out = env.run(&["drill"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let name = archive.file_name().unwrap().to_string_lossy();
    assert!(text.contains(&format!("Drill of {name}: PASSED")), "{text}");
    assert!(text.contains("restore took"), "{text}");
    for check in [
        "files match the manifest   passed",
        "database                   passed",
        "agent.conf                 passed",
        "inventory of machines      passed       3 machines, 2 to re-point",
    ] {
        assert!(text.contains(check), "missing `{check}` in:\n{text}");
    }
    assert_eq!(
        outside_state(&env),
        before,
        "a drill changed something outside its scratch root"
    );
    no_scratch_left(&env);

    // JSON, and an archive named on the command line.
    let out = env.run(&["drill", "--json", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["passed"], true);
    assert!(r["restore_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(r["checks"].as_array().unwrap().len(), 4);
}

#[test]
fn a_damaged_archive_or_an_unusable_agent_conf_fails_the_drill() {
    let env = Env::new(1);
    env.config("", &env.sqlite_section());
    // agent.conf without the controller's certificate: restorable, but not a usable controller.
    let conf = env.root().join("var/lib/juju/agents/machine-0/agent.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    let stripped: String = text
        .split_inclusive('\n')
        .filter(|l| {
            !l.starts_with("controllercert")
                && !l.starts_with("controllerkey")
                && !l.starts_with("  ")
        })
        .collect();
    std::fs::write(&conf, stripped).unwrap();
    let archive = env.backup();
    let out = env.run(&["drill", archive.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(text.contains("FAILED"), "{text}");
    assert!(
        text.contains("lacks controllercert+controllerkey or stateservingInfo"),
        "{text}"
    );
    no_scratch_left(&env);

    // One flipped byte in the middle of the archive: refused before anything is restored.
    let mut bytes = std::fs::read(&archive).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let damaged = env.path("damaged.tar.gz");
    std::fs::write(&damaged, bytes).unwrap();
    let out = env.run(&["drill", damaged.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("drill failed"), "{}", stderr(&out));
    no_scratch_left(&env);
}

#[test]
fn the_daemon_drills_on_its_cron_and_on_request_and_reports_it() {
    let env = Env::new(2);
    // Every 2 seconds: the test sees a scheduled drill quickly.
    daemon::config(&env, "[drill]\ncron = \"*/2 * * * * *\"\n");
    let d = Daemon::start_logged(&env, "drill.log");
    let rt = rt();
    // A backup first (a drill needs a verified archive).
    let (code, body) = d.post(&rt, "/v1/backups");
    assert_eq!(code, 202, "{body}");
    let job = d.wait_job(&rt, body["job"]["id"].as_str().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");

    common::wait_until(Duration::from_secs(60), "a scheduled drill to pass", || {
        d.status(&rt).drill.last.is_some_and(|l| l.passed)
    });
    let s = d.status(&rt);
    assert!(s.drill.scheduled);
    assert!(s.drill.next_run.is_some());
    assert!(d.metric(&rt, "juju_brd_drill_last_success_timestamp_seconds") > 0.0);
    assert!(d.metric(&rt, "juju_brd_drill_duration_seconds") > 0.0);
    assert_eq!(d.metric(&rt, "juju_brd_drill_failures_total"), 0.0);

    // On request, waiting: the report comes back.
    let (code, body) = d.post(&rt, "/v1/drills?wait=true");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["job"]["kind"], "drill");
    assert_eq!(body["job"]["drill"]["passed"], true, "{body}");
    // A bad archive name is refused.
    let (st, _) = d.send(
        &rt,
        hyper::Method::POST,
        "/v1/drills",
        Some(br#"{"archive": "../x"}"#.to_vec()),
    );
    assert_eq!(st.as_u16(), 400);

    // `juju-brd status` and `juju-brd drill` go through the daemon.
    let out = env.run(&["status"]);
    assert!(
        stdout(&out).contains("drill:         passed"),
        "{}",
        stdout(&out)
    );
    let out = env.run(&["drill"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stderr(&out).contains("asking it for the drill"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).contains("PASSED"));

    // A drill and a backup never run at once: every backup start in the log comes after the
    // previous drill's end, and the other way round.
    let log = d.log();
    let mut running: Option<&str> = None;
    for line in log.lines() {
        let event = if line.contains("backup started") {
            Some(("start", "backup"))
        } else if line.contains("backup complete") || line.contains("backup failed") {
            Some(("end", "backup"))
        } else if line.contains("restore drill started") {
            Some(("start", "drill"))
        } else if line.contains("restore drill passed") || line.contains("restore drill FAILED") {
            Some(("end", "drill"))
        } else {
            None
        };
        match event {
            Some(("start", what)) => {
                assert!(
                    running.is_none(),
                    "{what} started while {running:?} ran:\n{log}"
                );
                running = Some(what);
            }
            Some(("end", _)) => running = None,
            _ => {}
        }
    }
    // The daemon removes scratch roots on a thread of its own, after the report.
    common::wait_until(
        Duration::from_secs(60),
        "the drills' scratch roots to go",
        || std::fs::read_dir(env.path("state/drills")).map_or(true, |rd| rd.count() == 0),
    );
    drop(d);
}
