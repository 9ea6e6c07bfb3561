//! What runs on a machine, as shell scripts fed to `sh -s` over SSH, and how their output is read.
//!
//! Two calls per machine: [`LIST_SCRIPT`] prints every agent's `agent.conf` (framed by byte
//! counts); juju-brd rewrites them here with the same line-preserving rewrite restore uses; then
//! [`apply_script`] checks nothing changed meanwhile, stops the agents, swaps the new files in
//! (same owner and mode, renamed into place), resets unit relation `change-version`s so relation
//! hooks fire again, starts the agents and waits until each one runs.
//!
//! Names from the machine are hostile: only agent names made of `[a-z0-9-]` (`machine-1`,
//! `unit-mysql-0`) are accepted, so nothing read from a machine is ever interpreted by a shell.
//! File contents travel base64-encoded inside the script, on stdin.

use sha2::{Digest, Sha256};

use super::AgentCommands;

/// Where Juju keeps its agents on every machine.
pub const AGENTS_DIR: &str = "/var/lib/juju/agents";
/// Caps on what a machine may send back (an agent.conf is a few KiB).
pub const MAX_AGENTS: usize = 512;
pub const MAX_CONF_BYTES: usize = 256 << 10;
/// All of a machine's listing; more is refused as cut short, never held in memory.
pub const MAX_LISTING_BYTES: u64 = 16 << 20;

/// Prints `juju-brd-agent SIZE NAME` then the file's bytes for each agent, then `juju-brd-end`.
pub const LIST_SCRIPT: &str = r#"set -u
cd /var/lib/juju/agents 2>/dev/null || { printf 'juju-brd-end\n'; exit 0; }
for d in */; do
  a=${d%/}
  [ -f "$a/agent.conf" ] || continue
  n=$(wc -c < "$a/agent.conf") || exit 1
  printf 'juju-brd-agent %s %s\n' "$n" "$a"
  cat "$a/agent.conf" || exit 1
done
printf 'juju-brd-end\n'
"#;

/// One agent's config as read from the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFile {
    pub agent: String,
    pub text: String,
}

/// `machine-N`, `unit-APP-N`, `application-APP` and the like: lowercase letters, digits, dashes.
pub fn valid_agent_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.contains('-')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reads [`LIST_SCRIPT`]'s output; refuses anything not framed exactly as it prints.
pub fn parse_listing(out: &[u8]) -> Result<Vec<AgentFile>, String> {
    let mut rest = out;
    let mut agents = Vec::new();
    loop {
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the agent listing was cut short")?;
        let line = std::str::from_utf8(&rest[..nl]).map_err(|_| "the agent listing is garbled")?;
        rest = &rest[nl + 1..];
        if line == "juju-brd-end" {
            return Ok(agents);
        }
        let mut parts = line.splitn(3, ' ');
        let (Some("juju-brd-agent"), Some(size), Some(name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("unexpected line in the agent listing: {line:?}"));
        };
        if !valid_agent_name(name) {
            return Err(format!(
                "refusing agent directory with an unexpected name {name:?}"
            ));
        }
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| format!("bad size in the agent listing: {line:?}"))?;
        if size > MAX_CONF_BYTES || size > rest.len() {
            return Err(format!(
                "{name}/agent.conf: size {size} is too large or cut short"
            ));
        }
        if agents.len() >= MAX_AGENTS {
            return Err(format!("more than {MAX_AGENTS} agents on one machine"));
        }
        let text = String::from_utf8(rest[..size].to_vec())
            .map_err(|_| format!("{name}/agent.conf is not UTF-8"))?;
        rest = &rest[size..];
        agents.push(AgentFile {
            agent: name.to_string(),
            text,
        });
    }
}

/// An agent whose file changes: the old bytes' SHA-256 (checked on the machine before anything
/// changes) and the new text.
#[derive(Debug, Clone)]
pub struct Change {
    pub agent: String,
    pub old_sha256: String,
    pub new_text: String,
}

impl Change {
    pub fn new(old: &AgentFile, new_text: String) -> Change {
        Change {
            agent: old.agent.clone(),
            old_sha256: hex::encode(Sha256::digest(old.text.as_bytes())),
            new_text,
        }
    }
}

/// Unit agents stop before the machine agent and start after it.
fn stop_order(changes: &[Change]) -> Vec<&str> {
    let mut names: Vec<&str> = changes.iter().map(|c| c.agent.as_str()).collect();
    names.sort_by_key(|n| (n.starts_with("machine-"), *n));
    names
}

/// `template` with `{agent}` replaced: the name is one [`valid_agent_name`] accepted.
fn command_for(template: &str, agent: &str) -> String {
    debug_assert!(valid_agent_name(agent));
    template.replace("{agent}", agent)
}

