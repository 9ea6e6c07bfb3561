//! What Juju's own client records on an operator's machine about the environments it knows:
//! which one is current, and where its state-servers are. `juju-brd backup` run on a
//! workstation reads these files to find the state-server to back up, as `juju backup` did.
//!
//! Two eras, both read (formats from Juju's source, github.com/juju/juju):
//! - **Juju 1.x**: `$JUJU_HOME` (default `~/.juju`, `juju/osenv` `JujuHome`).
//!   `current-environment` holds the name `juju switch` chose (trimmed; `cmd/envcmd/files.go`
//!   `ReadCurrentEnvironment`); `environments/NAME.jenv` is YAML with `user`, `password`,
//!   `environ-uuid`, `server-uuid`, `state-servers` (API `host:port`s), `server-hostnames`,
//!   `ca-cert` and `bootstrap-config` (`environs/configstore/disk.go`, `EnvironInfoData`).
//!   The SSH key `juju ssh` uses is `$JUJU_HOME/ssh/juju_id_rsa`.
//! - **Juju 2 and later**: `$JUJU_DATA` (default `$XDG_DATA_HOME/juju`, else
//!   `~/.local/share/juju`; `juju/osenv` `JujuXDGDataHomeDir`). `controllers.yaml` has
//!   `controllers: {NAME: {uuid, api-endpoints, ca-cert, ...}}` and `current-controller`
//!   (`jujuclient/controllersfile.go`, `ControllerDetails` in `jujuclient/interface.go`);
//!   `JUJU_CONTROLLER` overrides the current one. The key is `$JUJU_DATA/ssh/juju_id_rsa`.
//!
//! The files are treated as untrusted input: each is read only if it is a regular file of at
//! most [`MAX_FILE`] bytes, names are checked before they become paths, and every address must
//! pass [`crate::ssh::valid_host`] before it reaches ssh (the others are reported, not used).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The most of any one client file that is read (real ones are a few KiB).
pub const MAX_FILE: u64 = 1 << 20;

/// Which Juju wrote the files an environment was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `~/.juju`, `.jenv` files.
    Juju1,
    /// `~/.local/share/juju`, `controllers.yaml`.
    Juju2,
}

impl std::fmt::Display for Era {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Era::Juju1 => "Juju 1.x",
            Era::Juju2 => "Juju 2+",
        })
    }
}

/// One environment (Juju 1.x) or controller (Juju 2+) as the client records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub name: String,
    pub era: Era,
    /// `environ-uuid` (1.x) or the controller's `uuid` (2+), when recorded.
    pub uuid: Option<String>,
    /// The state-servers' hosts, in the recorded order, without ports and without repeats.
    pub hosts: Vec<String>,
    /// Recorded addresses that are not usable hosts (refused, reported).
    pub refused: Vec<String>,
    /// The file it was read from.
    pub source: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum JujuClientError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("no current Juju environment: run `juju switch NAME` or set JUJU_ENV (known: {})", known_list(.known))]
    NoCurrent { known: Vec<(String, Era)> },
    #[error("unknown environment `{name}` ({source_of_name}); known: {}", known_list(.known))]
    Unknown {
        name: String,
        source_of_name: String,
        known: Vec<(String, Era)>,
    },
    #[error("`{name}` is recorded by both Juju 1.x ({}) and Juju 2+ ({}); remove the stale one", one.display(), two.display())]
    Ambiguous {
        name: String,
        one: PathBuf,
        two: PathBuf,
    },
    #[error("the current environment is unclear: Juju 1.x's current-environment says `{one}`, Juju 2+'s current-controller says `{two}`; set JUJU_ENV to the one to back up")]
    TwoCurrents { one: String, two: String },
    #[error("environment `{name}` ({}) records no usable state-server address{}", file.display(), refused_note(.refused))]
    NoAddress {
        name: String,
        file: PathBuf,
        refused: Vec<String>,
    },
}

