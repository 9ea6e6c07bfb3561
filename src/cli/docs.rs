//! `juju-brd completions SHELL` and `juju-brd man [--dir DIR]`: shell completions (clap_complete)
//! and man pages (clap_mangen), generated from the same [`Cli`] definition that parses the command
//! line, so they cannot drift from it. `packaging/build-deb.sh` runs both to put them in the .deb.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::Cli;

/// The name the completions complete and the pages are named after.
const BIN: &str = "juju-brd";

/// The shells the package installs completions for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

pub fn completions(shell: CompletionShell) -> Result<ExitCode> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command_for_completions(), BIN, &mut script);
    if let Shell::Bash = shell {
        script = fix_bash_hyphenated_name(script);
    }
    write_stdout(&script)
}

/// The CLI as the completions offer it: without its hidden subcommands (`_stream-backup` is what a
/// workstation runs over SSH, never typed), which clap_complete (4.6.11) offers all the same.
/// clap cannot remove a subcommand, so the top level is rebuilt around the visible ones.
fn command_for_completions() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new(BIN)
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if full.get_version().is_some() {
        cmd = cmd.version(env!("CARGO_PKG_VERSION"));
    }
    cmd
}

/// clap_complete (4.6.11 and before) spells the completion states of a hyphenated binary two
/// ways in its bash script: the loop over the words sets `juju__brd__subcmd__backup`, the
/// `case` arms test `juju__subcmd__brd__subcmd__backup`, so nothing after a subcommand
/// completes (https://github.com/clap-rs/clap/issues/6421). Spell the arms as the loop does;
/// once clap_complete is fixed this replaces nothing. `tests/manpages.rs` completes
/// `juju-brd backup --` in bash to keep this honest.
fn fix_bash_hyphenated_name(script: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(script).expect("clap_complete writes UTF-8");
    text.replace(&BIN.replace('-', "__subcmd__"), &BIN.replace('-', "__"))
        .into_bytes()
}

/// Without `dir`, prints `juju-brd(1)` to stdout; with it, writes that page and one per
/// subcommand into `dir` and prints each path written.
pub fn man(dir: Option<&Path>) -> Result<ExitCode> {
    let cmd = command_for_pages();
    match dir {
        None => {
            let mut page = Vec::new();
            page_of(cmd).render(&mut page)?;
            write_stdout(&page)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut written = Vec::new();
            write_pages(&cmd, dir, &mut written)?;
            let list: String = written
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            write_stdout(list.as_bytes())
        }
    }
}

/// The CLI as the pages describe it: built, so that subcommands are named `juju-brd-backup` and
/// so on, and without clap's `help` subcommand (every page lists `-h, --help`).
fn command_for_pages() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Every page's footer names the package and its version (clap_mangen's default for a subcommand
/// is the subcommand's bare name).
fn page_of(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd).source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let man = page_of(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`juju-brd man | head`) is an error, not a panic.
fn write_stdout(bytes: &[u8]) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}
