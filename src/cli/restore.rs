//! `restore`: fetch (when remote), plan, confirm, execute.

use super::*;

/// For `restore`: a local path as it is; `s3://BUCKET/KEY` or `--remote NAME ARCHIVE` downloaded
/// (with its sidecar) into `archive_dir`, for `restore` to verify like any other archive.
pub(super) fn fetch_remote_archive(
    cfg: &Config,
    file: &Path,
    remote: Option<&str>,
) -> Result<PathBuf> {
    let text = file.to_string_lossy();
    let (rc, key) = match (remote, crate::remote::parse_s3_url(&text)) {
        (Some(name), _) => (remote_named(cfg, name)?, None),
        (None, Some((bucket, key))) => {
            let rc = cfg
                .remotes
                .iter()
                .find(|r| r.bucket == bucket)
                .with_context(|| {
                    format!("no [[remote]] in the config uses bucket `{bucket}` (its endpoint and credentials are needed)")
                })?;
            (rc, Some(key))
        }
        (None, None) => return Ok(file.to_path_buf()),
    };
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| crate::archive::name::ArchiveName::parse(n).is_some())
        .with_context(|| format!("`{text}` does not name a juju-brd archive"))?
        .to_string();
    let remote = crate::remote::Remote::from_config(rc)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.archive_dir)
        .with_context(|| format!("creating {}", cfg.archive_dir.display()))?;
    eprintln!(
        "downloading {name} from remote `{}` into {}",
        rc.name,
        cfg.archive_dir.display()
    );
    let key = match key {
        Some(k) => object_store::path::Path::from(k.as_str()),
        None => remote.key(&name),
    };
    let path = runtime()?.block_on(remote.fetch(&key, &cfg.archive_dir))?;
    Ok(path)
}

pub(super) fn restore(
    cfg: &Config,
    opts: &crate::restore::RestoreOptions,
    ssh: &super::agents::SshFlags,
    dry_run: bool,
    yes: bool,
) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let plan = crate::restore::plan(&cfg.restore, &cfg.database, opts)?;
    print!("{plan}");
    if dry_run {
        println!("dry run: every check passed; nothing was changed");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not confirmed: pass --yes to restore without a terminal");
        }
        print!("{}\nType `yes` to restore: ", crate::restore::HA_WARNING);
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("not confirmed; nothing was changed");
        }
    }
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    let mut progress = |files: u64, bytes: u64| {
        let every = std::time::Duration::from_millis(if tty { 200 } else { 5000 });
        if last.elapsed() >= every {
            if tty {
                eprint!("\rextracting: {files} files, {}   ", human_bytes(bytes));
            } else {
                tracing::info!(files, bytes, "extracting");
            }
            last = std::time::Instant::now();
        }
    };
    let summary = crate::restore::execute(&cfg.restore, &plan, &mut progress)?;
    if tty {
        eprintln!();
    }
    tracing::info!(
        files = summary.files,
        bytes = summary.bytes,
        "files restored"
    );
    println!(
        "Restored {} files ({}) under {}.",
        summary.files,
        human_bytes(summary.bytes),
        plan.target_root.display()
    );
    println!(
        "agent.conf: {} addresses now point at {}.",
        summary.repointed, plan.address
    );
    println!(
        "The files that were replaced are in {}.",
        summary.rollback_dir.display()
    );
    if let crate::restore::DbStep::NotRestored(why) = &plan.db {
        println!("THE DATABASE WAS NOT RESTORED (--skip-database): {why}");
    }
    let code = update_other_machines(cfg, opts, ssh, &plan);
    println!("Next: check `juju status`; for HA, run `juju enable-ha` (or `juju ensure-availability`) again.");
    Ok(code)
}

/// The last step: the environment's other machines learn this host's address. A machine that
/// is not done does not undo the restore (the state-server is good): the summary names it and
/// the command that finishes the job, and the exit status is 3.
fn update_other_machines(
    cfg: &Config,
    opts: &crate::restore::RestoreOptions,
    flags: &super::agents::SshFlags,
    plan: &crate::restore::RestorePlan,
) -> ExitCode {
    let targets = match &plan.agents {
        crate::restore::AgentsStep::Skipped(why) => {
            println!("Other machines NOT updated: {why}.");
            return ExitCode::SUCCESS;
        }
        crate::restore::AgentsStep::Machines(t) if t.is_empty() => return ExitCode::SUCCESS,
        crate::restore::AgentsStep::Machines(t) => t,
    };
    let settings =
        match super::agents::settings(cfg, flags, &plan.target_root, plan.address.clone(), false) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("juju-brd: cannot update the other machines: {e:#}");
                return ExitCode::from(super::agents::NOT_ALL_UPDATED);
            }
        };
    println!("Updating the agents of the environment's other machines:");
    let reports = super::agents::run_and_report(targets, &settings, false);
    let code = super::agents::exit_for(&reports);
    if code != ExitCode::SUCCESS {
        let mut finish = format!(
            "juju-brd update-agents --archive {} --address {}",
            opts.archive.display(),
            plan.address
        );
        if plan.target_root != Path::new("/") {
            finish.push_str(&format!(" --ssh-key {}", settings.ssh.key.display()));
        }
        println!(
            "The state-server is restored, but not every machine was updated. Once they are \
             reachable, finish with:\n  {finish}"
        );
    }
    code
}