fn known_list(known: &[(String, Era)]) -> String {
    if known.is_empty() {
        return "none: no Juju client files found".into();
    }
    known
        .iter()
        .map(|(n, e)| format!("{n} ({e})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn refused_note(refused: &[String]) -> String {
    if refused.is_empty() {
        String::new()
    } else {
        format!(" (refused: {})", refused.join(", "))
    }
}

/// Where the client files are: Juju 1.x's home and Juju 2+'s data directory.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub juju_home: PathBuf,
    pub juju_data: PathBuf,
}

/// How the environment to use was named, from the process environment.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `JUJU_ENV`.
    pub juju_env: Option<String>,
    /// `JUJU_CONTROLLER`.
    pub juju_controller: Option<String>,
}

impl Selection {
    pub fn from_env() -> Selection {
        let var = |k| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Selection {
            juju_env: var("JUJU_ENV"),
            juju_controller: var("JUJU_CONTROLLER"),
        }
    }
}

impl ClientFiles {
    /// The directories as Juju computes them from `JUJU_HOME`, `JUJU_DATA`, `XDG_DATA_HOME`
    /// and `HOME`.
    pub fn from_env() -> ClientFiles {
        let var = |k| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME").unwrap_or_else(|| PathBuf::from("/"));
        ClientFiles {
            juju_home: var("JUJU_HOME").unwrap_or_else(|| home.join(".juju")),
            juju_data: var("JUJU_DATA")
                .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("juju")))
                .unwrap_or_else(|| home.join(".local/share/juju")),
        }
    }

    /// The SSH private key Juju's client of `era` uses (`juju ssh`).
    pub fn ssh_key(&self, era: Era) -> PathBuf {
        self.dir(era).join("ssh/juju_id_rsa")
    }

    /// The known_hosts file kept beside that key.
    pub fn known_hosts(&self, era: Era) -> PathBuf {
        self.dir(era).join("ssh/known_hosts")
    }

    fn dir(&self, era: Era) -> &Path {
        match era {
            Era::Juju1 => &self.juju_home,
            Era::Juju2 => &self.juju_data,
        }
    }

    fn jenv(&self, name: &str) -> PathBuf {
        self.juju_home
            .join("environments")
            .join(format!("{name}.jenv"))
    }

    fn controllers_yaml(&self) -> PathBuf {
        self.juju_data.join("controllers.yaml")
    }

    /// Every environment both eras record, by name (for messages).
    pub fn known(&self) -> Result<Vec<(String, Era)>, JujuClientError> {
        let mut out = Vec::new();
        let dir = self.juju_home.join("environments");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_suffix(".jenv")
                        .filter(|s| valid_name(s))
                        .map(str::to_string)
                })
                .collect();
            names.sort();
            out.extend(names.into_iter().map(|n| (n, Era::Juju1)));
        }
        if let Some(c) = self.read_controllers()? {
            out.extend(c.controllers.into_keys().map(|n| (n, Era::Juju2)));
        }
        Ok(out)
    }

    /// The environment to use: `JUJU_ENV` when set, else `JUJU_CONTROLLER`, else the current
    /// one (1.x `current-environment`, 2+ `current-controller`; refused when both are set and
    /// differ), else Juju 1.x's default from `environments.yaml` (its `default:`, or its only
    /// environment), as Juju 1.x itself falls back (`cmd/envcmd` `GetDefaultEnvironment`). That
    /// last one comes after Juju 2+'s current controller: a Juju 1.x `environments.yaml` often
    /// outlives the move to Juju 2.
    pub fn resolve(&self, sel: &Selection) -> Result<Environment, JujuClientError> {
        let (name, why) = match (&sel.juju_env, &sel.juju_controller) {
            (Some(e), _) => (e.trim().to_string(), "JUJU_ENV".to_string()),
            (None, Some(c)) => (c.trim().to_string(), "JUJU_CONTROLLER".to_string()),
            (None, None) => {
                let one = self.current_environment()?;
                let two = self
                    .read_controllers()?
                    .and_then(|c| c.current_controller)
                    .filter(|c| !c.trim().is_empty());
                match (one, two) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(JujuClientError::TwoCurrents { one: a, two: b })
                    }
                    (Some(a), _) => (a, "Juju 1.x current-environment".into()),
                    (None, Some(b)) => (b, "Juju 2+ current-controller".into()),
                    (None, None) => match self.environments_default()? {
                        Some(d) => (d, "Juju 1.x environments.yaml default".into()),
                        None => {
                            return Err(JujuClientError::NoCurrent {
                                known: self.known()?,
                            })
                        }
                    },
                }
            }
        };
        self.named(&name, &why)
    }

    /// The environment called `name` (`source_of_name` says where the name came from). A Juju 2
    /// `controller:model` name is looked up by its controller.
    pub fn named(&self, name: &str, source_of_name: &str) -> Result<Environment, JujuClientError> {
        let unknown = || -> Result<Environment, JujuClientError> {
            Err(JujuClientError::Unknown {
                name: name.to_string(),
                source_of_name: source_of_name.to_string(),
                known: self.known()?,
            })
        };
        let one = if valid_name(name) {
            let path = self.jenv(name);
            match read_limited(&path)? {
                Some(text) => Some(parse_jenv(name, &text, &path)?),
                None => None,
            }
        } else {
            None
        };
        let controller = name.split_once(':').map_or(name, |(c, _)| c);
        let two = match self.read_controllers()? {
            Some(mut c) => c
                .controllers
                .remove(controller)
                .map(|d| environment_of_controller(controller, d, self.controllers_yaml())),
            None => None,
        };
        let env = match (one, two) {
            (Some(a), Some(b)) => {
                return Err(JujuClientError::Ambiguous {
                    name: name.to_string(),
                    one: a.source,
                    two: b.source,
                })
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return unknown(),
        };
        if env.hosts.is_empty() {
            return Err(JujuClientError::NoAddress {
                name: env.name,
                file: env.source,
                refused: env.refused,
            });
        }
        Ok(env)
    }

    fn current_environment(&self) -> Result<Option<String>, JujuClientError> {
        let path = self.juju_home.join("current-environment");
        Ok(read_limited(&path)?
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// Juju 1.x's default environment (`environs.ReadEnvironsBytes`): `default:` in
    /// `$JUJU_HOME/environments.yaml`, which must name one of its environments, else its only
    /// environment, else none.
    fn environments_default(&self) -> Result<Option<String>, JujuClientError> {
        let path = self.juju_home.join("environments.yaml");
        let Some(text) = read_limited(&path)? else {
            return Ok(None);
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        let file: EnvironmentsYaml =
            serde_yaml_ng::from_str(&text).map_err(|e| JujuClientError::File {
                path: path.clone(),
                message: format!("not a Juju 1.x environments.yaml: {e}"),
            })?;
        let default = file.default.filter(|d| !d.trim().is_empty());
        // `NAME:` with nothing under it is no environment to Juju (a nil map).
        let mut environments = file.environments;
        environments.retain(|_, v| !v.is_null());
        match default {
            Some(d) if environments.contains_key(&d) => Ok(Some(d)),
            Some(d) => Err(JujuClientError::File {
                path,
                message: format!("default environment `{d}` does not exist"),
            }),
            None if environments.len() == 1 => Ok(environments.into_keys().next()),
            None => Ok(None),
        }
    }

    fn read_controllers(&self) -> Result<Option<ControllersFile>, JujuClientError> {
        let path = self.controllers_yaml();
        match read_limited(&path)? {
            None => Ok(None),
            Some(text) => parse_controllers(&text, &path).map(Some),
        }
    }
}

/// A name that can be part of a file name: 1-128 of letters, digits, `-`, `_`, `.`, not
/// starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The file's text if it exists; refused when it is not a regular file, larger than
/// [`MAX_FILE`] or not UTF-8.
fn read_limited(path: &Path) -> Result<Option<String>, JujuClientError> {
    let fail = |message: String| JujuClientError::File {
        path: path.to_path_buf(),
        message,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(fail(format!("larger than {MAX_FILE} bytes; refused")));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| fail("not UTF-8 text".into()))
}

/// `environs/configstore/disk.go` `EnvironInfoData`: the fields juju-brd needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Jenv {
    #[serde(rename = "environ-uuid")]
    environ_uuid: Option<String>,
    #[serde(rename = "state-servers")]
    state_servers: Vec<String>,
    #[serde(rename = "server-hostnames")]
    server_hostnames: Vec<String>,
}

/// `jujuclient` `ControllerDetails`: the fields juju-brd needs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ControllerDetails {
    uuid: Option<String>,
    #[serde(rename = "api-endpoints")]
    api_endpoints: Vec<String>,
}

/// The part of Juju 1.x's `environments.yaml` that picks the default environment.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnvironmentsYaml {
    default: Option<String>,
    environments: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ControllersFile {
    controllers: BTreeMap<String, ControllerDetails>,
    #[serde(rename = "current-controller")]
    current_controller: Option<String>,
}

fn parse_jenv(name: &str, text: &str, path: &Path) -> Result<Environment, JujuClientError> {
    let jenv: Jenv = if text.trim().is_empty() {
        // Juju itself says: "empty environment information (possibly because bootstrap in
        // progress or interrupted)".
        Jenv::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| JujuClientError::File {
            path: path.to_path_buf(),
            message: format!("not a Juju 1.x .jenv file: {e}"),
        })?
    };
    let (hosts, refused) = hosts_of(jenv.state_servers.iter().chain(&jenv.server_hostnames));
    Ok(Environment {
        name: name.to_string(),
        era: Era::Juju1,
        uuid: jenv.environ_uuid.filter(|u| !u.is_empty()),
        hosts,
        refused,
        source: path.to_path_buf(),
    })
}

