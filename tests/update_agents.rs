//! Restore brings the whole environment back: the other machines' agents are re-pointed at the
//! new state-server. Each machine is a network namespace with a real sshd and its own
//! `/var/lib/juju` (tests/common/lab.rs); agents are real processes managed by a small
//! `agentctl` script that the config's stop/start/running commands call. The new state-server is
//! a namespace too, where `juju-brd restore` and `update-agents` run.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::lab::{Host, Lab};
use common::{stderr, Env};

/// Manages fake agents on a machine: `start`, `stop`, `running` AGENT; every start and stop is
/// logged, so a test can tell which agents were restarted.
const AGENTCTL: &str = r#"#!/bin/sh
set -eu
run=/var/lib/juju/run
mkdir -p "$run"
case "$1" in
  start)
    echo "start $2" >> /var/lib/juju/agentctl.log
    setsid sleep 1000000 </dev/null >/dev/null 2>&1 &
    echo $! > "$run/$2.pid" ;;
  stop)
    echo "stop $2" >> /var/lib/juju/agentctl.log
    if [ -f "$run/$2.pid" ]; then kill "$(cat "$run/$2.pid")" 2>/dev/null || true; fi
    rm -f "$run/$2.pid" ;;
  running)
    [ -f "$run/$2.pid" ] && kill -0 "$(cat "$run/$2.pid")" ;;
esac
"#;

/// The dead state-server's address: in the lab's subnet, never assigned.
fn old_address(lab: &Lab) -> String {
    lab.subnet().replace(".0/24", ".250")
}

fn agent_conf(tag: &str, old: &str) -> String {
    format!(
        "# format 2.0\ntag: {tag}\ndatadir: /var/lib/juju\nlogdir: /var/log/juju\n\
         upgradedToVersion: 2.9.42\napiaddresses:\n- {old}:17070\n- 203.0.113.250:17070\n\
         stateaddresses:\n- {old}:37017\napipassword: SeCrEt-{tag}\n\
         controller: controller-c0ffee\nmodel: model-deadbeef\nvalues:\n  AGENT_SERVICE_NAME: jujud-{tag}\n"
    )
}

/// What an agent.conf must read after re-pointing: every address list item on the new host, ports
/// kept, every other byte as it was.
fn repointed(text: &str, old: &str, new: &str) -> String {
    text.replace(&format!("{old}:17070"), &format!("{new}:17070"))
        .replace("203.0.113.250:17070", &format!("{new}:17070"))
        .replace(&format!("{old}:37017"), &format!("{new}:37017"))
}

/// A machine of the environment: machine agent `machine-N`, unit agent `unit-app-N` with a
/// relation whose change-version must go back to 0; both agents started.
struct Machine {
    id: String,
    host: Host,
}

impl Machine {
    fn new(lab: &Lab, n: usize, authorized: &str) -> Machine {
        let mut host = lab.host(&format!("m{n}"));
        let juju = host.juju_dir();
        let old = old_address(lab);
        for tag in [format!("machine-{n}"), format!("unit-app-{n}")] {
            let dir = juju.join("agents").join(&tag);
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("agent.conf");
            std::fs::write(&conf, agent_conf(&tag, &old)).unwrap();
            std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let rel = juju.join(format!("agents/unit-app-{n}/state/relations/3"));
        std::fs::create_dir_all(&rel).unwrap();
        std::fs::write(
            rel.join("db-0"),
            "change-version: 7\nchanged-pending: false\n",
        )
        .unwrap();
        let ctl = juju.join("agentctl");
        std::fs::write(&ctl, AGENTCTL).unwrap();
        std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        host.start_sshd(authorized);
        let m = Machine {
            id: n.to_string(),
            host,
        };
        for a in m.agents() {
            let out = m
                .host
                .command("/var/lib/juju/agentctl")
                .args(["start", &a])
                .output()
                .unwrap();
            assert!(out.status.success(), "agentctl start: {}", stderr(&out));
        }
        m
    }

    fn agents(&self) -> Vec<String> {
        vec![
            format!("machine-{}", self.id),
            format!("unit-app-{}", self.id),
        ]
    }

    fn conf(&self, agent: &str) -> String {
        std::fs::read_to_string(
            self.host
                .juju_dir()
                .join("agents")
                .join(agent)
                .join("agent.conf"),
        )
        .unwrap()
    }

    fn relation(&self) -> String {
        std::fs::read_to_string(self.host.juju_dir().join(format!(
            "agents/unit-app-{}/state/relations/3/db-0",
            self.id
        )))
        .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.host.juju_dir().join("agentctl.log")).unwrap_or_default()
    }

