//! MongoDB (Juju 1.x-3.x's juju-db), the way Juju backs it up: `mongodump --oplog` against the
//! local juju-db with the machine agent's credentials from `agent.conf`, then `admin` and `backups`
//! dropped from the dump. Restore is `mongorestore --drop --oplogReplay`, then the replica set is
//! forced to a single member at the new address.
//!
//! The password never reaches argv or a log: mongodump/mongorestore read it from a `--config` file
//! (mode 0600, in a private directory removed afterwards); the shell gets it in its script on
//! stdin. The snap's `juju-db.mongodump` is used when present.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{DbError, Engine, RestoreContext, RestoreInput};
use crate::agent_conf::AgentConf;
use crate::process::{self, ChildSpec};

const DEFAULT_PORT: u16 = 37017;
/// Databases Juju leaves out of its dumps.
const DROPPED: [&str; 2] = ["admin", "backups"];

const ENGINE: &str = "mongodb";

fn fail(message: String) -> DbError {
    DbError::Failed {
        engine: ENGINE,
        message,
    }
}

/// What is needed to talk to juju-db, from agent.conf.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
    pub port: u16,
    pub ca_cert: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("port", &self.port)
            .finish()
    }
}

impl Credentials {
    pub fn from_agent_conf(conf: &AgentConf, ca_cert: Option<String>) -> Result<Self, String> {
        if conf.tag.is_empty() {
            return Err("agent.conf has no `tag`".into());
        }
        if conf.statepassword.is_empty() {
            return Err("agent.conf has no `statepassword`".into());
        }
        Ok(Credentials {
            user: conf.tag.clone(),
            password: conf.statepassword.clone(),
            port: conf.stateport.unwrap_or(DEFAULT_PORT),
            ca_cert,
        })
    }

    /// The `--config` file mongodump/mongorestore read the password from.
    fn config_file(&self) -> String {
        format!(
            "password: \"{}\"\n",
            self.password.replace('\\', "\\\\").replace('"', "\\\"")
        )
    }
}

/// The first of `names` on PATH (the snap's prefixed tools first).
fn tool(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
            .map(|_| n.to_string())
    })
}

/// Common connection flags (no secret among them).
fn connection_args(c: &Credentials, config: &Path, ca: Option<&Path>) -> Vec<String> {
    let mut a = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        c.port.to_string(),
        "--ssl".into(),
        "--sslAllowInvalidHostnames".into(),
        "--authenticationDatabase".into(),
        "admin".into(),
        "--username".into(),
        c.user.clone(),
    ];
    match ca {
        Some(ca) => a.extend(["--sslCAFile".into(), ca.display().to_string()]),
        None => a.push("--sslAllowInvalidCertificates".into()),
    }
    a
}

pub fn dump_argv(
    bin: &str,
    c: &Credentials,
    config: &Path,
    ca: Option<&Path>,
    out: &Path,
) -> Vec<String> {
    let mut a = vec![bin.to_string()];
    a.extend(connection_args(c, config, ca));
    a.extend(["--oplog".into(), "--out".into(), out.display().to_string()]);
    a
}

pub fn restore_argv(
    bin: &str,
    c: &Credentials,
    config: &Path,
    ca: Option<&Path>,
    dump: &Path,
) -> Vec<String> {
    let mut a = vec![bin.to_string()];
    a.extend(connection_args(c, config, ca));
    // As Juju 2.x's restore (state/backups/db.go): small batches keep a big oplog replay within
    // mongod's limits.
    a.extend([
        "--drop".into(),
        "--oplogReplay".into(),
        "--batchSize".into(),
        "10".into(),
        dump.display().to_string(),
    ]);
    a
}

