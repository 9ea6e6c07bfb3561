//! Juju's machine agent config (`/var/lib/juju/agents/machine-N/agent.conf`): where a state-server
//! records who it is, its model and controller, and every state-server address.
//!
//! Read only what juju-brd needs; passwords are kept out of `Debug` so they cannot reach a log line.

pub mod repoint;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Default, Deserialize)]
pub struct AgentConf {
    #[serde(default)]
    pub tag: String,
    /// Juju 2+: `model-<uuid>`.
    #[serde(default)]
    pub model: String,
    /// Juju 1.x: `environment-<uuid>`.
    #[serde(default)]
    pub environment: String,
    #[serde(default)]
    pub controller: String,
    #[serde(default, rename = "upgradedToVersion")]
    pub upgraded_to_version: String,
    #[serde(default)]
    pub apiaddresses: Vec<String>,
    #[serde(default)]
    pub stateaddresses: Vec<String>,
    #[serde(default)]
    pub apiport: Option<u16>,
    #[serde(default)]
    pub stateport: Option<u16>,
    #[serde(default)]
    pub statepassword: String,
}

impl fmt::Debug for AgentConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConf")
            .field("tag", &self.tag)
            .field("model", &self.model_uuid())
            .field("controller", &self.controller_uuid())
            .field("version", &self.upgraded_to_version)
            .field("apiaddresses", &self.apiaddresses)
            .field("stateaddresses", &self.stateaddresses)
            .field("statepassword", &"<redacted>")
            .finish()
    }
}

impl AgentConf {
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| format!("agent.conf is not valid YAML: {e}"))
    }

    /// The first `agents/machine-*/agent.conf` under the host root, if any.
    pub fn find(root: &Path) -> Option<(PathBuf, AgentConf)> {
        let pattern = format!(
            "{}/var/lib/juju/agents/machine-*/agent.conf",
            glob::Pattern::escape(&root.to_string_lossy()).trim_end_matches('/')
        );
        let mut paths: Vec<PathBuf> = glob::glob(&pattern).ok()?.flatten().collect();
        paths.sort();
        let path = paths.into_iter().next()?;
        let text = std::fs::read_to_string(&path).ok()?;
        match AgentConf::parse(&text) {
            Ok(c) => Some((path, c)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read agent.conf");
                None
            }
        }
    }

    pub fn machine_id(&self) -> &str {
        self.tag.strip_prefix("machine-").unwrap_or(&self.tag)
    }

    pub fn model_uuid(&self) -> &str {
        if !self.model.is_empty() {
            self.model.strip_prefix("model-").unwrap_or(&self.model)
        } else {
            self.environment
                .strip_prefix("environment-")
                .unwrap_or(&self.environment)
        }
    }

    pub fn controller_uuid(&self) -> &str {
        self.controller
            .strip_prefix("controller-")
            .unwrap_or(&self.controller)
    }

    /// Every state-server address (api and state), host:port, without duplicates.
    pub fn addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self.apiaddresses.iter().chain(&self.stateaddresses) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "# format 2.0\ntag: machine-0\ndatadir: /var/lib/juju\nupgradedToVersion: 2.9.42\n\
        apiaddresses:\n- 10.0.0.5:17070\n- 10.0.0.6:17070\nstateaddresses:\n- 10.0.0.5:37017\n\
        statepassword: s3cr3t-pass\ncontroller: controller-c0ffee\nmodel: model-deadbeef\n\
        values:\n  AGENT_SERVICE_NAME: jujud-machine-0\n";

    #[test]
    fn parses_juju_agent_conf() {
        let c = AgentConf::parse(SAMPLE).unwrap();
        assert_eq!(c.machine_id(), "0");
        assert_eq!(c.model_uuid(), "deadbeef");
        assert_eq!(c.controller_uuid(), "c0ffee");
        assert_eq!(c.addresses().len(), 3);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t-pass"), "{dbg}");
    }

    #[test]
    fn juju1_environment_key() {
        let c = AgentConf::parse("tag: machine-0\nenvironment: environment-abc\n").unwrap();
        assert_eq!(c.model_uuid(), "abc");
    }
}
