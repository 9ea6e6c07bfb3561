//! `juju-brd update-agents`: re-points every other machine of the environment at this
//! state-server, as Juju's own restore did. For each machine, over SSH with the state-server's
//! key: stop its agents, rewrite the address lists of every `/var/lib/juju/agents/*/agent.conf`
//! (the line-preserving rewrite restore uses for its own), reset unit relation `change-version`s,
//! start the agents and confirm they run. Machines are done in parallel, with a bound.
//!
//! Idempotent: a machine whose agents already point here is reported `already current` and left
//! alone, so running it again finishes only what an earlier run could not reach.

pub mod machines;
pub mod remote;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ssh::{Ssh, SshError};
pub use machines::Target;

/// The `[agents]` config section: how to reach machines and manage their agents.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// The user to log in as (Juju's machines: `ubuntu`, with passwordless sudo).
    #[serde(default = "default_user")]
    pub ssh_user: String,
    #[serde(default = "default_port")]
    pub ssh_port: u16,
    /// The private key; Juju's state-server key, restored from the archive, by default.
    #[serde(default = "default_key")]
    pub ssh_key: PathBuf,
    /// Host keys of the machines: recorded on first use (and reported), refused when changed.
    /// Default: `known_hosts` in the state directory.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The bound on all the work on one machine (connecting, stopping, rewriting, starting).
    #[serde(default = "default_machine_timeout", with = "humantime_serde")]
    pub machine_timeout: Duration,
    /// How many machines are updated at once.
    #[serde(default = "default_parallel")]
    pub parallel: usize,
    #[serde(flatten)]
    pub commands: AgentCommands,
}

/// Shell commands run on a machine for each agent, `{agent}` replaced by its name
/// (`machine-1`, `unit-mysql-0`). They run as root (through `sudo -n` unless the user is root).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AgentCommands {
    #[serde(default = "default_stop")]
    pub stop_command: String,
    #[serde(default = "default_start")]
    pub start_command: String,
    /// Exits 0 once the agent runs; polled each second until `running_timeout`.
    #[serde(default = "default_running")]
    pub running_command: String,
    #[serde(default = "default_running_timeout", with = "humantime_serde")]
    pub running_timeout: Duration,
}

// The defaults cover systemd (Juju 1.25 on xenial to 4.x) and upstart (Juju 1.x on trusty); an
// agent without a service of its own (unit agents since Juju 2.9 run inside the machine agent)
// is left to its machine agent.
fn default_stop() -> String {
    "if systemctl cat jujud-{agent}.service >/dev/null 2>&1; then systemctl stop jujud-{agent}; \
     elif [ -f /etc/init/jujud-{agent}.conf ]; then stop jujud-{agent}; fi"
        .into()
}
fn default_start() -> String {
    "if systemctl cat jujud-{agent}.service >/dev/null 2>&1; then systemctl start jujud-{agent}; \
     elif [ -f /etc/init/jujud-{agent}.conf ]; then start jujud-{agent}; fi"
        .into()
}
fn default_running() -> String {
    "if systemctl cat jujud-{agent}.service >/dev/null 2>&1; then systemctl is-active --quiet jujud-{agent}; \
     elif [ -f /etc/init/jujud-{agent}.conf ]; then status jujud-{agent} | grep -q running; fi"
        .into()
}
fn default_running_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_user() -> String {
    "ubuntu".into()
}
fn default_port() -> u16 {
    22
}
fn default_key() -> PathBuf {
    "/var/lib/juju/system-identity".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_machine_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_parallel() -> usize {
    8
}

impl Default for AgentCommands {
    fn default() -> Self {
        AgentCommands {
            stop_command: default_stop(),
            start_command: default_start(),
            running_command: default_running(),
            running_timeout: default_running_timeout(),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            ssh_user: default_user(),
            ssh_port: default_port(),
            ssh_key: default_key(),
            known_hosts: None,
            connect_timeout: default_connect_timeout(),
            machine_timeout: default_machine_timeout(),
            parallel: default_parallel(),
            commands: AgentCommands::default(),
        }
    }
}

impl AgentsConfig {
    /// Checks serde cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !valid_user(&self.ssh_user) {
            return Err((
                "agents.ssh_user",
                format!("{:?} is not a user name", self.ssh_user),
            ));
        }
        if !(1..=256).contains(&self.parallel) {
            return Err((
                "agents.parallel",
                format!("must be 1 to 256, not {}", self.parallel),
            ));
        }
        for (key, value, max) in [
            (
                "agents.connect_timeout",
                self.connect_timeout,
                Duration::from_secs(600),
            ),
            (
                "agents.machine_timeout",
                self.machine_timeout,
                crate::limits::DAY,
            ),
            (
                "agents.running_timeout",
                self.commands.running_timeout,
                crate::limits::DAY,
            ),
        ] {
            if value.is_zero() || value > max {
                return Err((
                    key,
                    format!("must be more than 0s and at most {}s", max.as_secs()),
                ));
            }
        }
        for (key, v) in [
            ("agents.stop_command", &self.commands.stop_command),
            ("agents.start_command", &self.commands.start_command),
            ("agents.running_command", &self.commands.running_command),
        ] {
            if v.trim().is_empty() {
                return Err((key, "must not be empty".into()));
            }
        }
        Ok(())
    }
}