/// The shell script (fed on stdin) Juju runs before `mongorestore --oplogReplay` (juju/juju
/// `state/backups/db.go` `ensureOplogPermissions`, 2.x): an `oploger` role allowed any action on
/// any resource, granted to the machine agent's user and to `admin` (replaying an oplog applies
/// arbitrary operations), and the agent's user upserted with the password from the restored
/// agent.conf, so the agents can log in to the restored database.
pub fn prepare_script(c: &Credentials) -> String {
    let js = |s: &str| serde_json::to_string(s).expect("string serialises");
    format!(
        "var admin = db.getSiblingDB(\"admin\");\n\
         admin.auth({user}, {pw});\n\
         if (!admin.getRole(\"oploger\")) {{\n\
         \x20 admin.createRole({{role: \"oploger\", privileges: [{{resource: {{anyResource: true}}, actions: [\"anyAction\"]}}], roles: []}});\n\
         }}\n\
         if (admin.getUser({user})) {{\n\
         \x20 admin.updateUser({user}, {{pwd: {pw}}});\n\
         }} else {{\n\
         \x20 admin.createUser({{user: {user}, pwd: {pw}, roles: [\"root\"]}});\n\
         }}\n\
         admin.grantRolesToUser({user}, [{{role: \"oploger\", db: \"admin\"}}]);\n\
         if (admin.getUser(\"admin\")) {{\n\
         \x20 admin.grantRolesToUser(\"admin\", [{{role: \"oploger\", db: \"admin\"}}]);\n\
         }}\n",
        user = js(&c.user),
        pw = js(&c.password),
    )
}

/// One step of a MongoDB restore: a command (no secret on its argv), or a shell script fed on
/// stdin from a private file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreStep {
    Run(Vec<String>),
    Script { name: &'static str, body: String },
}

/// Where the restored state-server now lives: this host's address, and the machine (and model)
/// the archive says it is.
#[derive(Debug, Clone, Copy)]
pub struct NewHome<'a> {
    pub address: &'a str,
    pub machine: &'a str,
    pub model_uuid: &'a str,
}

/// The whole restore, in order, as Juju does it: prepare the users and the oplog role, restore
/// with oplog replay, force the replica set to this host alone.
pub fn restore_steps(
    mongorestore: &str,
    c: &Credentials,
    config: &Path,
    ca: Option<&Path>,
    dump: &Path,
    home: &NewHome,
) -> Vec<RestoreStep> {
    vec![
        RestoreStep::Script {
            name: "prepare.js",
            body: prepare_script(c),
        },
        RestoreStep::Run(restore_argv(mongorestore, c, config, ca, dump)),
        RestoreStep::Script {
            name: "reinitiate.js",
            body: reinitiate_script(c, home.address),
        },
        RestoreStep::Script {
            name: "readdress.js",
            body: readdress_script(c, home),
        },
    ]
}

/// The shell script (fed on stdin) that makes the database record this host as the
/// state-server, as Juju's restore did (state/backups/restore.go: the machine's provider and
/// machine addresses, then the API host ports): the restored machine's address documents, and
/// `apiHostPorts` / `apiHostPortsForAgents` (collection `controllers`, Juju 2+; `stateServers`,
/// Juju 1.x) with the ports they had. Otherwise the controller hands agents the old address.
pub fn readdress_script(c: &Credentials, home: &NewHome) -> String {
    let NewHome {
        address,
        machine,
        model_uuid,
    } = *home;
    let js = |s: &str| serde_json::to_string(s).expect("string serialises");
    let kind = if address.contains(':') {
        "ipv6"
    } else {
        "ipv4"
    };
    format!(
        "db.getSiblingDB(\"admin\").auth({user}, {pw});\n\
         var j = db.getSiblingDB(\"juju\");\n\
         var a = {{value: {addr}, addresstype: {kind}, networkscope: \"local-cloud\", origin: \"provider\"}};\n\
         var m = {{value: {addr}, addresstype: {kind}, networkscope: \"local-cloud\", origin: \"machine\"}};\n\
         var q = {{machineid: {machine}}};\n\
         if ({model} !== \"\") {{ q[\"$or\"] = [{{\"model-uuid\": {model}}}, {{\"env-uuid\": {model}}}]; }}\n\
         j.machines.update(q, {{$set: {{addresses: [a], machineaddresses: [m], preferredprivateaddress: a, preferredpublicaddress: a}}}}, {{multi: true}});\n\
         [\"controllers\", \"stateServers\"].forEach(function (c) {{\n\
         \x20 j.getCollection(c).find({{_id: {{$in: [\"apiHostPorts\", \"apiHostPortsForAgents\"]}}}}).forEach(function (d) {{\n\
         \x20   var port = 17070;\n\
         \x20   try {{ port = d.apihostports[0][0].port || port; }} catch (e) {{}}\n\
         \x20   j.getCollection(c).update({{_id: d._id}}, {{$set: {{apihostports: [[{{value: {addr}, addresstype: {kind}, networkscope: \"local-cloud\", port: port}}]]}}}});\n\
         \x20 }});\n\
         }});\n",
        user = js(&c.user),
        pw = js(&c.password),
        addr = js(address),
        kind = js(kind),
        machine = js(machine),
        model = js(model_uuid),
    )
}

