//! Generates a deterministic, state-server-like tree for the example config, the tests and the
//! benchmark: agent config, keys, tools binaries, logs, many small files and a real SQLite database.
//! Not shipped in the package.
//!
//! Usage: `juju-brd-fixture ROOT [--size-mib N] [--seed S] [--address HOST]`

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result};
use clap::Parser;
use rand::{Rng, RngCore, SeedableRng};

/// Generate an example Juju state-server tree (deterministic for a given seed and size).
#[derive(Parser)]
struct Args {
    /// The host root to populate (created if absent; existing files are left alone).
    root: std::path::PathBuf,
    /// Approximate total size in MiB (database, logs, binaries, small files).
    #[arg(long, default_value_t = 8)]
    size_mib: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Address recorded in agent.conf as this state-server's.
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
}

const WORDS: &[&str] = &[
    "machine",
    "unit",
    "agent",
    "juju",
    "controller",
    "model",
    "relation",
    "charm",
    "state",
    "upgrade",
    "INFO",
    "DEBUG",
    "WARNING",
    "api",
    "mongo",
    "leader",
    "hook",
    "install",
    "config",
    "changed",
    "started",
    "connection",
    "established",
    "application",
    "storage",
    "network",
];

fn words(rng: &mut impl Rng, n: usize) -> String {
    (0..n)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    if path.exists() {
        return Ok(());
    }
    fs::write(path, data).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let total = a.size_mib << 20;
    let juju = a.root.join("var/lib/juju");
    fs::create_dir_all(&juju)?;

    let agent_conf = format!(
        "# format 2.0\ntag: machine-0\ndatadir: /var/lib/juju\nlogdir: /var/log/juju\n\
         upgradedToVersion: 2.9.42\napiaddresses:\n- {addr}:17070\nstateaddresses:\n- {addr}:37017\n\
         apiport: 17070\nstateport: 37017\nstatepassword: {pw}\napipassword: {pw}\n\
         controllercert: |\n  -----BEGIN CERTIFICATE-----\n  MIIBfixturecontrollercert\n  -----END CERTIFICATE-----\n\
         controllerkey: |\n  -----BEGIN PRIVATE KEY-----\n  MIIEfixturecontrollerkey\n  -----END PRIVATE KEY-----\n\
         controller: controller-6a3a9d1c-1f7e-4c3e-8f6b-2d0c1f0e9a11\n\
         model: model-0b8e5d3a-7c2f-4a9e-9d1b-3e4f5a6b7c8d\nvalues:\n  AGENT_SERVICE_NAME: jujud-machine-0\n",
        addr = a.address,
        pw = "fixture-password-0123456789"
    );
    write(
        &juju.join("agents/machine-0/agent.conf"),
        agent_conf.as_bytes(),
        0o600,
    )?;
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
        hex::encode((0..600).map(|_| rng.gen::<u8>()).collect::<Vec<_>>()),
        hex::encode((0..900).map(|_| rng.gen::<u8>()).collect::<Vec<_>>())
    );
    write(&juju.join("server.pem"), pem.as_bytes(), 0o600)?;
    write(
        &juju.join("system-identity"),
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nfixture\n-----END OPENSSH PRIVATE KEY-----\n",
        0o600,
    )?;
    write(
        &juju.join("shared-secret"),
        hex::encode(rng.gen::<[u8; 32]>()).as_bytes(),
        0o600,
    )?;
    write(&juju.join("nonce.txt"), b"user-admin:bootstrap\n", 0o600)?;
    write(
        &juju.join("init/jujud-machine-0/jujud-machine-0.service"),
        b"[Service]\nExecStart=/var/lib/juju/init/jujud-machine-0/exec-start.sh\n",
        0o644,
    )?;
    write(
        &juju.join("init/jujud-machine-0/exec-start.sh"),
        b"#!/bin/sh\nexec /var/lib/juju/tools/machine-0/jujud machine --machine-id 0\n",
        0o755,
    )?;
    write(
        &a.root.join("home/ubuntu/.ssh/authorized_keys"),
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixture juju-client-key\n",
        0o600,
    )?;
    write(
        &a.root.join("etc/systemd/system/jujud-machine-0.service"),
        b"[Unit]\nDescription=juju agent for machine-0\n",
        0o644,
    )?;

    // Tools: a "binary" that compresses like an ELF file (part random, part repetitive).
    let tools = juju.join("tools/2.9.42-focal-amd64");
    let bin_size = (total / 4).max(64 << 10) as usize;
    if !tools.join("jujud").exists() {
        let mut bin = Vec::with_capacity(bin_size);
        while bin.len() < bin_size {
            let mut chunk = [0u8; 4096];
            if rng.gen_bool(0.4) {
                rng.fill_bytes(&mut chunk);
            } else {
                let pattern = words(&mut rng, 8);
                for (i, b) in chunk.iter_mut().enumerate() {
                    *b = pattern.as_bytes()[i % pattern.len()];
                }
            }
            bin.extend_from_slice(&chunk);
        }
        bin.truncate(bin_size);
        write(&tools.join("jujud"), &bin, 0o755)?;
    }
    write(
        &tools.join("downloaded-tools.txt"),
        b"{\"version\":\"2.9.42-focal-amd64\"}\n",
        0o644,
    )?;
    let link = juju.join("tools/machine-0");
    if link.symlink_metadata().is_err() {
        symlink("2.9.42-focal-amd64", &link)?;
    }

    // Logs.
    let logs = a.root.join("var/log/juju");
    fs::create_dir_all(&logs)?;
    let log_budget = total * 3 / 10;
    for i in 0..4u64 {
        let p = logs.join(format!(
            "machine-0.log{}",
            if i == 0 {
                String::new()
            } else {
                format!(".{i}")
            }
        ));
        if p.exists() {
            continue;
        }
        let mut f = std::io::BufWriter::new(fs::File::create(&p)?);
        let mut written = 0u64;
        let mut t = 1_700_000_000u64 + i * 86_400;
        while written < log_budget / 4 {
            t += rng.gen_range(0..3);
            let line = format!(
                "{t} machine-0 juju.worker.{} {}\n",
                WORDS[rng.gen_range(0..WORDS.len())],
                words(&mut rng, 12)
            );
            f.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
    }

    // Many small files: charm caches and unit state.
    let small_budget = total * 15 / 100;
    let charms = juju.join("charmcache");
    let mut written = 0u64;
    let mut i = 0;
    while written < small_budget {
        let n = rng.gen_range(20..400);
        let body = format!("{}\n", words(&mut rng, n));
        write(
            &charms.join(format!("app-{}/unit-{}.yaml", i / 50, i)),
            body.as_bytes(),
            0o644,
        )?;
        written += body.len() as u64;
        i += 1;
    }

    // The database: a real SQLite file in WAL mode.
    let db_path = juju.join("db/state.db");
    fs::create_dir_all(db_path.parent().unwrap())?;
    if !db_path.exists() {
        let conn = rusqlite::Connection::open(&db_path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE machines(id INTEGER PRIMARY KEY, name TEXT, series TEXT, life INTEGER);
             CREATE TABLE txns(id INTEGER PRIMARY KEY, ts INTEGER, doc TEXT);
             CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);",
        )?;
        let tx = conn.unchecked_transaction()?;
        for m in 0..3 {
            tx.execute(
                "INSERT INTO machines(name, series, life) VALUES (?1, 'focal', 0)",
                [format!("machine-{m}")],
            )?;
        }
        for acct in 0..100 {
            tx.execute(
                "INSERT INTO accounts(id, balance) VALUES (?1, 1000)",
                [acct],
            )?;
        }
        let db_budget = total * 3 / 10;
        let mut written = 0u64;
        let mut ts = 1_700_000_000i64;
        while written < db_budget {
            let n = rng.gen_range(10..80);
            let doc = words(&mut rng, n);
            ts += 1;
            tx.execute(
                "INSERT INTO txns(ts, doc) VALUES (?1, ?2)",
                rusqlite::params![ts, doc],
            )?;
            written += doc.len() as u64 + 24;
        }
        tx.commit()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    println!("{}", a.root.display());
    Ok(())
}
