//! `juju-brd man` and `juju-brd completions`: the built binary writes a page per subcommand, each
//! renders with `man -l` and groff without a warning, and the bash, zsh and fish completion
//! scripts load in the real shells and offer the subcommands.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The subcommands the built binary lists in `--help` (clap's `help` left out).
fn subcommands() -> Vec<String> {
    let out = run_ok(Command::new(common::BIN).arg("--help"));
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<String> = text
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        // Continuation lines of a wrapped description are indented further.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    for must in ["backup", "restore", "verify", "list", "daemon", "status"] {
        assert!(
            names.iter().any(|n| n == must),
            "`{must}` not among the subcommands read from --help: {names:?}\n{text}"
        );
    }
    names
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `juju-brd man --dir DIR`: the paths it prints, which must be exactly the files in DIR.
fn generate_pages(dir: &Path) -> Vec<PathBuf> {
    let out = run_ok(Command::new(common::BIN).arg("man").arg("--dir").arg(dir));
    let printed: Vec<PathBuf> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    on_disk.sort();
    let mut sorted = printed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "printed paths differ from the files written"
    );
    printed
}

fn completion_script(shell: &str, dir: &Path) -> PathBuf {
    let out = run_ok(Command::new(common::BIN).args(["completions", shell]));
    assert!(!out.stdout.is_empty(), "empty {shell} completion script");
    let p = dir.join(format!("juju-brd.{shell}"));
    std::fs::write(&p, out.stdout).unwrap();
    p
}

#[test]
fn man_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pages = generate_pages(dir.path());
    let mut names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = subcommands()
        .iter()
        .map(|s| format!("juju-brd-{s}.1"))
        .chain(["juju-brd.1".to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);

    // Each subcommand's page is that subcommand's, and names the package in its footer.
    for sub in subcommands() {
        let page = std::fs::read_to_string(dir.path().join(format!("juju-brd-{sub}.1"))).unwrap();
        let th = page
            .lines()
            .find(|l| l.starts_with(".TH "))
            .unwrap_or_else(|| panic!("no .TH in juju-brd-{sub}.1:\n{page}"));
        assert!(
            th.starts_with(&format!(".TH juju-brd-{sub} 1 ")),
            "title line of juju-brd-{sub}.1: {th}"
        );
        assert!(
            th.contains(concat!("\"juju-brd ", env!("CARGO_PKG_VERSION"), "\"")),
            "footer of juju-brd-{sub}.1 does not name the package version: {th}"
        );
    }

    // Without --dir, the main page goes to stdout, the same as the file.
    let out = run_ok(Command::new(common::BIN).arg("man"));
    assert_eq!(
        out.stdout,
        std::fs::read(dir.path().join("juju-brd.1")).unwrap()
    );
}

#[test]
#[ignore = "needs man: Debian package man-db"]
fn man_pages_render_without_warnings() {
    common::require_debian("man", "man-db");
    let dir = tempfile::tempdir().unwrap();
    let pages = generate_pages(dir.path());
    let subs = subcommands();
    for page in &pages {
        let out = Command::new("man")
            .args(["--warnings=all", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("MANPAGER")
            .env_remove("PAGER")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "man -l {}: {}\n{err}",
            page.display(),
            out.status
        );
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"] {
            assert!(
                text.lines().any(|l| l == section),
                "{} renders without a {section} section:\n{text}",
                page.display()
            );
        }
        assert!(
            text.lines().all(|l| l.chars().count() <= 80),
            "{} renders lines wider than MANWIDTH=80:\n{text}",
            page.display()
        );
    }
    // The main page lists every subcommand's page.
    let main = Command::new("man")
        .arg("-l")
        .arg(dir.path().join("juju-brd.1"))
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&main.stdout);
    for sub in &subs {
        assert!(
            text.contains(&format!("juju-brd-{sub}(1)")),
            "juju-brd(1) does not refer to juju-brd-{sub}(1):\n{text}"
        );
    }
}

#[test]
#[ignore = "needs groff: Debian package groff-base"]
fn man_pages_pass_groff_with_all_warnings() {
    common::require_debian("groff", "groff-base");
    let dir = tempfile::tempdir().unwrap();
    for page in generate_pages(dir.path()) {
        // -z: parse and format, print nothing; -ww: every warning category.
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&page)
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "groff -ww {}: {}\n{err}",
            page.display(),
            out.status
        );
    }
}