/// A login name ssh cannot read as an option.
pub fn valid_user(user: &str) -> bool {
    (1..=32).contains(&user.len())
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ssh: Ssh,
    /// The address the agents are re-pointed at (this host).
    pub address: String,
    pub commands: AgentCommands,
    pub parallel: usize,
    pub machine_timeout: Duration,
    pub dry_run: bool,
}

/// What happened on one machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    Updated {
        agents: Vec<String>,
    },
    AlreadyCurrent {
        agents: Vec<String>,
    },
    /// Dry run: what a real run would change.
    WouldUpdate {
        agents: Vec<String>,
    },
    Unreachable {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

impl Outcome {
    /// Whether nothing is left to do on the machine.
    pub fn done(&self) -> bool {
        matches!(
            self,
            Outcome::Updated { .. } | Outcome::AlreadyCurrent { .. } | Outcome::WouldUpdate { .. }
        )
    }
}

/// One machine's line of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub machine: String,
    /// The address it was reached at (or the ones tried).
    pub address: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Its host key was not known and has been recorded.
    pub learned_host_key: bool,
    pub seconds: f64,
}

/// Updates every target, at most `settings.parallel` at a time; one report per target, in order.
/// `on_done` is called as each machine finishes (for progress).
pub fn update_all(
    targets: &[Target],
    settings: &Settings,
    on_done: &(dyn Fn(&Report) + Sync),
) -> Vec<Report> {
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<Report>>> = targets.iter().map(|_| Mutex::new(None)).collect();
    let workers = settings.parallel.clamp(1, targets.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(i) else { break };
                let report = update_machine(target, settings);
                on_done(&report);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every target has a report")
        })
        .collect()
}

/// The remote shell command: the script comes on stdin; root through sudo unless we are root.
fn remote_shell(user: &str) -> &'static str {
    if user == "root" {
        "sh -s"
    } else {
        "sudo -n sh -s"
    }
}

/// One machine: tries its addresses in order until one answers, then lists and updates.
pub fn update_machine(target: &Target, settings: &Settings) -> Report {
    let started = Instant::now();
    let deadline = started + settings.machine_timeout;
    let mut tried = Vec::new();
    let mut last_unreachable = None;
    for address in &target.addresses {
        tried.push(address.clone());
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut learned = false;
        let result = on_address(address, settings, left, &mut learned);
        let outcome = match result {
            Err(e) if e.is_unreachable() => {
                last_unreachable = Some(e.to_string());
                continue;
            }
            Err(e) => Outcome::Failed {
                reason: e.to_string(),
            },
            Ok(o) => o,
        };
        if learned {
            tracing::warn!(machine = %target.id, %address, known_hosts = %settings.ssh.known_hosts.display(), "host key seen for the first time; recorded");
        }
        return Report {
            machine: target.id.clone(),
            address: address.clone(),
            outcome,
            learned_host_key: learned,
            seconds: started.elapsed().as_secs_f64(),
        };
    }
    let reason = match (&last_unreachable, target.addresses.is_empty()) {
        (_, true) => "no usable address recorded".to_string(),
        (Some(r), _) => r.clone(),
        (None, _) => format!(
            "no time left within {}s",
            settings.machine_timeout.as_secs()
        ),
    };
    Report {
        machine: target.id.clone(),
        address: tried.join(", "),
        outcome: Outcome::Unreachable { reason },
        learned_host_key: false,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Errors on one address; `Unreachable` ones let the caller try the next address.
#[derive(Debug, thiserror::Error)]
enum MachineError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("{0}")]
    Protocol(String),
}

