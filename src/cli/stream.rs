//! The state-server's half of `juju-brd backup` run on a workstation: the hidden
//! `juju-brd _stream-backup`, which the workstation runs over SSH (as `ubuntu`, through
//! `sudo -n`). It reads a [`StreamRequest`] on stdin, checks it names this state-server's
//! environment, asks the running daemon for a backup through the local socket (so scheduling,
//! single-flight and retention stay the daemon's), and writes to stdout:
//!
//! ```text
//! juju-brd-stream 1\n            (MAGIC)
//! {"kind":"archive",...}\n       (Header, one JSON line)
//! <exactly `size` archive bytes, read through GET /v1/backups/NAME/archive>
//! ```
//!
//! or, under HA when another node takes the backups, the magic line and a `redirect` header
//! naming that node. Errors go to stderr with a non-zero exit, which ssh hands back.

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use super::*;

/// The first line of every stream.
pub(super) const MAGIC: &str = "juju-brd-stream 1";

/// The most of a request read from stdin (notes are at most 256 KiB once JSON-escaped).
const MAX_REQUEST: u64 = 2 << 20;

/// The most a header line may be.
pub(super) const MAX_HEADER: u64 = 1 << 20;

/// What the workstation asks for, on the stream subcommand's stdin (never on an argv).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamRequest {
    /// The environment the workstation means (its name in the Juju client files).
    pub environment: String,
    /// Its UUID as the client records it (Juju 1.x `environ-uuid`, Juju 2 controller `uuid`).
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum Header {
    /// The archive follows: `size` bytes.
    Archive {
        name: String,
        size: u64,
        sha256: String,
        /// The `NAME.sha256` sidecar's text.
        sidecar: String,
        /// False when a backup was already running and this is its archive.
        created: bool,
    },
    /// This node does not take backups; `node` (a host) does.
    Redirect { node: String, reason: String },
}

/// `juju-brd _stream-backup`.
pub(super) fn stream_backup(config_flag: Option<&Path>) -> Result<ExitCode> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST + 1)
        .read_to_end(&mut raw)
        .context("reading the request on stdin")?;
    anyhow::ensure!(
        raw.len() as u64 <= MAX_REQUEST,
        "the request on stdin is larger than {MAX_REQUEST} bytes"
    );
    let req: StreamRequest =
        serde_json::from_slice(&raw).context("the request on stdin is not a stream request")?;
    let cfg = load_config(config_flag)?;
    cfg.check_juju_env().map_err(anyhow::Error::msg)?;
    check_requested(&cfg, &req).map_err(anyhow::Error::msg)?;
    crate::archive::metadata::check_notes(&req.notes).map_err(anyhow::Error::msg)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    writeln!(out, "{MAGIC}")?;
    if cfg.ha.self_address.is_some() {
        let engine = crate::db::from_config(&cfg.database, &cfg.files.root);
        if let Some((address, reason)) = crate::ha::backup_node(&cfg.ha, engine.as_deref()) {
            let node = crate::juju_client::host_of(&address)
                .filter(|h| crate::ssh::valid_host(h))
                .with_context(|| {
                    format!("the node that takes backups, {address:?}, has no usable host")
                })?;
            let header = Header::Redirect { node, reason };
            writeln!(out, "{}", serde_json::to_string(&header)?)?;
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
    }
    use crate::api::types::{JobState, TriggerRequest};
    let client = crate::api::client::Client::new(&cfg.api.socket);
    let rt = runtime()?;
    let resp = rt.block_on(client.trigger(&TriggerRequest { notes: req.notes }, true))?;
    let archive = match (resp.job.state, resp.job.archive) {
        (JobState::Succeeded, Some(a)) => a,
        _ => anyhow::bail!(
            "backup failed: {}",
            resp.job.error.unwrap_or_else(|| "unknown error".into())
        ),
    };
    let sidecar = rt.block_on(client.sidecar(&archive.name))?;
    let header = Header::Archive {
        name: archive.name.clone(),
        size: archive.size,
        sha256: archive.sha256.clone(),
        sidecar,
        created: resp.created,
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let sent = rt.block_on(client.download(&archive.name, &mut |chunk| out.write_all(chunk)))?;
    out.flush().context("writing the archive to stdout")?;
    anyhow::ensure!(
        sent == archive.size,
        "the daemon served {sent} bytes of {}, which has {}",
        archive.name,
        archive.size
    );
    Ok(ExitCode::SUCCESS)
}

/// The request must name this state-server's environment, by name or UUID (model UUID, or the
/// controller's when configured); the error names both.
fn check_requested(cfg: &Config, req: &StreamRequest) -> Result<(), String> {
    let by_name = cfg.check_environment(Some(&req.environment), "the workstation");
    if by_name.is_ok() {
        return Ok(());
    }
    if let Some(uuid) = req.uuid.as_deref().filter(|u| !u.is_empty()) {
        let controller = cfg.controller.controller_uuid.as_deref();
        if cfg.check_environment(Some(uuid), "the workstation").is_ok() || controller == Some(uuid)
        {
            return Ok(());
        }
    }
    by_name
}

/// Reads one `\n`-terminated line of at most `limit` bytes (without the newline).
pub(super) fn read_line(r: &mut dyn BufRead, limit: u64, what: &str) -> std::io::Result<String> {
    let mut buf = Vec::new();
    r.take(limit).read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            if buf.is_empty() {
                format!("the stream ended before the {what}")
            } else {
                format!("the {what} is cut short or longer than {limit} bytes")
            },
        ));
    }
    buf.pop();
    String::from_utf8(buf).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the {what} is not UTF-8"),
        )
    })
}

