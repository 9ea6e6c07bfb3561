//! The dqlite engine against a real 3-node cluster on loopback (Debian's go-dqlite: `dqlite-demo`
//! nodes and the `dqlite` shell), written to while it is backed up, and restored into a fresh
//! cluster.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{free_port, stderr, wait_until, Env};

/// A dqlite cluster of `n` dqlite-demo nodes; stopped by PID when dropped.
struct Cluster {
    nodes: Vec<Child>,
    pub servers: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        common::require_debian("dqlite-demo", "go-dqlite");
        common::require_debian("dqlite", "go-dqlite");
        // The nodes go into the cluster as they start, so they are stopped if a wait panics.
        let mut c = Cluster {
            nodes: Vec::new(),
            servers: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..n {
            let db = format!("127.0.0.1:{}", free_port());
            let api = format!("127.0.0.1:{}", free_port());
            let data = c._dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let mut cmd = Command::new("dqlite-demo");
            cmd.args(["--api", &api, "--db", &db, "--dir"]).arg(&data);
            if let Some(first) = c.servers.first() {
                cmd.args(["--join", first.as_str()]);
            }
            let log = std::fs::File::create(c._dir.path().join(format!("n{i}.log"))).unwrap();
            c.nodes
                .push(cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap());
            c.servers.push(db);
            if i == 0 {
                // The first node must be up before others join it.
                wait_until(Duration::from_secs(20), "the first dqlite node", || {
                    std::net::TcpStream::connect(c.servers[0].as_str()).is_ok()
                });
            }
        }
        wait_until(
            Duration::from_secs(30),
            &format!("{n} voters in the cluster"),
            || c.sql("demo", ".cluster").matches("voter").count() == n,
        );
        c
    }

