//! Re-points a restored state-server at its new home: the address lists in the machine agent's
//! `agent.conf` (`apiaddresses`, `stateaddresses`) get this host's address, ports kept.
//!
//! A line edit, not a YAML round trip, so everything else in the file (certificates, comments,
//! key order) stays byte for byte as Juju wrote it.

const KEYS: [&str; 2] = ["apiaddresses:", "stateaddresses:"];

/// Returns the new text and how many addresses were rewritten.
pub fn rewrite(text: &str, new_host: &str) -> (String, usize) {
    let host = if new_host.contains(':') && !new_host.starts_with('[') {
        format!("[{new_host}]")
    } else {
        new_host.to_string()
    };
    let mut out = String::with_capacity(text.len());
    let mut in_list = false;
    let mut changed = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if !bare.starts_with([' ', '-']) {
            in_list = KEYS.contains(&bare.trim_end());
        } else if in_list {
            if let Some(item) = bare.trim_start().strip_prefix("- ") {
                let indent = &bare[..bare.len() - bare.trim_start().len()];
                let port = item.trim().rsplit_once(':').map(|(_, p)| p.to_string());
                if let Some(p) = port.filter(|p| p.parse::<u16>().is_ok()) {
                    out.push_str(&format!("{indent}- {host}:{p}{}", &line[bare.len()..]));
                    changed += 1;
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    (out, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_address_lists() {
        let text = "tag: machine-0\napiaddresses:\n- 10.0.0.5:17070\n- 10.0.0.6:17070\nstateaddresses:\n- localhost:37017\nvalues:\n  x: 10.0.0.5:17070\n";
        let (out, n) = rewrite(text, "192.168.9.9");
        assert_eq!(n, 3);
        assert_eq!(
            out,
            "tag: machine-0\napiaddresses:\n- 192.168.9.9:17070\n- 192.168.9.9:17070\nstateaddresses:\n- 192.168.9.9:37017\nvalues:\n  x: 10.0.0.5:17070\n"
        );
        let (out, _) = rewrite("apiaddresses:\n  - a:1\n", "fd00::1");
        assert_eq!(out, "apiaddresses:\n  - [fd00::1]:1\n");
    }
}
