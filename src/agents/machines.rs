//! Which machines to update: the inventory an archive recorded, or a `--machines FILE` the
//! operator wrote (JSON as `show --json` prints it, or one `ID ADDRESS [ADDRESS...]` per line).
//!
//! Everything here comes from a file or an archive and is checked: machine ids are short and
//! plain, addresses are ones ssh cannot read as options; loopback and link-local addresses are
//! dropped (they name the machine itself, never a way to reach it).

use crate::db::Machine;
use crate::ssh::valid_host;

/// A machine to update and the addresses to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub addresses: Vec<String>,
}

const MAX_MACHINES: usize = 100_000;

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/:._-".contains(&b))
}

/// `10.0.0.5`, `10.0.0.5:22`, `[fd00::1]:22`, `10.0.0.5/24` -> the host, if usable.
fn usable_host(addr: &str) -> Option<String> {
    let bare = addr.split('/').next().unwrap_or(addr);
    let host = crate::snapshot::host_of(bare);
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        let link_local = match ip {
            std::net::IpAddr::V4(v4) => v4.is_link_local(),
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_loopback() || ip.is_unspecified() || link_local {
            return None;
        }
    }
    valid_host(&host).then_some(host)
}

/// The machines to update from an inventory: every one that is not a state-server.
pub fn from_inventory(machines: &[Machine]) -> Result<Vec<Target>, String> {
    if machines.len() > MAX_MACHINES {
        return Err(format!(
            "the inventory lists {} machines, more than {MAX_MACHINES}",
            machines.len()
        ));
    }
    let mut out: Vec<Target> = Vec::new();
    for m in machines.iter().filter(|m| !m.state_server) {
        if !valid_id(&m.id) {
            return Err(format!(
                "the inventory names a machine {:?}, which is not a machine id",
                m.id
            ));
        }
        let mut addresses: Vec<String> = Vec::new();
        for a in &m.addresses {
            match usable_host(a) {
                Some(h) if !addresses.contains(&h) => addresses.push(h),
                Some(_) => {}
                None => {
                    tracing::debug!(machine = %m.id, address = ?a, "address not usable over ssh; skipped")
                }
            }
        }
        if let Some(t) = out.iter_mut().find(|t| t.id == m.id) {
            for a in addresses {
                if !t.addresses.contains(&a) {
                    t.addresses.push(a);
                }
            }
        } else {
            out.push(Target {
                id: m.id.clone(),
                addresses,
            });
        }
    }
    Ok(out)
}

/// Reads `--machines FILE`: a JSON list of machines (`id`, `addresses`, optional
/// `state_server`), or lines of `ID ADDRESS [ADDRESS...]` (`#` starts a comment).
pub fn parse_file(text: &str) -> Result<Vec<Target>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            id: String,
            addresses: Vec<String>,
            #[serde(default)]
            state_server: bool,
        }
        let entries: Vec<Entry> = serde_json::from_str(trimmed)
            .map_err(|e| format!("not a JSON list of machines: {e}"))?;
        let machines: Vec<Machine> = entries
            .into_iter()
            .map(|e| Machine {
                id: e.id,
                addresses: e.addresses,
                state_server: e.state_server,
            })
            .collect();
        return from_inventory(&machines);
    }
    let mut machines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let id = words.next().unwrap_or_default().to_string();
        let addresses: Vec<String> = words.map(str::to_string).collect();
        if addresses.is_empty() {
            return Err(format!(
                "line {}: expected `ID ADDRESS [ADDRESS...]`, got {line:?}",
                n + 1
            ));
        }
        for a in &addresses {
            if usable_host(a).is_none() {
                return Err(format!(
                    "line {}: {a:?} is not an address ssh can use",
                    n + 1
                ));
            }
        }
        machines.push(Machine {
            id,
            addresses,
            state_server: false,
        });
    }
    from_inventory(&machines).map_err(|e| format!("{e} (in the machines file)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_servers_and_unusable_addresses_are_left_out() {
        let inv = vec![
            Machine {
                id: "0".into(),
                addresses: vec!["10.0.0.1".into()],
                state_server: true,
            },
            Machine {
                id: "1".into(),
                addresses: vec![
                    "127.0.0.1".into(),
                    "10.0.0.2/24".into(),
                    "fe80::1".into(),
                    "-oProxyCommand=x".into(),
                    "10.0.0.2".into(),
                ],
                state_server: false,
            },
        ];
        let t = from_inventory(&inv).unwrap();
        assert_eq!(
            t,
            vec![Target {
                id: "1".into(),
                addresses: vec!["10.0.0.2".into()]
            }]
        );
        let bad = vec![Machine {
            id: "1;reboot".into(),
            addresses: vec![],
            state_server: false,
        }];
        assert!(from_inventory(&bad).is_err());
    }

    #[test]
    fn machines_file_in_both_forms() {
        let lines = "# id address\n1 10.0.0.2\n2 10.0.0.3 10.1.0.3  # two\n\n";
        let t = parse_file(lines).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].addresses, vec!["10.0.0.3", "10.1.0.3"]);
        let json = r#"[{"id":"1","addresses":["10.0.0.2"]},{"id":"0","addresses":["10.0.0.1"],"state_server":true}]"#;
        assert_eq!(parse_file(json).unwrap().len(), 1);
        let e = parse_file("1\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_file("1 -x\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}