impl MachineError {
    fn is_unreachable(&self) -> bool {
        matches!(self, MachineError::Ssh(e) if e.is_unreachable())
    }
}

fn on_address(
    address: &str,
    settings: &Settings,
    left: Duration,
    learned: &mut bool,
) -> Result<Outcome, MachineError> {
    let shell = remote_shell(&settings.ssh.user);
    let cap = remote::MAX_LISTING_BYTES;
    let started = Instant::now();
    let listing = settings
        .ssh
        .run(address, shell, remote::LIST_SCRIPT.as_bytes(), left, cap)?;
    *learned |= listing.learned_host_key;
    let agents = remote::parse_listing(&listing.stdout).map_err(MachineError::Protocol)?;
    let mut changes = Vec::new();
    for a in &agents {
        let (new, n) = crate::agent_conf::repoint::rewrite(&a.text, &settings.address);
        if n > 0 && new != a.text {
            changes.push(remote::Change::new(a, new));
        }
    }
    let names = |v: &[remote::Change]| v.iter().map(|c| c.agent.clone()).collect::<Vec<_>>();
    if changes.is_empty() {
        return Ok(Outcome::AlreadyCurrent {
            agents: agents.into_iter().map(|a| a.agent).collect(),
        });
    }
    if settings.dry_run {
        return Ok(Outcome::WouldUpdate {
            agents: names(&changes),
        });
    }
    let script = remote::apply_script(&changes, &settings.commands);
    let left = left.saturating_sub(started.elapsed());
    let reply = settings
        .ssh
        .run(address, shell, script.as_bytes(), left, 4096)
        .map_err(|e| match e {
            // Reached a moment ago: a failure now is not "unreachable", it is a failed update.
            SshError::Unreachable { host, reason } => MachineError::Protocol(format!(
                "{host}: the connection failed during the update: {reason}"
            )),
            e => MachineError::Ssh(e),
        })?;
    *learned |= reply.learned_host_key;
    if !String::from_utf8_lossy(&reply.stdout).contains("juju-brd-done") {
        return Err(MachineError::Protocol(
            "the update script did not finish".into(),
        ));
    }
    Ok(Outcome::Updated {
        agents: names(&changes),
    })
}

/// Text a machine sent (a failing command's stderr) made safe for a terminal: one line, no
/// control characters.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The table `update-agents` and `restore` print.
pub fn table(reports: &[Report]) -> String {
    let mut rows = vec![[
        "MACHINE".to_string(),
        "ADDRESS".into(),
        "AGENTS".into(),
        "RESULT".into(),
    ]];
    for r in reports {
        let (agents, result) = match &r.outcome {
            Outcome::Updated { agents } => (agents.join(","), "updated".to_string()),
            Outcome::AlreadyCurrent { agents } => (agents.join(","), "already current".to_string()),
            Outcome::WouldUpdate { agents } => (agents.join(","), "would update".to_string()),
            Outcome::Unreachable { reason } => (String::new(), format!("unreachable: {reason}")),
            Outcome::Failed { reason } => (String::new(), format!("failed: {reason}")),
        };
        let result = if r.learned_host_key {
            format!("{result} (host key recorded on first use)")
        } else {
            result
        };
        rows.push([r.machine.clone(), r.address.clone(), agents, clean(&result)]);
    }
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for r in &rows {
        out.push_str(&format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0], r[1], r[2], r[3]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_up_and_names_every_result() {
        let reports = vec![
            Report {
                machine: "1".into(),
                address: "10.0.0.2".into(),
                outcome: Outcome::Updated {
                    agents: vec!["machine-1".into(), "unit-a-0".into()],
                },
                learned_host_key: true,
                seconds: 1.0,
            },
            Report {
                machine: "2".into(),
                address: "10.0.0.3".into(),
                outcome: Outcome::Unreachable {
                    reason: "Connection refused".into(),
                },
                learned_host_key: false,
                seconds: 1.0,
            },
        ];
        let t = table(&reports);
        assert!(t.starts_with("MACHINE"));
        assert!(t.contains("updated (host key recorded on first use)"));
        assert!(t.contains("unreachable: Connection refused"));
        assert!(!reports[1].outcome.done());
    }
}