    fn running(&self, agent: &str) -> bool {
        self.host
            .command("/var/lib/juju/agentctl")
            .args(["running", agent])
            .status()
            .unwrap()
            .success()
    }

    /// Every agent.conf re-pointed at `new` (and nothing else changed), relation reset, every
    /// agent stopped, started again and running.
    fn assert_updated(&self, old: &str, new: &str) {
        for a in self.agents() {
            let want = repointed(&agent_conf(&a, old), old, new);
            assert_eq!(self.conf(&a), want, "machine {} {a}", self.id);
            let mode = std::fs::metadata(
                self.host
                    .juju_dir()
                    .join("agents")
                    .join(&a)
                    .join("agent.conf"),
            )
            .unwrap()
            .permissions()
            .mode();
            assert_eq!(mode & 0o777, 0o600, "machine {} {a}: mode kept", self.id);
            let log = self.log();
            assert!(
                log.contains(&format!("stop {a}\n")),
                "machine {}: {a} not stopped: {log}",
                self.id
            );
            assert_eq!(
                log.matches(&format!("start {a}\n")).count(),
                2,
                "machine {}: {a} not restarted once: {log}",
                self.id
            );
            assert!(self.running(&a), "machine {}: {a} is not running", self.id);
        }
        assert!(
            self.relation().starts_with("change-version: 0\n"),
            "{}",
            self.relation()
        );
    }

    /// Nothing on the machine changed: files as written, agents started once, never stopped.
    fn assert_untouched(&self, old: &str) {
        for a in self.agents() {
            assert_eq!(
                self.conf(&a),
                agent_conf(&a, old),
                "machine {} {a} changed",
                self.id
            );
            assert!(
                !self.log().contains("stop "),
                "machine {}: agents were stopped",
                self.id
            );
        }
        assert!(self.relation().starts_with("change-version: 7\n"));
    }
}

/// The environment: a state-server tree (with the key every machine trusts, and the machines
/// in its SQLite database) backed up into an archive, `n` machines, and the new state-server.
struct World {
    lab: Lab,
    env: Env,
    dir: tempfile::TempDir,
    public: String,
    machines: Vec<Machine>,
    server: Host,
    archive: PathBuf,
}