/// The shell script (fed on stdin) that forces juju-db's replica set down to this host alone.
pub fn reinitiate_script(c: &Credentials, address: &str) -> String {
    let js = |s: &str| serde_json::to_string(s).expect("string serialises");
    format!(
        "db.getSiblingDB(\"admin\").auth({user}, {pw});\n\
         var cfg = rs.conf();\n\
         cfg.members = [{{_id: 1, host: {host}}}];\n\
         rs.reconfig(cfg, {{force: true}});\n",
        user = js(&c.user),
        pw = js(&c.password),
        host = js(&format!("{address}:{}", c.port)),
    )
}

/// Marks the line of the primary query's output we read; anything else the shell prints is noise.
const PRIMARY_MARK: &str = "juju-brd-primary:";

/// The shell script (fed on stdin) that prints the replica set's primary as `host:port`.
/// `isMaster` rather than `hello`: Juju 1.x ships a MongoDB that has no `hello`.
pub fn primary_script(c: &Credentials) -> String {
    let js = |s: &str| serde_json::to_string(s).expect("string serialises");
    format!(
        "db.getSiblingDB(\"admin\").auth({user}, {pw});\n\
         var r = db.getSiblingDB(\"admin\").isMaster();\n\
         print({mark} + (r.primary || \"\"));\n",
        user = js(&c.user),
        pw = js(&c.password),
        mark = js(PRIMARY_MARK),
    )
}

/// The primary from the query's stdout, if the replica set has one.
pub fn parse_primary(stdout: &str) -> Option<String> {
    parse_marked(stdout, PRIMARY_MARK)
}

/// The value printed after `mark` on a line of the shell's output.
fn parse_marked(stdout: &str, mark: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(mark))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
}

const VERSION_MARK: &str = "juju-brd-mongo-version:";

/// The shell script (fed on stdin) that prints the server's version.
fn version_script(c: &Credentials) -> String {
    let js = |s: &str| serde_json::to_string(s).expect("string serialises");
    format!(
        "db.getSiblingDB(\"admin\").auth({user}, {pw});\nprint({mark} + db.version());\n",
        user = js(&c.user),
        pw = js(&c.password),
        mark = js(VERSION_MARK),
    )
}

/// The installed mongod's version (`db version v4.4.24` -> `4.4.24`).
fn installed_mongod_version() -> Option<String> {
    let argv = vec![
        tool(&["juju-db.mongod", "mongod"])?,
        "--version".to_string(),
    ];
    let mut out = tempfile::tempfile().ok()?;
    let mut spec = ChildSpec::new("mongod --version", &argv, Duration::from_secs(10));
    spec.stdout = Stdio::from(out.try_clone().ok()?);
    process::run(spec).ok()?;
    let mut text = String::new();
    std::io::Seek::rewind(&mut out).ok()?;
    std::io::Read::read_to_string(&mut out, &mut text).ok()?;
    parse_mongod_version(&text)
}

pub fn parse_mongod_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("db version v"))
        .map(|v| v.trim().to_string())
}

/// `4.4.24` and `4.4.1` are; `4.4` and `5.0` are not.
pub fn same_major_minor(a: &str, b: &str) -> bool {
    let mm = |v: &str| {
        let mut it = v.trim_start_matches('v').split('.');
        (it.next().map(str::to_string), it.next().map(str::to_string))
    };
    let (x, y) = (mm(a), mm(b));
    x.0.is_some() && x.1.is_some() && x == y
}

