//! The archive commands: `verify`, `show`, `list` (local and `--remote`).

use super::*;

pub(super) fn list_remote(cfg: &Config, name: &str, json: bool) -> Result<ExitCode> {
    let rc = remote_named(cfg, name)?;
    let remote = crate::remote::Remote::from_config(rc)?;
    let archives = runtime()?.block_on(remote.list())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&archives)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<_> = archives
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.size,
                a.started,
                format!("s3://{}/{}", rc.bucket, a.key),
            )
        })
        .collect();
    print_archive_table(
        &rows,
        "KEY",
        &format!("no archives on remote `{name}` (bucket {})", rc.bucket),
    );
    Ok(ExitCode::SUCCESS)
}

/// The table `list` prints, local or remote: name, size, age, and one column of `last`.
pub(super) fn print_archive_table(
    rows: &[(&str, u64, chrono::DateTime<chrono::Utc>, String)],
    last: &str,
    empty: &str,
) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let now = chrono::Utc::now();
    println!("{:<width$} {:>12} {:>10}  {last}", "NAME", "SIZE", "AGE");
    for (name, size, started, extra) in rows {
        println!(
            "{name:<width$} {:>12} {:>10}  {extra}",
            human_bytes(*size),
            human_age(now - *started)
        );
    }
}

pub(super) fn verify_cmd(
    config_flag: Option<&Path>,
    file: &Path,
    json: bool,
    max_ratio: u64,
    identities: Option<Arc<Identities>>,
) -> Result<ExitCode> {
    let opts = VerifyOptions {
        max_ratio,
        identities,
        ..VerifyOptions::default()
    };
    let result = verify::verify(file, &opts);
    // Remember the result when the archive is in the configured directory (best effort).
    if let Ok(cfg) = load_config(config_flag) {
        if file.parent().map(|p| p.canonicalize().ok()) == Some(cfg.archive_dir.canonicalize().ok())
        {
            let _ = crate::state::VerificationCache::record(&cfg.state_dir, file, result.is_ok());
        }
    }
    match result {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: OK ({} root members, {} bytes of files, dump: {}, sidecar: {:?}, sha256 {})",
                    file.display(),
                    report.root_members,
                    report.root_bytes,
                    if report.dump_files.is_empty() { "none".to_string() } else { report.dump_files.join(", ") },
                    report.sidecar,
                    report.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("juju-brd: verify failed: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub(super) fn show(file: &Path, json: bool, identities: Option<&Identities>) -> Result<ExitCode> {
    let m = verify::read_metadata(file, identities)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    let t = |d: Option<chrono::DateTime<chrono::Utc>>| d.map_or("-".into(), |d| d.to_rfc3339());
    println!("ID:             {}", m.id);
    println!("Environment:    {}", m.environment_name());
    println!("Model UUID:     {}", m.model_uuid);
    println!("Controller:     {}", m.controller_uuid);
    println!("Machine:        {}", m.machine);
    println!("Hostname:       {}", m.hostname);
    println!("Juju version:   {}", m.version);
    println!("Started:        {}", t(m.started));
    println!("Finished:       {}", t(m.finished));
    println!("HA nodes:       {}", m.ha_nodes);
    println!("Notes:          {}", m.notes);
    if let Some(b) = &m.brd {
        println!("Addresses:      {}", b.state_server_addresses.join(", "));
        println!(
            "Database:       {} ({} bytes)",
            b.database_engine, b.dump_bytes
        );
        println!(
            "Files:          {} ({} bytes of root.tar)",
            b.files, b.root_tar_bytes
        );
        println!(
            "Made by:        juju-brd {} (config {})",
            b.tool_version, b.config_digest
        );
        print_inventory(b);
    }
    Ok(ExitCode::SUCCESS)
}

/// The machines an archive recorded, one per line; names and addresses come from the archive,
/// so anything a terminal could act on is shown escaped.
fn print_inventory(b: &crate::archive::metadata::BrdMetadata) {
    let plain = |t: &str| t.escape_debug().to_string();
    match (&b.inventory, &b.inventory_error) {
        (Some(machines), _) => {
            println!("Machines:       {}", machines.len());
            for m in machines {
                let role = if m.state_server {
                    " (state-server)"
                } else {
                    ""
                };
                let addrs: Vec<String> = m.addresses.iter().map(|a| plain(a)).collect();
                println!("  {:<12} {}{role}", plain(&m.id), addrs.join(", "));
            }
        }
        (None, Some(why)) => println!("Machines:       not recorded: {}", plain(why)),
        (None, None) => println!("Machines:       not recorded"),
    }
}

pub(super) fn list(cfg: &Config, json: bool, verify_now: bool) -> Result<ExitCode> {
    let mut archives = catalog::list(&cfg.archive_dir, &cfg.state_dir)
        .with_context(|| format!("listing {}", cfg.archive_dir.display()))?;
    if verify_now {
        // Every archive, cached result or not: a cached "verified" cannot see bit rot since.
        for a in archives.iter_mut() {
            match crate::scrub::check_local(&cfg.state_dir, &cfg.encryption, a) {
                crate::scrub::LocalCheck::Sound => {
                    a.verification = catalog::VerifyState::Verified;
                    a.checked_at = Some(chrono::Utc::now());
                }
                crate::scrub::LocalCheck::Damaged(why) => {
                    eprintln!("juju-brd: {}: {why}", a.name);
                    a.verification = catalog::VerifyState::Failed;
                    a.checked_at = Some(chrono::Utc::now());
                }
                crate::scrub::LocalCheck::Gone => {}
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&archives)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono::Utc::now();
    let rows: Vec<_> = archives
        .iter()
        .map(|a| {
            let state = match a.verification {
                catalog::VerifyState::Verified => "verified",
                catalog::VerifyState::Failed => "FAILED",
                catalog::VerifyState::Unverified => "unverified",
            };
            let state = if crate::retention::is_future_dated(a.started, now) {
                format!("{state}, FUTURE-DATED (clock was ahead?)")
            } else {
                state.to_string()
            };
            (a.name.as_str(), a.size, a.started, state)
        })
        .collect();
    print_archive_table(
        &rows,
        "STATUS",
        &format!("no archives in {}", cfg.archive_dir.display()),
    );
    Ok(ExitCode::SUCCESS)
}

/// The `[[remote]]` called `name`.
pub(super) fn remote_named<'a>(
    cfg: &'a Config,
    name: &str,
) -> Result<&'a crate::config::RemoteConfig> {
    cfg.remote(name)
        .with_context(|| format!("no [[remote]] named `{name}` in the config"))
}
