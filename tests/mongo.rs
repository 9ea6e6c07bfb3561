//! The MongoDB engine against a real `mongod`, when one is on PATH. Debian bookworm ships no
//! MongoDB server, so on CI this test says it was skipped; the command lines, credential handling
//! and password hygiene are unit-tested in `snapshot::db::mongo`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn mongodump_of_a_real_juju_db() {
    if !(on_path("mongod") && on_path("mongodump") && (on_path("mongo") || on_path("mongosh"))) {
        eprintln!("SKIPPED mongodump_of_a_real_juju_db: no mongod/mongodump/mongo shell on PATH");
        return;
    }
    let shell = if on_path("mongo") { "mongo" } else { "mongosh" };
    let env = common::Env::new(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = env.path("mongo-data");
    std::fs::create_dir_all(&data).unwrap();
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mongod = Command::new("mongod")
        .args([
            "--bind_ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--replSet",
            "juju",
            "--dbpath",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mongod = Stop(mongod);
    let end = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "mongod did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let setup = "rs.initiate(); sleep(2000); \
        db.getSiblingDB('admin').createUser({user: 'machine-0', pwd: 'fixture-password-0123456789', roles: ['root']}); \
        db.getSiblingDB('juju').machines.insertOne({_id: '0', series: 'focal'});";
    let st = Command::new(shell)
        .args(["--quiet", "--port", &port.to_string(), "--eval", setup])
        .status()
        .unwrap();
    assert!(st.success());
    // agent.conf of the fixture, pointed at this mongod; no TLS here, so a plain connection.
    let conf = env.root().join("var/lib/juju/agents/machine-0/agent.conf");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("stateport: 37017", &format!("stateport: {port}"));
    std::fs::write(&conf, text).unwrap();
    env.config("", "[database]\nengine = \"mongodb\"\n");
    let out = env.run(&["backup", "--offline"]);
    drop(mongod);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(!common::stderr(&out).contains("fixture-password"));
}