/// A private directory holding the config (password) and CA files for one run; removed on drop.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new(c: &Credentials) -> Result<Self, DbError> {
        let dir = tempfile::Builder::new()
            .prefix("juju-brd-mongo-")
            .tempdir()
            .map_err(DbError::io(
                ENGINE,
                "create a private directory in",
                &std::env::temp_dir(),
            ))?;
        let write = |name: &str, body: &str| -> Result<(), DbError> {
            let path = dir.path().join(name);
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(body.as_bytes()))
                .map_err(DbError::io(ENGINE, "write", &path))
        };
        write("tool.yaml", &c.config_file())?;
        if let Some(ca) = &c.ca_cert {
            write("ca.pem", ca)?;
        }
        Ok(Secrets { dir })
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("tool.yaml")
    }
    fn ca(&self) -> Option<PathBuf> {
        let p = self.dir.path().join("ca.pem");
        p.exists().then_some(p)
    }
}

/// Whether the tools a restore needs are installed (mongorestore and a mongo shell).
pub fn restore_tools_installed() -> bool {
    tool(&["juju-db.mongorestore", "mongorestore"]).is_some()
        && tool(&["juju-db.mongo", "mongo", "mongosh"]).is_some()
}

#[derive(Debug, Clone)]
pub struct MongoEngine {
    /// Host root where `/var/lib/juju/agents/machine-*/agent.conf` is read.
    pub root: PathBuf,
    pub timeout: Duration,
}

impl MongoEngine {
    fn credentials(&self) -> Result<Credentials, DbError> {
        let (path, conf) = AgentConf::find(&self.root).ok_or_else(|| {
            fail(
                "no /var/lib/juju/agents/machine-*/agent.conf to read juju-db credentials from"
                    .into(),
            )
        })?;
        let ca = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&t).ok())
            .and_then(|v| v.get("cacert").and_then(|c| c.as_str()).map(String::from));
        Credentials::from_agent_conf(&conf, ca)
            .map_err(|e| fail(format!("{}: {e}", path.display())))
    }

    /// Restores a dump directory into the local juju-db and makes it a one-member replica set at
    /// `address`.
    pub fn restore_dump(
        &self,
        dump: &Path,
        home: &NewHome,
        cancel: &AtomicBool,
    ) -> Result<(), DbError> {
        let c = self.credentials()?;
        let secrets = Secrets::new(&c)?;
        let bin = tool(&["juju-db.mongorestore", "mongorestore"])
            .ok_or_else(|| fail("mongorestore is not installed".into()))?;
        let ca = secrets.ca();
        for step in restore_steps(&bin, &c, &secrets.config(), ca.as_deref(), dump, home) {
            match step {
                RestoreStep::Run(argv) => {
                    let mut spec = ChildSpec::new("mongorestore", &argv, self.timeout);
                    spec.cancel = Some(cancel);
                    process::run(spec)?;
                }
                RestoreStep::Script { name, body } => {
                    self.shell(&c, &secrets, name, &body, Stdio::null())?
                }
            }
        }
        Ok(())
    }

    /// The replica set's primary (`host:port`), asked of the local juju-db: every member knows
    /// it. Used to pick the one HA node that takes a scheduled backup.
    pub fn primary(&self) -> Result<String, DbError> {
        let c = self.credentials()?;
        let secrets = Secrets::new(&c)?;
        let out_path = secrets.dir.path().join("primary.out");
        let out = fs::File::create(&out_path).map_err(DbError::io(ENGINE, "create", &out_path))?;
        self.shell(
            &c,
            &secrets,
            "primary.js",
            &primary_script(&c),
            Stdio::from(out),
        )?;
        let text = fs::read_to_string(&out_path).map_err(DbError::io(ENGINE, "read", &out_path))?;
        parse_primary(&text).ok_or_else(|| fail("the replica set reports no primary".into()))
    }

    /// Runs `script` (it holds the password: a private file on stdin, never argv) in the mongo
    /// shell against the local juju-db.
    fn shell(
        &self,
        c: &Credentials,
        secrets: &Secrets,
        name: &str,
        script: &str,
        stdout: Stdio,
    ) -> Result<(), DbError> {
        let shell = tool(&["juju-db.mongo", "mongo", "mongosh"])
            .ok_or_else(|| fail("no mongo shell is installed".into()))?;
        let path = secrets.dir.path().join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(script.as_bytes()))
            .map_err(DbError::io(ENGINE, "write", &path))?;
        let argv = vec![
            shell,
            "--quiet".into(),
            "--port".into(),
            c.port.to_string(),
            "--ssl".into(),
            "--sslAllowInvalidCertificates".into(),
            "admin".into(),
        ];
        let mut spec = ChildSpec::new("mongo shell", &argv, self.timeout);
        spec.stdin =
            Stdio::from(fs::File::open(&path).map_err(DbError::io(ENGINE, "open", &path))?);
        spec.stdout = stdout;
        process::run(spec)?;
        Ok(())
    }
}