impl World {
    fn new(n: usize) -> World {
        let lab = Lab::new();
        let env = Env::new(1);
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = Lab::keypair(dir.path());
        // The state-server's own key, which every machine's authorized_keys holds.
        let identity = env.root().join("var/lib/juju/system-identity");
        std::fs::copy(&key, &identity).unwrap();
        std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
        let machines: Vec<Machine> = (1..=n).map(|i| Machine::new(&lab, i, &public)).collect();
        let server = lab.host("server");
        // The machines table the inventory query reads.
        let conn = rusqlite::Connection::open(env.root().join("var/lib/juju/db/state.db")).unwrap();
        conn.execute_batch("CREATE TABLE lab_machines (id TEXT, addrs TEXT, ctl INT);")
            .unwrap();
        conn.execute(
            "INSERT INTO lab_machines VALUES ('0', ?1, 1)",
            [old_address(&lab)],
        )
        .unwrap();
        for m in &machines {
            // A loopback address first: it must be skipped, never tried.
            conn.execute(
                "INSERT INTO lab_machines VALUES (?1, ?2, 0)",
                [m.id.clone(), format!("127.0.0.1,{}", m.host.ip())],
            )
            .unwrap();
        }
        drop(conn);
        env.restore_config(
            &[17070],
            "[agents]\nknown_hosts = \"known_hosts\"\nconnect_timeout = \"3s\"\n\
             machine_timeout = \"60s\"\nrunning_timeout = \"10s\"\n\
             stop_command = \"/var/lib/juju/agentctl stop {agent}\"\n\
             start_command = \"/var/lib/juju/agentctl start {agent}\"\n\
             running_command = \"/var/lib/juju/agentctl running {agent}\"\n",
        );
        // The inventory query goes into [database].
        let cfg = env.path("config.toml");
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "[database]\n",
            "[database]\ninventory_query = \"SELECT id, addrs, ctl FROM lab_machines\"\n",
        );
        std::fs::write(&cfg, text).unwrap();
        let archive = env.backup();
        World {
            lab,
            env,
            dir,
            public,
            machines,
            server,
            archive,
        }
    }

    fn old(&self) -> String {
        old_address(&self.lab)
    }

    fn target(&self) -> PathBuf {
        let t = self.dir.path().join("host-b");
        std::fs::create_dir_all(&t).unwrap();
        t
    }

    /// `juju-brd ARGS` run on the new state-server, bounded.
    fn on_server(&self, args: &[&str]) -> Output {
        self.env
            .run_bounded_with(&self.server.wrapper(), &[], args, Duration::from_secs(240))
            .unwrap()
    }

    /// `restore --yes` of the archive onto the new state-server, with `flags` before the archive.
    fn restore_with(&self, flags: &[&str]) -> Output {
        let target = self.target();
        let ip = self.server.ip();
        let mut args = vec![
            "restore",
            "--yes",
            "--address",
            &ip,
            "--target-root",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(flags);
        args.push(self.archive.to_str().unwrap());
        self.on_server(&args)
    }

    fn restore(&self) -> Output {
        self.restore_with(&[])
    }

    fn update_agents(&self, extra: &[&str]) -> Output {
        let key = self.target().join("var/lib/juju/system-identity");
        let ip = self.server.ip();
        let mut args = vec![
            "update-agents",
            "--archive",
            self.archive.to_str().unwrap(),
            "--address",
            &ip,
            "--ssh-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.on_server(&args)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The table's line for a machine.
fn row<'a>(out: &'a str, machine: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(machine))
        .unwrap_or_else(|| panic!("no row for machine {machine} in:\n{out}"))
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn restore_re_points_every_machine_and_a_second_run_finds_them_current() {
    let w = World::new(3);
    let show = w.env.run(&["show", w.archive.to_str().unwrap()]);
    let shown = stdout(&show);
    assert!(shown.contains("Machines:       4"), "{shown}");
    for m in &w.machines {
        assert!(
            shown.contains(&m.host.ip()),
            "show lists machine {}: {shown}",
            m.id
        );
    }

    let started = Instant::now();
    let out = w.restore();
    let took = started.elapsed();
    let text = stdout(&out);
    assert!(out.status.success(), "restore: {text}\n{}", stderr(&out));
    assert!(
        text.contains("update the agents of 3 machine(s)"),
        "the plan lists them: {text}"
    );
    let new = w.server.ip();
    for m in &w.machines {
        assert!(row(&text, &m.id).contains("updated"), "{text}");
        m.assert_updated(&w.old(), &new);
    }
    assert!(
        stderr(&out).contains("host keys seen for the first time were recorded"),
        "{}",
        stderr(&out)
    );
    eprintln!("restore with 3 machines re-pointed took {took:?}");

    // Idempotent: a second run changes nothing and says so.
    let started = Instant::now();
    let again = w.update_agents(&[]);
    let text = stdout(&again);
    assert!(again.status.success(), "{text}\n{}", stderr(&again));
    for m in &w.machines {
        assert!(row(&text, &m.id).contains("already current"), "{text}");
        m.assert_updated(&w.old(), &new);
    }
    eprintln!(
        "update-agents on 3 current machines took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn an_unreachable_machine_does_not_undo_the_restore_and_a_rerun_finishes_it() {
    let mut w = World::new(3);
    w.machines[1].host.stop_sshd();
    let out = w.restore();
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "restore: {text}\n{}",
        stderr(&out)
    );
    assert!(row(&text, "2").contains("unreachable"), "{text}");
    assert!(
        text.contains("juju-brd update-agents --archive"),
        "names the command that finishes: {text}"
    );
    // The state-server itself is restored.
    assert!(w.target().join("var/lib/juju/system-identity").exists());
    let new = w.server.ip();
    w.machines[0].assert_updated(&w.old(), &new);
    w.machines[2].assert_updated(&w.old(), &new);
    w.machines[1].assert_untouched(&w.old());

    let public = w.public.clone();
    w.machines[1].host.start_sshd(&public);
    let again = w.update_agents(&[]);
    let text = stdout(&again);
    assert!(again.status.success(), "{text}\n{}", stderr(&again));
    assert!(row(&text, "2").contains("updated"), "{text}");
    assert!(row(&text, "1").contains("already current"), "{text}");
    assert!(row(&text, "3").contains("already current"), "{text}");
    for m in &w.machines {
        m.assert_updated(&w.old(), &new);
    }
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn wrong_key_changed_host_key_and_hanging_sshd_fail_alone_within_the_timeout() {
    let mut w = World::new(4);
    // Restore without the last step, so that each machine's trouble can be set up first.
    let out = w.restore_with(&["--no-update-agents"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Other machines NOT updated: --no-update-agents"));

    // 1: another key; 2: known, then its host key changes; 3: sshd frozen; 4: fine.
    let (_other, other_public) = Lab::keypair(w.dir.path());
    w.machines[0].host.stop_sshd();
    w.machines[0].host.start_sshd(&other_public);
    let known = w.env.path("known_hosts");
    std::fs::write(
        &known,
        format!("{}\n", w.machines[1].host.known_hosts_line()),
    )
    .unwrap();
    w.machines[1].host.regenerate_host_key();
    w.machines[2].host.freeze_sshd();

    let started = Instant::now();
    let out = w.update_agents(&["--connect-timeout", "3s"]);
    let took = started.elapsed();
    let text = stdout(&out);
    eprintln!("{text}{}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "{text}\n{}", stderr(&out));
    assert!(row(&text, "1").contains("refused the key"), "{text}");
    assert!(row(&text, "2").contains("host key"), "{text}");
    assert!(row(&text, "2").contains("refused"), "{text}");
    assert!(row(&text, "3").contains("unreachable"), "{text}");
    assert!(row(&text, "4").contains("updated"), "{text}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    for m in &w.machines[..3] {
        m.assert_untouched(&w.old());
    }
    w.machines[3].assert_updated(&w.old(), &w.server.ip());
    w.machines[2].host.thaw_sshd();
    // The changed host key is still refused: never silently accepted.
    let known_after = std::fs::read_to_string(&known).unwrap();
    assert!(known_after.contains(&format!("{} ", w.machines[1].host.ip())));
}

#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn dry_run_and_machines_file_change_nothing_until_asked() {
    let w = World::new(2);
    let (target, ip) = (w.target(), w.server.ip());
    let out = w.restore_with(&["--no-update-agents"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.update_agents(&["--dry-run"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for m in &w.machines {
        assert!(row(&text, &m.id).contains("would update"), "{text}");
        m.assert_untouched(&w.old());
    }
    assert!(
        !w.env.path("known_hosts").exists(),
        "a dry run recorded host keys"
    );

    // A machines file names just one of them.
    let file = w.env.path("machines.txt");
    std::fs::write(
        &file,
        format!("# id address\n2 {}\n", w.machines[1].host.ip()),
    )
    .unwrap();
    let key = target.join("var/lib/juju/system-identity");
    let out = w.on_server(&[
        "update-agents",
        "--machines",
        file.to_str().unwrap(),
        "--address",
        &ip,
        "--ssh-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    w.machines[0].assert_untouched(&w.old());
    w.machines[1].assert_updated(&w.old(), &ip);
}

/// The inventory comes from the database in the same snapshot as the dump: rows written while
/// the backup runs are in both, or in neither. (No namespaces needed.)
#[test]
fn the_inventory_is_taken_from_the_same_snapshot_as_the_dump() {
    let env = Env::new(4);
    env.config(
        "",
        &format!(
            "{}inventory_query = \"SELECT name, '10.1.0.' || (id % 250), 0 FROM machines\"\n",
            env.sqlite_section()
        ),
    );
    let db = env.root().join("var/lib/juju/db/state.db");
    let stop = &std::sync::atomic::AtomicBool::new(false);
    let (first, wrote) = std::sync::mpsc::channel();
    let archive = std::thread::scope(|s| {
        s.spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.execute(
                    "INSERT INTO machines(name, series, life) VALUES (?1, 'jammy', 0)",
                    [format!("added-{i}")],
                )
                .unwrap();
                if i == 0 {
                    first.send(()).unwrap();
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        wrote.recv().unwrap();
        let a = env.backup();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        a
    });
    let show = env.run(&["show", "--json", archive.to_str().unwrap()]);
    let meta: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let inventory: Vec<String> = meta["juju-brd"]["inventory"]
        .as_array()
        .expect("an inventory")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    // The dump, as archived.
    let out = tempfile::tempdir().unwrap();
    common::system_untar(&archive, out.path(), &[]);
    let dumped = out.path().join("juju-backup/dump/state.db");
    let conn = rusqlite::Connection::open(&dumped).unwrap();
    let mut names: Vec<String> = conn
        .prepare("SELECT name FROM machines")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    names.sort();
    let mut inv = inventory.clone();
    inv.sort();
    assert_eq!(inv, names, "inventory and dump differ");
    assert!(
        names.iter().any(|n| n.starts_with("added-")),
        "the writer ran during the backup"
    );
    let text = stdout(&env.run(&["show", archive.to_str().unwrap()]));
    assert!(
        text.contains(&format!("Machines:       {}", names.len())),
        "{text}"
    );
}

/// Figures for the closing note and the README, not a timed assertion: the time to update N
/// machines at several parallelism bounds (every machine must be updated each time).
#[test]
#[ignore = "needs root and ip netns: Debian packages iproute2, openssh-server, openssh-client, sudo"]
fn figures_time_to_update_n_machines() {
    let w = World::new(24);
    let target = w.target();
    let out = w.restore_with(&["--no-update-agents"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each round points every machine at a different address, so every round does the work.
    for (round, parallel) in ["1", "8", "24"].into_iter().enumerate() {
        let address = format!("192.0.2.{}", round + 10);
        let key = target.join("var/lib/juju/system-identity");
        let started = Instant::now();
        let out = w.on_server(&[
            "update-agents",
            "--archive",
            w.archive.to_str().unwrap(),
            "--address",
            &address,
            "--ssh-key",
            key.to_str().unwrap(),
            "--parallel",
            parallel,
        ]);
        let took = started.elapsed();
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        assert_eq!(text.matches(" updated").count(), 24, "{text}");
        eprintln!(
            "figures: 24 machines (2 agents each), parallel {parallel}: {:.2}s ({:.0} ms per machine of wall time)",
            took.as_secs_f64(),
            took.as_secs_f64() * 1000.0 / 24.0
        );
    }
}

/// The command engine records what `inventory_command` prints; when that command fails, the
/// backup still succeeds, and the archive and `show` say why there is no inventory.
#[test]
fn the_command_engine_records_its_inventory_command_and_survives_its_failure() {
    let env = Env::new(1);
    let json = r#"[{"id": "0", "addresses": ["10.2.0.1"], "state_server": true}, {"id": "7", "addresses": ["10.2.0.7", "10.3.0.7"]}]"#;
    env.config(
        "",
        &format!(
            "[database]\nengine = \"command\"\ncommand = [\"sh\", \"-c\", \"echo dumped\"]\n\
             inventory_command = [\"sh\", \"-c\", {:?}]\n",
            format!("printf '%s' '{json}'")
        ),
    );
    let archive = env.backup();
    let text = stdout(&env.run(&["show", archive.to_str().unwrap()]));
    assert!(text.contains("Machines:       2"), "{text}");
    assert!(text.contains("10.2.0.7, 10.3.0.7"), "{text}");
    assert!(text.contains("(state-server)"), "{text}");

    env.config(
        "",
        "[database]\nengine = \"command\"\ncommand = [\"sh\", \"-c\", \"echo dumped\"]\n\
         inventory_command = [\"sh\", \"-c\", \"echo no machines table >&2; exit 5\"]\n",
    );
    let archive = env.backup();
    let text = stdout(&env.run(&["show", archive.to_str().unwrap()]));
    assert!(text.contains("Machines:       not recorded:"), "{text}");
    assert!(text.contains("no machines table"), "{text}");
}