/// Reads the magic line and the header, and checks what an archive header claims before any
/// of it is used: a name juju-brd makes (so no path), a SHA-256, a sidecar agreeing with it.
pub(super) fn read_header(r: &mut dyn BufRead) -> std::io::Result<Header> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let magic = read_line(r, 64, "stream's first line")?;
    if magic != MAGIC {
        return Err(bad(format!(
            "the state-server answered {:?}, not a juju-brd stream (is juju-brd on it as recent as this one?)",
            magic.chars().take(60).collect::<String>()
        )));
    }
    let line = read_line(r, MAX_HEADER, "stream's header")?;
    let header: Header =
        serde_json::from_str(&line).map_err(|e| bad(format!("a malformed stream header: {e}")))?;
    if let Header::Archive {
        name,
        sha256,
        sidecar,
        size,
        ..
    } = &header
    {
        if crate::archive::name::ArchiveName::parse(name).is_none() || name.contains('/') {
            return Err(bad(format!(
                "the state-server named the archive {:?}, not a juju-brd archive name",
                name.escape_debug().to_string()
            )));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the stream header's sha256 is not a SHA-256".into()));
        }
        let side = sidecar.split_whitespace().next().unwrap_or_default();
        if !side.eq_ignore_ascii_case(sha256) {
            return Err(bad(format!(
                "the sidecar's checksum {side:.12} is not the archive's {sha256:.12}"
            )));
        }
        if *size > MAX_ARCHIVE {
            return Err(bad(format!("an archive of {size} bytes is beyond belief")));
        }
    }
    Ok(header)
}

/// The largest archive a stream may announce (16 TiB).
const MAX_ARCHIVE: u64 = 16 << 40;

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "3f2a000000000000000000000000000000000000000000000000000000000000";

    fn header(name: &str, sidecar: &str) -> String {
        format!(
            "{MAGIC}\n{}\n",
            serde_json::json!({"kind": "archive", "name": name, "size": 3, "sha256": SHA,
                "sidecar": sidecar, "created": true})
        )
    }

    #[test]
    fn a_good_header_reads_and_leaves_the_archive_bytes() {
        let text = header(
            "juju-backup-20261125-101500.tar.gz",
            &format!("{SHA}  juju-backup-20261125-101500.tar.gz\n"),
        ) + "abc";
        let mut r = std::io::BufReader::new(text.as_bytes());
        let h = read_header(&mut r).unwrap();
        assert!(matches!(h, Header::Archive { size: 3, .. }));
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "abc");
    }

    #[test]
    fn hostile_headers_are_refused() {
        for (text, want) in [
            ("HTTP/1.1 200 OK\n".to_string(), "not a juju-brd stream"),
            (String::new(), "ended before"),
            (format!("{MAGIC}\n{{\"kind\":"), "cut short"),
            (
                header("../../.bashrc", &format!("{SHA}  x\n")),
                "not a juju-brd archive name",
            ),
            (
                header("juju-backup-20261125-101500.tar.gz", "00  x\n"),
                "is not the archive's",
            ),
            (
                format!("{MAGIC}\n{{\"kind\":\"archive\",\"evil\":1}}\n"),
                "malformed",
            ),
        ] {
            let e = read_header(&mut std::io::BufReader::new(text.as_bytes()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let long = format!("{MAGIC}\n{}\n", "x".repeat(MAX_HEADER as usize + 10));
        let e = read_header(&mut std::io::BufReader::new(long.as_bytes())).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
    }

    #[test]
    fn a_redirect_names_a_node() {
        let text = format!(
            "{MAGIC}\n{}\n",
            serde_json::json!({"kind": "redirect", "node": "10.0.0.7", "reason": "leader"})
        );
        let h = read_header(&mut std::io::BufReader::new(text.as_bytes())).unwrap();
        assert!(matches!(h, Header::Redirect { node, .. } if node == "10.0.0.7"));
    }
}