impl Engine for MongoEngine {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn inventory(&self, dump_dir: &Path) -> Result<Vec<super::Machine>, DbError> {
        super::inventory::from_mongo_dump(dump_dir).map_err(fail)
    }

    fn plan_restore(&self, input: &RestoreInput) -> Result<String, String> {
        if !restore_tools_installed() {
            return Err(
                "the dump is a MongoDB dump and mongorestore or the mongo shell is not installed"
                    .into(),
            );
        }
        // As Juju's restore: a dump loads only into the same MongoDB major.minor.
        if let Some(dumped) = input.recorded_version {
            let here = installed_mongod_version().ok_or(
                "the archive records its MongoDB version, and this host's cannot be read \
                 (no mongod or juju-db.mongod on PATH)",
            )?;
            if !same_major_minor(dumped, &here) {
                return Err(format!(
                    "the dump is from MongoDB {dumped}, this host runs {here}: a dump is \
                     restored only into the same major.minor version, as Juju does"
                ));
            }
        }
        Ok("dump/ -> juju-db (mongorestore --drop --oplogReplay, replica set re-initiated at this host's address)".into())
    }

    fn restore(&self, ctx: &mut RestoreContext) -> Result<(), DbError> {
        for argv in ctx.database_start_commands.iter().filter(|c| !c.is_empty()) {
            let mut spec = ChildSpec::new("starting juju-db", argv, Duration::from_secs(300));
            spec.starts_services = true;
            process::run(spec)?;
        }
        let home = NewHome {
            address: ctx.address,
            machine: ctx.machine_id,
            model_uuid: ctx.model_uuid,
        };
        self.restore_dump(ctx.staged_dump, &home, ctx.cancel)
    }

    /// `db.version()` of the local juju-db, asked at dump time (for restore's check).
    fn server_version(&self) -> Option<String> {
        let c = self.credentials().ok()?;
        let secrets = Secrets::new(&c).ok()?;
        let out_path = secrets.dir.path().join("version.out");
        let out = fs::File::create(&out_path).ok()?;
        self.shell(
            &c,
            &secrets,
            "version.js",
            &version_script(&c),
            Stdio::from(out),
        )
        .ok()?;
        parse_marked(&fs::read_to_string(&out_path).ok()?, VERSION_MARK)
    }

    fn leader(&self, timeout: Duration) -> Result<String, DbError> {
        MongoEngine {
            timeout,
            ..self.clone()
        }
        .primary()
    }

