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

use crate::config::Config;

/// Whether this node takes the scheduled slot, and why (for the log).
pub fn takes_scheduled_slot(cfg: &Config) -> (bool, String) {
    let Some(me) = cfg.ha.self_address.as_deref() else {
        return (true, "single node (ha.self_address not set)".into());
    };
    if let Some(prefer) = cfg.ha.prefer.as_deref().filter(|p| !p.is_empty()) {
        if prefer == me {
            return (true, "this node is ha.prefer".into());
        }
        if answers(prefer, cfg.ha.probe_timeout) {
            return (false, format!("the preferred node {prefer} is up"));
        }
    }
    match leader(cfg) {
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

fn answers(addr: &str, timeout: Duration) -> bool {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map(|mut a| a.any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok()))
        .unwrap_or(false)
}

fn leader(cfg: &Config) -> Result<String, String> {
    let engine = crate::db::from_config(&cfg.database, &cfg.files.root)
        .ok_or("no database engine is configured")?;
    engine
        .leader(cfg.ha.probe_timeout.max(Duration::from_secs(5)))
        .map_err(|e| e.to_string())
}
