//! The MongoDB engine against a real `mongod`. No Debian package (nor any other registry this
//! project installs from) ships MongoDB, so this test is ignored and ./test.sh leaves it out of
//! `--include-ignored` where mongod is missing, saying so; the command lines, credential handling
//! and password hygiene are unit-tested in `snapshot::db::mongo`.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

const MONGODB: &str =
    "no Debian package ships MongoDB; install MongoDB's own (./test.sh leaves this test out without it)";

#[test]
#[ignore = "needs mongod, mongodump and the mongo or mongosh shell: no Debian package ships MongoDB"]
fn mongodump_of_a_real_juju_db() {
    common::require_program("mongod", MONGODB);
    common::require_program("mongodump", MONGODB);
    let shell = common::find_program("mongo")
        .unwrap_or_else(|| common::require_program("mongosh", MONGODB));
    let env = common::Env::new(1);
    let port = common::free_port();
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
    common::wait_until(Duration::from_secs(30), "mongod to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let setup = "rs.initiate(); sleep(2000); \
        db.getSiblingDB('admin').createUser({user: 'machine-0', pwd: 'fixture-password-0123456789', roles: ['root']}); \
        db.getSiblingDB('juju').machines.insertOne({_id: '0', series: 'focal'});";
    let st = Command::new(&shell)
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