    fn dump(&self, out_dir: &Path, cancel: &AtomicBool) -> Result<(), DbError> {
        let c = self.credentials()?;
        let secrets = Secrets::new(&c)?;
        let bin = tool(&["juju-db.mongodump", "mongodump"]).ok_or_else(|| {
            fail(
                "mongodump is not installed (neither juju-db.mongodump nor mongodump is on PATH)"
                    .into(),
            )
        })?;
        let argv = dump_argv(
            &bin,
            &c,
            &secrets.config(),
            secrets.ca().as_deref(),
            out_dir,
        );
        let mut spec = ChildSpec::new("mongodump", &argv, self.timeout);
        spec.cancel = Some(cancel);
        process::run(spec)?;
        for db in DROPPED {
            let p = out_dir.join(db);
            if p.exists() {
                fs::remove_dir_all(&p).map_err(DbError::io(ENGINE, "drop from the dump", &p))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        let conf =
            AgentConf::parse("tag: machine-0\nstatepassword: 'p\"a$s w0rd'\nstateport: 37018\n")
                .unwrap();
        Credentials::from_agent_conf(&conf, None).unwrap()
    }

    #[test]
    fn primary_query_quotes_the_password_and_its_answer_parses() {
        let c = creds();
        let script = primary_script(&c);
        assert!(script.contains(r#""p\"a$s w0rd""#), "{script}");
        assert!(script.contains("isMaster()"));
        assert_eq!(
            parse_primary("MongoDB shell version v4.4\njuju-brd-primary:10.0.0.2:37017\n"),
            Some("10.0.0.2:37017".into())
        );
        assert_eq!(parse_primary("juju-brd-primary:\n"), None);
        assert_eq!(parse_primary("Error: not authorized\n"), None);
    }

    #[test]
    fn command_lines_carry_no_password() {
        let c = creds();
        let d = dump_argv(
            "mongodump",
            &c,
            Path::new("/run/x/tool.yaml"),
            None,
            Path::new("/stage/dump"),
        );
        assert_eq!(d[0], "mongodump");
        assert!(d.windows(2).any(|w| w == ["--config", "/run/x/tool.yaml"]));
        assert!(d.windows(2).any(|w| w == ["--port", "37018"]));
        assert!(d.windows(2).any(|w| w == ["--username", "machine-0"]));
        assert!(d.contains(&"--oplog".to_string()));
        assert!(!d.join(" ").contains("w0rd"));
        let r = restore_argv(
            "juju-db.mongorestore",
            &c,
            Path::new("/c"),
            Some(Path::new("/ca.pem")),
            Path::new("/d"),
        );
        assert!(r.contains(&"--drop".to_string()) && r.contains(&"--oplogReplay".to_string()));
        assert!(r.windows(2).any(|w| w == ["--sslCAFile", "/ca.pem"]));
        assert!(!r.join(" ").contains("w0rd"));
        assert!(!format!("{c:?}").contains("w0rd"));
    }

    /// The exact sequence of a restore, recorded: a change to it is a change to what is run
    /// against a production juju-db, and shows up here.
    #[test]
    fn the_restore_sequence_is_juju_s() {
        let c = creds();
        let steps = restore_steps(
            "mongorestore",
            &c,
            Path::new("/run/s/tool.yaml"),
            None,
            Path::new("/t/dump"),
            &NewHome {
                address: "10.0.0.9",
                machine: "0",
                model_uuid: "c0ffee",
            },
        );
        let shown: Vec<String> = steps
            .iter()
            .map(|s| match s {
                RestoreStep::Run(argv) => format!("run: {}", argv.join(" ")),
                RestoreStep::Script { name, body } => format!("{name}:\n{body}"),
            })
            .collect();
        let want = [
            "prepare.js:\n\
             var admin = db.getSiblingDB(\"admin\");\n\
             admin.auth(\"machine-0\", \"p\\\"a$s w0rd\");\n\
             if (!admin.getRole(\"oploger\")) {\n\
             \x20 admin.createRole({role: \"oploger\", privileges: [{resource: {anyResource: true}, actions: [\"anyAction\"]}], roles: []});\n\
             }\n\
             if (admin.getUser(\"machine-0\")) {\n\
             \x20 admin.updateUser(\"machine-0\", {pwd: \"p\\\"a$s w0rd\"});\n\
             } else {\n\
             \x20 admin.createUser({user: \"machine-0\", pwd: \"p\\\"a$s w0rd\", roles: [\"root\"]});\n\
             }\n\
             admin.grantRolesToUser(\"machine-0\", [{role: \"oploger\", db: \"admin\"}]);\n\
             if (admin.getUser(\"admin\")) {\n\
             \x20 admin.grantRolesToUser(\"admin\", [{role: \"oploger\", db: \"admin\"}]);\n\
             }\n",
            "run: mongorestore --config /run/s/tool.yaml --host 127.0.0.1 --port 37018 --ssl \
             --sslAllowInvalidHostnames --authenticationDatabase admin --username machine-0 \
             --sslAllowInvalidCertificates --drop --oplogReplay --batchSize 10 /t/dump",
            "reinitiate.js:\n\
             db.getSiblingDB(\"admin\").auth(\"machine-0\", \"p\\\"a$s w0rd\");\n\
             var cfg = rs.conf();\n\
             cfg.members = [{_id: 1, host: \"10.0.0.9:37018\"}];\n\
             rs.reconfig(cfg, {force: true});\n",
            "readdress.js:\n\
             db.getSiblingDB(\"admin\").auth(\"machine-0\", \"p\\\"a$s w0rd\");\n\
             var j = db.getSiblingDB(\"juju\");\n\
             var a = {value: \"10.0.0.9\", addresstype: \"ipv4\", networkscope: \"local-cloud\", origin: \"provider\"};\n\
             var m = {value: \"10.0.0.9\", addresstype: \"ipv4\", networkscope: \"local-cloud\", origin: \"machine\"};\n\
             var q = {machineid: \"0\"};\n\
             if (\"c0ffee\" !== \"\") { q[\"$or\"] = [{\"model-uuid\": \"c0ffee\"}, {\"env-uuid\": \"c0ffee\"}]; }\n\
             j.machines.update(q, {$set: {addresses: [a], machineaddresses: [m], preferredprivateaddress: a, preferredpublicaddress: a}}, {multi: true});\n\
             [\"controllers\", \"stateServers\"].forEach(function (c) {\n\
             \x20 j.getCollection(c).find({_id: {$in: [\"apiHostPorts\", \"apiHostPortsForAgents\"]}}).forEach(function (d) {\n\
             \x20   var port = 17070;\n\
             \x20   try { port = d.apihostports[0][0].port || port; } catch (e) {}\n\
             \x20   j.getCollection(c).update({_id: d._id}, {$set: {apihostports: [[{value: \"10.0.0.9\", addresstype: \"ipv4\", networkscope: \"local-cloud\", port: port}]]}});\n\
             \x20 });\n\
             });\n",
        ];
        assert_eq!(shown, want);
        // Only scripts (fed on stdin from private files) hold the password.
        for s in &steps {
            if let RestoreStep::Run(argv) = s {
                assert!(!argv.join(" ").contains("w0rd"));
            }
        }
    }

    #[test]
    fn versions_are_compared_by_major_and_minor() {
        assert_eq!(
            parse_mongod_version("db version v4.4.24\nBuild Info: {...}\n").as_deref(),
            Some("4.4.24")
        );
        assert!(same_major_minor("4.4.24", "4.4.1"));
        assert!(!same_major_minor("4.4.24", "5.0.3"));
        assert!(!same_major_minor("4.4", "4.0.0"));
        assert!(!same_major_minor("", ""));
        assert_eq!(
            parse_marked("noise\njuju-brd-mongo-version: 4.4.24\n", VERSION_MARK).as_deref(),
            Some("4.4.24")
        );
    }

    #[test]
    fn config_file_and_script_quote_the_password() {
        let c = creds();
        assert_eq!(c.config_file(), "password: \"p\\\"a$s w0rd\"\n");
        let s = reinitiate_script(&c, "10.0.0.9");
        assert!(s.contains("auth(\"machine-0\", \"p\\\"a$s w0rd\")"), "{s}");
        assert!(s.contains("host: \"10.0.0.9:37018\""), "{s}");
    }

    #[test]
    fn secrets_file_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let s = Secrets::new(&creds()).unwrap();
        let p = s.config();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn missing_credentials_are_named() {
        let conf = AgentConf::parse("tag: machine-0\n").unwrap();
        assert_eq!(
            Credentials::from_agent_conf(&conf, None).unwrap_err(),
            "agent.conf has no `statepassword`"
        );
    }
}
