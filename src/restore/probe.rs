//! Is the old state-server still alive? Every recorded address (as recorded, and each host on the
//! configured ports) gets a TCP connect with a short timeout; any answer means "do not restore".

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The host:port pairs to try for the recorded addresses and probe ports, without duplicates.
pub fn targets(recorded: &[String], ports: &[u16]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |t: String| {
        if !out.contains(&t) {
            out.push(t);
        }
    };
    for addr in recorded {
        let host = crate::snapshot::host_of(addr);
        if addr.parse::<SocketAddr>().is_ok()
            || addr
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
        {
            push(addr.clone());
        }
        for p in ports {
            if host.contains(':') {
                push(format!("[{host}]:{p}"));
            } else {
                push(format!("{host}:{p}"));
            }
        }
    }
    out
}

/// The targets that accepted a connection.
pub fn answering(targets: &[String], timeout: Duration) -> Vec<String> {
    let mut alive = Vec::new();
    for t in targets {
        let Ok(addrs) = t.to_socket_addrs() else {
            continue;
        };
        if addrs
            .into_iter()
            .any(|a| TcpStream::connect_timeout(&a, timeout).is_ok())
        {
            alive.push(t.clone());
        }
    }
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_cover_recorded_and_probe_ports() {
        let t = targets(
            &["10.0.0.5:17070".into(), "10.0.0.5:37017".into()],
            &[17070, 37017],
        );
        assert_eq!(t, vec!["10.0.0.5:17070", "10.0.0.5:37017"]);
        let t = targets(&["10.0.0.6".into()], &[17070]);
        assert_eq!(t, vec!["10.0.0.6:17070"]);
    }

    #[test]
    fn finds_a_live_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = vec![format!("127.0.0.1:{port}")];
        assert_eq!(answering(&t, Duration::from_secs(1)), t);
        drop(l);
        assert!(answering(&t, Duration::from_secs(1)).is_empty());
    }
}