fn parse_controllers(text: &str, path: &Path) -> Result<ControllersFile, JujuClientError> {
    if text.trim().is_empty() {
        return Ok(ControllersFile::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| JujuClientError::File {
        path: path.to_path_buf(),
        message: format!("not a Juju controllers.yaml: {e}"),
    })
}

fn environment_of_controller(name: &str, d: ControllerDetails, source: PathBuf) -> Environment {
    let (hosts, refused) = hosts_of(&d.api_endpoints);
    Environment {
        name: name.to_string(),
        era: Era::Juju2,
        uuid: d.uuid.filter(|u| !u.is_empty()),
        hosts,
        refused,
        source,
    }
}

/// The hosts of API addresses (`host:port`, `[v6]:port`, or a bare host), in order, without
/// repeats; addresses whose host is not a valid one are returned apart.
fn hosts_of<'a>(addresses: impl IntoIterator<Item = &'a String>) -> (Vec<String>, Vec<String>) {
    let mut hosts: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    for a in addresses {
        match host_of(a) {
            Some(h) if crate::ssh::valid_host(&h) => {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
            _ => refused.push(a.escape_debug().to_string()),
        }
    }
    (hosts, refused)
}

/// The host part of an API address.
pub fn host_of(address: &str) -> Option<String> {
    let a = address.trim();
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return (after.is_empty() || port_ok(after.strip_prefix(':')?)).then(|| host.to_string());
    }
    if a.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(a.to_string());
    }
    match a.rsplit_once(':') {
        Some((host, port)) if port_ok(port) => Some(host.to_string()),
        Some(_) => None,
        None => Some(a.to_string()),
    }
}