    /// Runs shell input against `db`; returns what the shell printed.
    fn sql(&self, db: &str, input: &str) -> String {
        let mut child = Command::new("dqlite")
            .args(["-s", &self.servers.join(","), db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The rows a query prints, without prompts.
    fn rows(&self, db: &str, query: &str) -> Vec<String> {
        let out = self.sql(db, &format!("{query}\n"));
        assert!(!out.contains("Error:"), "{query}: {out}");
        out.replace("dqlite>", "\n")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

fn dqlite_config(env: &Env, servers: &[String], databases: &[&str], extra: &str) {
    env.config(
        "",
        &format!(
            "[database]\nengine = \"dqlite\"\nservers = {servers:?}\ndatabases = {databases:?}\ntimeout = \"20s\"\n{extra}"
        ),
    );
}

/// Extracts the archive into `x-TAG` and opens its copy of database `demo`, read-only (so a wrong
/// path fails instead of creating an empty database).
fn dumped_demo(env: &Env, archive: &Path, tag: &str) -> rusqlite::Connection {
    let out = env.path(&format!("x-{tag}"));
    common::system_untar(archive, &out, &[]);
    rusqlite::Connection::open_with_flags(
        out.join("juju-backup/dump/dqlite/demo"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
}

#[test]
#[ignore = "needs dqlite, dqlite-demo: Debian package go-dqlite"]
fn backup_is_consistent_while_the_cluster_is_written_to() {
    let cluster = Cluster::start(3);
    let mut setup =
        String::from("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)\n");
    for i in 0..100 {
        setup.push_str(&format!("INSERT INTO accounts VALUES ({i}, 1000)\n"));
    }
    assert!(!cluster.sql("demo", &setup).contains("Error:"));

    // A writer moves money between accounts in single statements (each one atomic), keeping the
    // total at 100000, for as long as the backups run.
    let mut writer = Command::new("dqlite")
        .args(["-s", &cluster.servers.join(","), "demo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (a, b) = (i % 100, (i * 7 + 3) % 100);
                if a != b {
                    let line = format!(
                        "UPDATE accounts SET balance = balance + CASE id WHEN {a} THEN -7 ELSE 7 END WHERE id IN ({a}, {b})\n"
                    );
                    if stdin.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        })
    };

    let env = Env::new(1);
    dqlite_config(&env, &cluster.servers, &["demo"], "");
    std::thread::sleep(Duration::from_millis(300));
    let mut archives = Vec::new();
    for _ in 0..3 {
        archives.push(env.backup());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statements = feeder.join().unwrap();
    let _ = writer.wait();
    assert!(
        statements > 100,
        "the writer barely ran ({statements} statements)"
    );

    let sums: Vec<i64> = archives
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let db = dumped_demo(&env, a, &format!("sum{i}"));
            db.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))
                .unwrap()
        })
        .collect();
    assert!(
        sums.iter().all(|s| *s == 100_000),
        "invariant broken: {sums:?}"
    );
    // Different moments of a live database: the copies differ from each other.
    let balances: Vec<String> = archives
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let db = dumped_demo(&env, a, &format!("bal{i}"));
            db.query_row("SELECT group_concat(balance) FROM accounts", [], |r| {
                r.get(0)
            })
            .unwrap()
        })
        .collect();
    assert!(
        balances.windows(2).any(|w| w[0] != w[1]),
        "the writer did not change anything between backups"
    );
    for a in &archives {
        let out = env.run(&["verify", a.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    // A database the cluster does not have, and a cluster that is not there, fail clearly.
    dqlite_config(&env, &cluster.servers, &["nosuch"], "");
    let out = env.run(&["backup", "--offline"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("database `nosuch` does not exist on the cluster"),
        "{}",
        stderr(&out)
    );
    dqlite_config(&env, &[format!("127.0.0.1:{}", free_port())], &["demo"], "");
    let t = Instant::now();
    let out = env.run(&["backup", "--offline"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("dial failed") || stderr(&out).contains("timed out"),
        "{}",
        stderr(&out)
    );
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
#[ignore = "needs dqlite, dqlite-demo: Debian package go-dqlite"]
fn restore_loads_the_dump_into_a_fresh_cluster() {
    let old = Cluster::start(3);
    let mut setup = String::from(
        "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT, data BLOB, score REAL)\n",
    );
    for i in 0..250 {
        setup.push_str(&format!(
            "INSERT INTO things VALUES ({i}, 'thing ''{i}''', X'{:02x}ff', {i}.5)\n",
            i % 256
        ));
    }
    setup.push_str("CREATE INDEX things_name ON things(name)\n");
    assert!(!old.sql("demo", &setup).contains("Error:"));
    let env = Env::new(1);
    dqlite_config(&env, &old.servers, &["demo"], "");
    let archive = env.backup();
    let want = old.rows(
        "demo",
        "SELECT id, name, hex(data), score FROM things ORDER BY id",
    );
    assert_eq!(want.len(), 250);
    drop(old);

    // The replacement host runs a fresh cluster; restore loads the dump into it.
    let new = Cluster::start(1);
    dqlite_config(
        &env,
        &new.servers,
        &["demo"],
        "[restore]\nstop_commands = []\nstart_commands = []\nprobe_ports = []\n",
    );
    let b = env.path("hostB");
    std::fs::create_dir_all(&b).unwrap();
    let out = env.run(&[
        "restore",
        "--yes",
        "--address",
        "10.0.0.9",
        "--target-root",
        b.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        new.rows(
            "demo",
            "SELECT id, name, hex(data), score FROM things ORDER BY id"
        ),
        want
    );
    assert_eq!(
        new.rows(
            "demo",
            "SELECT count(*) FROM sqlite_master WHERE name = 'things_name'"
        ),
        vec!["1"]
    );
}

/// Three state-servers, each a dqlite node with its own juju-brd (own state, archives, socket),
/// a schedule every 2 s: each slot is backed up exactly once, by the leader's daemon; when the
/// leader's node stops, the following slots are still backed up.
#[test]
#[ignore = "needs dqlite, dqlite-demo: Debian package go-dqlite"]
fn ha_one_archive_per_slot_and_takeover_when_the_leader_stops() {
    let mut cluster = Cluster::start(3);
    let env = Env::new(1);
    let mut daemons: Vec<Option<Daemon>> = Vec::new();
    for (i, me) in cluster.servers.clone().iter().enumerate() {
        let cfg = env.path(&format!("node{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "environment = \"ha\"\narchive_dir = \"archives-{i}\"\nstate_dir = \"state-{i}\"\n\
                 [files]\nroot = \"root\"\n\
                 [database]\nengine = \"dqlite\"\nservers = {:?}\ndatabases = [\"demo\"]\ntimeout = \"10s\"\n\
                 [schedule]\ncron = \"*/2 * * * * *\"\ncatch_up = false\n\
                 [retention]\nkeep_last = 1000\n\
                 [api]\nsocket = \"run/node{i}.sock\"\n\
                 [ha]\nself_address = \"{me}\"\nprobe_timeout = \"1s\"\n",
                cluster.servers
            ),
        )
        .unwrap();
        daemons.push(Some(Daemon::launch(
            &cfg,
            &env.path(&format!("run/node{i}.sock")),
            &env.path(&format!("node{i}.log")),
        )));
    }
    // Archive names per node, by slot (the name's timestamp).
    let slots = |node: usize| -> Vec<String> {
        std::fs::read_dir(env.path(&format!("archives-{node}")))
            .map(|rd| {
                rd.filter_map(|e| {
                    let n = e.unwrap().file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".tar.gz")
                        .map(|s| s.trim_start_matches("juju-backup-").to_string())
                })
                .collect()
            })
            .unwrap_or_default()
    };
    let all_slots = || -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = (0..3)
            .flat_map(|n| slots(n).into_iter().map(move |s| (s, n)))
            .collect();
        v.sort();
        v
    };
    wait_until(Duration::from_secs(60), "four backed-up slots", || {
        all_slots().len() >= 4
    });
    let leader = cluster.rows("demo", ".leader")[0].clone();
    let li = cluster.servers.iter().position(|s| *s == leader).unwrap();
    let before = all_slots();
    let mut names: Vec<&String> = before.iter().map(|(s, _)| s).collect();
    names.dedup();
    assert_eq!(
        names.len(),
        before.len(),
        "a slot was backed up twice: {before:?}"
    );
    assert!(
        before.iter().all(|(_, n)| *n == li),
        "not all by the leader (node {li}): {before:?}"
    );

    // Stop the leader's node (its dqlite and its juju-brd).
    let killed_at = std::time::SystemTime::now();
    cluster.nodes[li].kill().unwrap();
    let _ = cluster.nodes[li].wait();
    if let Some(d) = daemons[li].take() {
        d.kill9();
    }
    let stamp = |t: std::time::SystemTime| {
        chrono::DateTime::<chrono::Utc>::from(t)
            .format("%Y%m%d-%H%M%S")
            .to_string()
    };
    let cutoff = stamp(killed_at + Duration::from_secs(6));
    wait_until(
        Duration::from_secs(90),
        "three slots after the leader stopped",
        || all_slots().iter().filter(|(s, _)| *s > cutoff).count() >= 3,
    );
    let after: Vec<(String, usize)> = all_slots()
        .into_iter()
        .filter(|(s, _)| *s > cutoff)
        .collect();
    assert!(after.iter().all(|(_, n)| *n != li), "{after:?}");
    // The other daemons are killed when `daemons` drops.
    drop(daemons);
}

/// A drill of a dqlite archive loads every dumped database into a throwaway node of its own, never
/// the live cluster, and the live cluster is left as it was.
#[test]
#[ignore = "needs dqlite, dqlite-demo: Debian package go-dqlite"]
fn a_drill_loads_the_dump_into_a_throwaway_node_not_the_cluster() {
    let cluster = Cluster::start(1);
    let mut setup = String::from("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)\n");
    for i in 0..50 {
        setup.push_str(&format!("INSERT INTO t VALUES ({i}, 'row {i}')\n"));
    }
    assert!(!cluster.sql("demo", &setup).contains("Error:"));
    let env = Env::new(1);
    dqlite_config(&env, &cluster.servers, &["demo"], "");
    let archive = env.backup();
    // The live cluster changes after the backup: a drill must not put the old rows back.
    assert!(!cluster
        .sql("demo", "DELETE FROM t WHERE id < 10\n")
        .contains("Error:"));
    let out = env.run(&["drill", archive.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", common::stderr(&out));
    assert!(
        text.contains("loaded into a throwaway dqlite node: demo (50 rows)"),
        "{text}"
    );
    assert!(
        cluster
            .sql("demo", "SELECT count(*) FROM t\n")
            .contains("40"),
        "the drill touched the live cluster"
    );
}
