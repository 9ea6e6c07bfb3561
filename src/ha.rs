//! Several state-servers, one scheduled backup per slot.
//!
//! Every state-server runs juju-brd. For a scheduled slot, a node takes the backup when:
//! 1. `ha.prefer` is set and answers: only that node does;
//! 2. otherwise the database leader does (dqlite: the cluster's `.leader`; MongoDB: the replica
//!    set's primary, as `isMaster` reports it, so `ha.self_address` is this node's `host:37017`);
//! 3. if the leader cannot be determined, every node does — a duplicate archive is better than a
//!    slot silently lost.
//!
//! Triggered backups are not affected: they run where they are asked.

use std::time::Duration;

/// Whether this node takes the scheduled slot, and why (for the log). `engine` is the configured
/// database engine, asked for its leader.
pub fn takes_scheduled_slot(
    ha: &HaConfig,
    engine: Option<&dyn crate::db::Engine>,
) -> (bool, String) {
    let Some(me) = ha.self_address.as_deref() else {
        return (true, "single node (ha.self_address not set)".into());
    };
    if let Some(prefer) = ha.prefer.as_deref().filter(|p| !p.is_empty()) {
        if prefer == me {
            return (true, "this node is ha.prefer".into());
        }
        if answers(prefer, ha.probe_timeout) {
            return (false, format!("the preferred node {prefer} is up"));
        }
    }
    match leader(ha, engine) {
        Ok(l) if l == me => (true, "this node is the database leader".into()),
        Ok(l) => (false, format!("the database leader is {l}")),
        Err(e) => (
            true,
            format!(
                "cannot tell the database leader ({e}); backing up here so the slot is not lost"
            ),
        ),
    }
}

/// Which node takes scheduled backups, as this node sees it: `None` when this one does (or it
/// cannot tell, and so takes them too), else the database address of the one that does, and why.
/// A backup asked for from a workstation goes to that node.
pub fn backup_node(
    ha: &HaConfig,
    engine: Option<&dyn crate::db::Engine>,
) -> Option<(String, String)> {
    let me = ha.self_address.as_deref()?;
    if let Some(prefer) = ha.prefer.as_deref().filter(|p| !p.is_empty() && *p != me) {
        if answers(prefer, ha.probe_timeout) {
            return Some((
                prefer.to_string(),
                format!("the preferred node {prefer} is up"),
            ));
        }
    }
    match leader(ha, engine) {
        Ok(l) if l != me => Some((l.clone(), format!("the database leader is {l}"))),
        _ => None,
    }
}

fn answers(addr: &str, timeout: Duration) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map(|mut a| a.any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok()))
        .unwrap_or(false)
}

fn leader(ha: &HaConfig, engine: Option<&dyn crate::db::Engine>) -> Result<String, String> {
    engine
        .ok_or("no database engine is configured")?
        .leader(ha.probe_timeout.max(Duration::from_secs(5)))
        .map_err(|e| e.to_string())
}

// The `[ha]` config section, owned here; `config` composes the sections and validates them.
/// Several state-servers: which one takes each scheduled backup (see `ha`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's database address as the cluster knows it (dqlite: its node address). When
    /// set, scheduled backups run only on the database leader (or `prefer`).
    #[serde(default)]
    pub self_address: Option<String>,
    /// A node that takes scheduled backups whenever its database address answers.
    #[serde(default)]
    pub prefer: Option<String>,
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: std::time::Duration,
}

fn default_probe_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha(me: Option<&str>, prefer: Option<&str>) -> HaConfig {
        HaConfig {
            self_address: me.map(String::from),
            prefer: prefer.map(String::from),
            probe_timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn the_node_that_takes_backups_is_named_unless_it_is_this_one() {
        let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = up.local_addr().unwrap().to_string();
        // Single node, or this node preferred: here.
        assert_eq!(backup_node(&ha(None, Some(&up)), None), None);
        assert_eq!(backup_node(&ha(Some(&up), Some(&up)), None), None);
        // Another node preferred and up: that one.
        let (node, why) = backup_node(&ha(Some("10.9.9.9:1"), Some(&up)), None).unwrap();
        assert_eq!(node, up);
        assert!(why.contains("preferred"), "{why}");
        // The leader cannot be told (no engine): here, so a backup is never refused.
        assert_eq!(backup_node(&ha(Some("10.9.9.9:1"), None), None), None);
    }
}