fn port_ok(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|p| p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const JENV: &str =
        "user: admin\npassword: s3cret\nenviron-uuid: 0b5b3c4e-aaaa-4bbb-8ccc-111111111111\n\
state-servers:\n- 10.0.3.1:17070\n- '[fd00::1]:17070'\n- 10.0.3.1:17070\n\
server-hostnames:\n- ctl-0.maas:17070\n- '-oProxyCommand=x:17070'\n\
ca-cert: |\n  -----BEGIN CERTIFICATE-----\n  MIIB\n  -----END CERTIFICATE-----\n\
bootstrap-config:\n  name: prod\n  type: maas\n";

    const CONTROLLERS: &str = r#"controllers:
  lab:
    uuid: 7f1c2d3e-0000-4000-8000-222222222222
    api-endpoints: ['10.0.4.2:17070', '10.0.4.3:17070']
    ca-cert: |
      -----BEGIN CERTIFICATE-----
      -----END CERTIFICATE-----
    cloud: lxd
    agent-version: 2.9.42
  other:
    uuid: 7f1c2d3e-0000-4000-8000-333333333333
    api-endpoints: ['10.0.5.2:17070']
current-controller: lab
"#;

    fn files(dir: &Path) -> ClientFiles {
        ClientFiles {
            juju_home: dir.join("juju1"),
            juju_data: dir.join("juju2"),
        }
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn none() -> Selection {
        Selection::default()
    }

    #[test]
    fn addresses_give_hosts_and_odd_ones_are_refused() {
        assert_eq!(host_of("10.0.0.1:17070").as_deref(), Some("10.0.0.1"));
        assert_eq!(host_of("[fd00::1]:17070").as_deref(), Some("fd00::1"));
        assert_eq!(host_of("fd00::1").as_deref(), Some("fd00::1"));
        assert_eq!(host_of("ctl.maas").as_deref(), Some("ctl.maas"));
        assert_eq!(host_of("ctl.maas:port"), None);
        assert_eq!(host_of("[fd00::1"), None);
        let list: Vec<String> = ["10.0.0.1:1", "a b:1", "-x:1", "10.0.0.1:2", "h:1"]
            .map(String::from)
            .to_vec();
        let (hosts, refused) = hosts_of(&list);
        assert_eq!(hosts, ["10.0.0.1", "h"]);
        assert_eq!(refused, ["a b:1", "-x:1"]);
    }

    #[test]
    fn juju1_current_environment_and_jenv() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        write(&f.juju_home.join("current-environment"), "prod\n");
        write(&f.juju_home.join("environments/prod.jenv"), JENV);
        let env = f.resolve(&none()).unwrap();
        assert_eq!(env.name, "prod");
        assert_eq!(env.era, Era::Juju1);
        assert_eq!(
            env.uuid.as_deref(),
            Some("0b5b3c4e-aaaa-4bbb-8ccc-111111111111")
        );
        assert_eq!(env.hosts, ["10.0.3.1", "fd00::1", "ctl-0.maas"]);
        assert_eq!(env.refused, ["-oProxyCommand=x:17070"]);
        assert_eq!(f.ssh_key(env.era), d.path().join("juju1/ssh/juju_id_rsa"));
    }

    /// With no current environment or controller, Juju 1.x's `environments.yaml` decides, as in
    /// Juju 1.x: its `default:`, else its only environment.
    #[test]
    fn juju1_environments_yaml_default() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        write(&f.juju_home.join("environments/prod.jenv"), JENV);
        write(&f.juju_home.join("environments/lab.jenv"), JENV);
        let yaml = f.juju_home.join("environments.yaml");
        let two =
            "default: prod\nenvironments:\n  prod:\n    type: maas\n  lab:\n    type: local\n";
        write(&yaml, two);
        let env = f.resolve(&none()).unwrap();
        assert_eq!((env.name.as_str(), env.era), ("prod", Era::Juju1));
        // The only environment is the default (an empty entry is none).
        write(&yaml, "environments:\n  lab:\n    type: local\n  stub:\n");
        assert_eq!(f.resolve(&none()).unwrap().name, "lab");
        // Two and no default: none is current.
        write(&yaml, &two.replace("default: prod\n", ""));
        let err = f.resolve(&none()).unwrap_err().to_string();
        assert!(err.contains("no current Juju environment"), "{err}");
        // A default that is not there is Juju's error too.
        write(&yaml, &two.replace("default: prod", "default: gone"));
        let err = f.resolve(&none()).unwrap_err().to_string();
        assert!(
            err.contains("default environment `gone` does not exist"),
            "{err}"
        );
        // current-environment and Juju 2+'s current controller come first.
        write(&yaml, two);
        write(&f.juju_home.join("current-environment"), "lab\n");
        assert_eq!(f.resolve(&none()).unwrap().name, "lab");
        std::fs::remove_file(f.juju_home.join("current-environment")).unwrap();
        write(
            &f.juju_data.join("controllers.yaml"),
            "controllers:\n  ctl:\n    api-endpoints: ['10.1.1.1:17070']\ncurrent-controller: ctl\n",
        );
        assert_eq!(f.resolve(&none()).unwrap().name, "ctl");
    }

    #[test]
    fn juju2_controllers_yaml_current_and_juju_controller() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        write(&f.juju_data.join("controllers.yaml"), CONTROLLERS);
        let env = f.resolve(&none()).unwrap();
        assert_eq!((env.name.as_str(), env.era), ("lab", Era::Juju2));
        assert_eq!(env.hosts, ["10.0.4.2", "10.0.4.3"]);
        let sel = Selection {
            juju_controller: Some("other".into()),
            ..none()
        };
        assert_eq!(f.resolve(&sel).unwrap().hosts, ["10.0.5.2"]);
        // JUJU_ENV wins, and a Juju 2 `controller:model` name finds its controller.
        let sel = Selection {
            juju_env: Some("other:admin/default".into()),
            juju_controller: Some("lab".into()),
        };
        assert_eq!(f.resolve(&sel).unwrap().name, "other");
        assert_eq!(
            f.known_hosts(Era::Juju2),
            d.path().join("juju2/ssh/known_hosts")
        );
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        write(&f.juju_home.join("environments/prod.jenv"), JENV);
        write(&f.juju_data.join("controllers.yaml"), CONTROLLERS);
        let sel = Selection {
            juju_env: Some("nope".into()),
            ..none()
        };
        let e = f.resolve(&sel).unwrap_err().to_string();
        assert!(e.contains("unknown environment `nope` (JUJU_ENV)"), "{e}");
        assert!(
            e.contains("prod (Juju 1.x), lab (Juju 2+), other (Juju 2+)"),
            "{e}"
        );
        // Names that could leave the directory are never made into paths.
        let sel = Selection {
            juju_env: Some("../../etc/passwd".into()),
            ..none()
        };
        assert!(matches!(
            f.resolve(&sel),
            Err(JujuClientError::Unknown { .. })
        ));
    }

    #[test]
    fn no_current_environment_and_two_different_currents_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        let e = f.resolve(&none()).unwrap_err().to_string();
        assert!(e.contains("no current Juju environment"), "{e}");
        assert!(e.contains("none: no Juju client files found"), "{e}");
        write(&f.juju_home.join("current-environment"), "prod");
        write(&f.juju_home.join("environments/prod.jenv"), JENV);
        write(&f.juju_data.join("controllers.yaml"), CONTROLLERS);
        let e = f.resolve(&none()).unwrap_err();
        assert!(matches!(e, JujuClientError::TwoCurrents { .. }), "{e}");
    }

    #[test]
    fn hostile_or_broken_files_are_refused_naming_them() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        let jenv = f.juju_home.join("environments/big.jenv");
        write(&jenv, &"#".repeat(MAX_FILE as usize + 1));
        let sel = Selection {
            juju_env: Some("big".into()),
            ..none()
        };
        let e = f.resolve(&sel).unwrap_err().to_string();
        assert!(e.contains("big.jenv") && e.contains("refused"), "{e}");
        write(&jenv, "state-servers: {not: a list}\n");
        let e = f.resolve(&sel).unwrap_err().to_string();
        assert!(e.contains("not a Juju 1.x .jenv file"), "{e}");
        write(
            &jenv,
            "state-servers: ['-oProxyCommand=sh:22', 'a;b:17070']\n",
        );
        let e = f.resolve(&sel).unwrap_err().to_string();
        assert!(e.contains("no usable state-server address"), "{e}");
        std::fs::remove_file(&jenv).unwrap();
        std::fs::create_dir_all(&jenv).unwrap();
        let e = f.resolve(&sel).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        // An empty .jenv (an interrupted bootstrap) has no address.
        std::fs::remove_dir(&jenv).unwrap();
        write(&jenv, "");
        assert!(matches!(
            f.resolve(&sel),
            Err(JujuClientError::NoAddress { .. })
        ));
    }

    #[test]
    fn a_name_in_both_eras_is_ambiguous() {
        let d = tempfile::tempdir().unwrap();
        let f = files(d.path());
        write(&f.juju_home.join("environments/lab.jenv"), JENV);
        write(&f.juju_data.join("controllers.yaml"), CONTROLLERS);
        let sel = Selection {
            juju_env: Some("lab".into()),
            ..none()
        };
        assert!(matches!(
            f.resolve(&sel),
            Err(JujuClientError::Ambiguous { .. })
        ));
    }
}