/// The script that applies `changes` on a machine; it prints `juju-brd-done` when all went well.
pub fn apply_script(changes: &[Change], commands: &AgentCommands) -> String {
    use base64::Engine as _;
    let mut s = String::from(
        "set -u\n\
         A=/var/lib/juju/agents\n\
         fail() { printf '%s\\n' \"$*\" >&2; exit 1; }\n\
         same() { s=$(sha256sum < \"$A/$1/agent.conf\") || fail \"cannot read $1/agent.conf\"; \
         [ \"${s%% *}\" = \"$2\" ] || fail \"$1/agent.conf changed while juju-brd was updating it; nothing was changed on this machine, run update-agents again\"; }\n",
    );
    // 1. Nothing changed since it was read.
    for c in changes {
        s.push_str(&format!("same {} {}\n", c.agent, c.old_sha256));
    }
    // 2. New files beside the old ones, with their owner and mode.
    for c in changes {
        let new = format!("\"$A/{}/agent.conf.juju-brd-new\"", c.agent);
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.new_text.as_bytes());
        s.push_str(&format!("base64 -d > {new} <<'JUJU_BRD_DATA' || fail \"cannot write {}/agent.conf.juju-brd-new\"\n", c.agent));
        for chunk in b64.as_bytes().chunks(76) {
            s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
            s.push('\n');
        }
        s.push_str("JUJU_BRD_DATA\n");
        s.push_str(&format!(
            "chown --reference=\"$A/{a}/agent.conf\" {new} && chmod --reference=\"$A/{a}/agent.conf\" {new} || fail \"cannot set the owner and mode of {a}/agent.conf.juju-brd-new\"\n",
            a = c.agent
        ));
    }
    // 3. Stop; on a failure, start again what was stopped and change nothing.
    let order = stop_order(changes);
    s.push_str("stopped=''\nundo() { rm -f \"$A\"/*/agent.conf.juju-brd-new; for a in $stopped; do start_agent \"$a\" || true; done; }\n");
    s.push_str("start_agent() {\n  case \"$1\" in\n");
    for a in &order {
        s.push_str(&format!(
            "    {a}) {} ;;\n",
            command_for(&commands.start_command, a)
        ));
    }
    s.push_str("  esac\n}\n");
    for a in &order {
        s.push_str(&format!(
            "{{ {}\n}} >/dev/null || {{ e=$?; undo; fail \"stopping {a} failed (status $e); nothing was changed on this machine\"; }}\nstopped=\"{a} $stopped\"\n",
            command_for(&commands.stop_command, a)
        ));
    }
    // 4. Swap the files in.
    for c in changes {
        s.push_str(&format!(
            "mv -f \"$A/{a}/agent.conf.juju-brd-new\" \"$A/{a}/agent.conf\" || {{ undo; fail \"cannot replace {a}/agent.conf\"; }}\n",
            a = c.agent
        ));
    }
    // 5. Relation hooks fire again after the move (as Juju's restore did).
    for a in order.iter().filter(|a| a.starts_with("unit-")) {
        s.push_str(&format!(
            "for f in \"$A/{a}\"/state/relations/*/*; do [ -f \"$f\" ] || continue; \
             sed -i 's/^change-version: [0-9][0-9]*$/change-version: 0/' \"$f\" || fail \"cannot reset $f\"; done\n"
        ));
    }
    // 6. Start, machine agent first, and wait until each one runs.
    for a in order.iter().rev() {
        s.push_str(&format!(
            "start_agent {a} >/dev/null || fail \"starting {a} failed\"\n"
        ));
    }
    let tries = commands.running_timeout.as_secs().max(1);
    for a in order.iter().rev() {
        s.push_str(&format!(
            "i=0; until {{ {}\n}} >/dev/null 2>&1; do i=$((i+1)); [ $i -ge {tries} ] && fail \"{a} is not running {tries}s after it was started\"; sleep 1; done\n",
            command_for(&commands.running_command, a)
        ));
    }
    s.push_str("printf 'juju-brd-done\\n'\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_round_trip_and_hostile_names() {
        let out =
            b"juju-brd-agent 5 machine-1\nab\ncdjuju-brd-agent 0 unit-mysql-0\njuju-brd-end\n";
        let agents = parse_listing(out).unwrap();
        assert_eq!(agents.len(), 2);
        assert_eq!(agents[0].text, "ab\ncd");
        assert_eq!(agents[1].agent, "unit-mysql-0");
        for bad in [
            &b"juju-brd-agent 1 machine-1;rm\nx\njuju-brd-end\n"[..],
            b"juju-brd-agent 1 ../x\nx\njuju-brd-end\n",
            b"juju-brd-agent 99 machine-1\nx\njuju-brd-end\n",
            b"juju-brd-agent 1 machine-1\nx",
            b"hello\n",
            b"",
        ] {
            assert!(
                parse_listing(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn agent_names() {
        for ok in [
            "machine-0",
            "unit-mysql-0",
            "machine-1-lxd-2",
            "application-ceph",
        ] {
            assert!(valid_agent_name(ok), "{ok}");
        }
        for bad in [
            "machine",
            "Machine-0",
            "unit_x-0",
            "-x",
            "a b",
            "a/b",
            "x-$(id)",
            "",
        ] {
            assert!(!valid_agent_name(bad), "{bad}");
        }
    }

    #[test]
    fn script_carries_contents_as_base64_and_orders_units_around_the_machine_agent() {
        let cmds = AgentCommands::default();
        let old = AgentFile {
            agent: "machine-1".into(),
            text: "apiaddresses:\n- 10.0.0.1:17070\n".into(),
        };
        let unit = AgentFile {
            agent: "unit-mysql-0".into(),
            text: "x".into(),
        };
        let changes = vec![
            Change::new(&old, "statepassword: 'secret $(reboot)'\n".into()),
            Change::new(&unit, "y".into()),
        ];
        let s = apply_script(&changes, &cmds);
        assert!(!s.contains("secret"), "contents must travel encoded");
        let stop_unit = s.find("stop jujud-unit-mysql-0").unwrap();
        let stop_machine = s.find("stop jujud-machine-1").unwrap();
        assert!(stop_unit < stop_machine);
        let start_machine = s.find("start_agent machine-1 ").unwrap();
        let start_unit = s.find("start_agent unit-mysql-0 ").unwrap();
        assert!(start_machine < start_unit);
        assert!(s.contains("change-version: 0"));
        assert!(s.ends_with("printf 'juju-brd-done\\n'\n"));
    }
}