/// Sources `script` in a clean bash and completes `words` (the last one being completed), as
/// bash does on TAB: through the function `complete -p juju-brd` names. Returns COMPREPLY.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let bash = common::require_program("bash", "Debian package bash, on every Debian system");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let line = words.join(" ");
    let program = format!(
        r#"set -u
source "$1"
spec=$(complete -p juju-brd) || {{ echo "no completion registered for juju-brd" >&2; exit 1; }}
func=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
[ -n "$func" ] || {{ echo "no -F function in: $spec" >&2; exit 1; }}
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
"$func" juju-brd "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    let out = run_ok(
        Command::new(bash)
            .args(["--norc", "--noprofile", "-c", &program, "bash"])
            .arg(script),
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_offers_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("bash", dir.path());
    let reply = bash_complete(&script, &["juju-brd", ""]);
    for sub in subcommands() {
        assert!(
            reply.contains(&sub),
            "COMPREPLY for `juju-brd <TAB>` lacks {sub}: {reply:?}"
        );
    }
    // Not the hidden one a workstation runs over SSH.
    assert!(
        !reply.iter().any(|r| r.contains("stream-backup")),
        "COMPREPLY for `juju-brd <TAB>` offers the hidden _stream-backup: {reply:?}"
    );
    let reply = bash_complete(&script, &["juju-brd", "_"]);
    assert!(
        reply.is_empty(),
        "COMPREPLY for `juju-brd _<TAB>`: {reply:?}"
    );
    // A prefix narrows it; a subcommand's value list is offered after it.
    let reply = bash_complete(&script, &["juju-brd", "re"]);
    assert_eq!(reply, ["restore"], "COMPREPLY for `juju-brd re<TAB>`");
    // The shells, and (as clap offers them) the flags.
    let mut shells = bash_complete(&script, &["juju-brd", "completions", ""]);
    shells.retain(|w| !w.starts_with('-'));
    shells.sort();
    assert_eq!(
        shells,
        ["bash", "fish", "zsh"],
        "`juju-brd completions <TAB>`"
    );
    // A subcommand's own flags (clap_complete's hyphenated-name bug hid them; see docs.rs).
    let reply = bash_complete(&script, &["juju-brd", "backup", "--"]);
    for flag in ["--offline", "--notes", "--config", "--help"] {
        assert!(
            reply.iter().any(|r| r == flag),
            "`juju-brd backup --<TAB>` lacks {flag}: {reply:?}"
        );
    }
}

#[test]
#[ignore = "needs fish: Debian package fish"]
fn fish_completion_offers_the_subcommands() {
    let fish = common::require_debian("fish", "fish");
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("fish", dir.path());
    // `complete -C LINE` prints what fish would offer on TAB at the end of LINE: "word\tdesc".
    let complete = |line: &str| -> Vec<String> {
        let out = run_ok(Command::new(&fish).args(["--no-config", "-c"]).arg(format!(
            "source '{}'; complete -C '{line}'",
            script.display()
        )));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    let offered = complete("juju-brd ");
    for sub in subcommands() {
        assert!(offered.contains(&sub), "fish offers no {sub}: {offered:?}");
    }
    let offered = complete("juju-brd backup --");
    for flag in ["--offline", "--notes", "--config"] {
        assert!(
            offered.iter().any(|o| o == flag),
            "fish offers no {flag} after `juju-brd backup`: {offered:?}"
        );
    }
}

#[test]
#[ignore = "needs zsh: Debian package zsh"]
fn zsh_completion_loads_and_registers() {
    let zsh = common::require_debian("zsh", "zsh");
    let dir = tempfile::tempdir().unwrap();
    let script = completion_script("zsh", dir.path());
    run_ok(Command::new(&zsh).arg("-n").arg(&script));
    // Installed as `_juju-brd` on $fpath, compinit autoloads it for juju-brd; sourced after
    // compinit, it registers itself with compdef. Either way `_comps[juju-brd]` names it.
    let fpath = dir.path().join("fpath");
    std::fs::create_dir(&fpath).unwrap();
    std::fs::copy(&script, fpath.join("_juju-brd")).unwrap();
    let out = run_ok(Command::new(&zsh).args(["-f", "-c"]).arg(format!(
        "fpath=('{}' $fpath); autoload -Uz compinit && compinit -u -d '{}/zcompdump'; \
         print -r -- \"$_comps[juju-brd]\"",
        fpath.display(),
        dir.path().display()
    )));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "_juju-brd");
    // The function lists every subcommand.
    let text = std::fs::read_to_string(&script).unwrap();
    for sub in subcommands() {
        assert!(
            text.contains(&format!("'{sub}:")),
            "the zsh script does not list {sub}"
        );
    }
}
