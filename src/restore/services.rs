//! Stopping the state-server's services before a restore and starting them again after it.
//!
//! `restore.stop_commands` and `start_commands` are argv lists, run in order. A command of the
//! form `systemctl stop|start UNIT...` (the defaults: `systemctl stop jujud-machine-* juju-db`,
//! `systemctl start juju-db jujud-machine-*`) is not run as written, because systemctl expands a
//! glob only over the units loaded at that moment, and a stopped unit that nothing references is
//! unloaded: `systemctl start jujud-machine-*` then exits 0 having started nothing, and the restore
//! would report success with the agent down. Instead:
//!
//! - before stopping, each pattern is resolved to unit names: the loaded units
//!   (`systemctl list-units --all`) and those with a unit file (`systemctl list-unit-files`),
//!   leaving out templates, aliases, masked and not-found units. A plain name that matches no
//!   unit is refused, as `systemctl stop` refuses it, before anything has changed; a glob that
//!   matches none stops nothing. Those units are stopped and remembered;
//! - to start, systemd re-reads the unit files (the restore may have put some in place), the
//!   patterns are resolved again, and the units stopped plus the units matching now are started
//!   in one `systemctl start`. Every pattern must name at least one unit by then, and every unit
//!   must be `active` afterwards (`systemctl is-active`, polled while units are still activating),
//!   or starting fails, naming the units and their states.
//!
//! Any other command (other programs, other verbs, options) runs as written, as before.

use std::io::{Read, Seek};
use std::time::{Duration, Instant};

use crate::process::{self, ChildSpec, ProcessError};

/// What the stop commands are called in messages (as `restore` named them before).
const STOPPING: &str = "stopping the state-server";
const STARTING: &str = "starting the state-server";
/// Bound of each listing and `is-active` query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long started units may stay `activating` before they count as not started.
const ACTIVE_WITHIN: Duration = Duration::from_secs(30);

/// The unit types systemctl knows by suffix: a name without one means `NAME.service`.
const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
    ".scope",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Stop,
    Start,
}

/// A `systemctl stop|start PATTERN...` command: the program as configured and its patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCommand {
    pub systemctl: String,
    pub verb: Verb,
    pub patterns: Vec<String>,
}

impl UnitCommand {
    /// The command as a unit list, if it is `systemctl stop|start` followed by unit names or
    /// patterns only (no options); `None` for anything else, which runs as written.
    pub fn parse(argv: &[String]) -> Option<UnitCommand> {
        let (program, rest) = argv.split_first()?;
        let is_systemctl = std::path::Path::new(program)
            .file_name()
            .is_some_and(|n| n == "systemctl");
        let (verb, patterns) = rest.split_first()?;
        let verb = match verb.as_str() {
            "stop" => Verb::Stop,
            "start" => Verb::Start,
            _ => return None,
        };
        if !is_systemctl || patterns.is_empty() || patterns.iter().any(|p| p.starts_with('-')) {
            return None;
        }
        Some(UnitCommand {
            systemctl: program.clone(),
            verb,
            patterns: patterns.iter().map(|p| mangle(p)).collect(),
        })
    }
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The unit name or pattern as systemctl reads it: a glob or a name with a unit suffix stays as
/// it is, any other name gets `.service`.
pub fn mangle(pattern: &str) -> String {
    if is_glob(pattern) || UNIT_SUFFIXES.iter().any(|s| pattern.ends_with(s)) {
        pattern.to_string()
    } else {
        format!("{pattern}.service")
    }
}

/// Whether `unit` is matched by `pattern` (already [`mangle`]d), as systemctl's fnmatch does.
fn matches(pattern: &str, unit: &str) -> bool {
    if !is_glob(pattern) {
        return pattern == unit;
    }
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(unit))
}

/// Unit names in `systemctl list-units --all --plain --no-legend` output (`UNIT LOAD ACTIVE SUB
/// DESCRIPTION`), leaving out units that are not found or masked (nothing to stop or start).
pub fn parse_list_units(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            // Older systemctl marks failed units with a bullet even in plain output.
            let mut unit = cols.next()?;
            if !unit.contains('.') {
                unit = cols.next()?;
            }
            let load = cols.next()?;
            (!matches!(load, "not-found" | "masked" | "bad-setting" | "error"))
                .then(|| unit.to_string())
        })
        .collect()
}

/// Unit names in `systemctl list-unit-files --no-legend` output (`UNIT STATE [PRESET]`), leaving
/// out templates (`name@.service`: no instance to start), aliases (the unit they name is listed
/// itself) and masked units.
pub fn parse_list_unit_files(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let unit = cols.next()?;
            let state = cols.next().unwrap_or("");
            let usable = !unit.contains("@.")
                && !matches!(state, "masked" | "masked-runtime" | "alias" | "bad");
            usable.then(|| unit.to_string())
        })
        .collect()
}

/// The units to start: those stopped that a pattern matches, then those matching now, once each;
/// or the first pattern that matches none of them.
pub fn units_to_start(
    patterns: &[String],
    stopped: &[String],
    now: &[String],
) -> Result<Vec<String>, String> {
    let mut units: Vec<String> = Vec::new();
    for unit in stopped.iter().chain(now) {
        if patterns.iter().any(|p| matches(p, unit)) && !units.contains(unit) {
            units.push(unit.clone());
        }
    }
    match patterns
        .iter()
        .find(|p| !units.iter().any(|u| matches(p, u)))
    {
        Some(p) => Err(p.clone()),
        None => Ok(units),
    }
}

/// The units of `is-active` output (one state per line, in order) that are not `active`, with
/// their states; and whether any of them may still get there (`activating`, `reloading`).
pub fn not_active(units: &[String], output: &str) -> (Vec<(String, String)>, bool) {
    let states: Vec<&str> = output.lines().map(str::trim).collect();
    let mut pending = false;
    let bad = units
        .iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let state = states.get(i).copied().unwrap_or("unknown");
            pending |= matches!(state, "activating" | "reloading");
            (state != "active").then(|| (u.clone(), state.to_string()))
        })
        .collect();
    (bad, pending)
}

/// The stop and start commands of one restore, and what the stop commands stopped.
pub struct Services<'a> {
    stop: &'a [Vec<String>],
    start: &'a [Vec<String>],
    /// Units stopped by `systemctl stop` commands, in order (recorded before they are stopped,
    /// so that a failed stop still starts them again).
    stopped: Vec<String>,
}

impl<'a> Services<'a> {
    pub fn new(stop: &'a [Vec<String>], start: &'a [Vec<String>]) -> Self {
        Services {
            stop,
            start,
            stopped: Vec::new(),
        }
    }

    /// The units stopped so far.
    pub fn stopped(&self) -> &[String] {
        &self.stopped
    }

    /// Runs the stop commands; each may take `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), ProcessError> {
        for argv in self.stop.iter().filter(|c| !c.is_empty()) {
            let Some(cmd) = UnitCommand::parse(argv).filter(|c| c.verb == Verb::Stop) else {
                process::run(ChildSpec::new(STOPPING, argv, timeout))?;
                continue;
            };
            let units = resolve(&cmd, STOPPING)?;
            if let Some(p) = cmd
                .patterns
                .iter()
                .find(|p| !is_glob(p) && !units.contains(p))
            {
                return Err(failed(
                    STOPPING,
                    &cmd.systemctl,
                    format!("found no unit {p} to stop (systemctl list-units, list-unit-files)"),
                ));
            }
            if units.is_empty() {
                tracing::warn!(patterns = %cmd.patterns.join(" "), "no unit matches; nothing to stop");
                continue;
            }
            tracing::info!(units = %units.join(" "), "stopping");
            for u in &units {
                if !self.stopped.contains(u) {
                    self.stopped.push(u.clone());
                }
            }
            systemctl(&cmd.systemctl, "stop", &units, STOPPING, timeout)?;
        }
        Ok(())
    }

    /// Runs the start commands; each may take `timeout`. Units are checked to be active.
    pub fn start(&self, timeout: Duration) -> Result<(), ProcessError> {
        let mut reloaded = false;
        for argv in self.start.iter().filter(|c| !c.is_empty()) {
            let Some(cmd) = UnitCommand::parse(argv).filter(|c| c.verb == Verb::Start) else {
                let mut spec = ChildSpec::new(STARTING, argv, timeout);
                spec.starts_services = true;
                process::run(spec)?;
                continue;
            };
            // The restore may have replaced or added unit files: systemd reads them again first.
            if !reloaded {
                systemctl(&cmd.systemctl, "daemon-reload", &[], STARTING, timeout)?;
                reloaded = true;
            }
            let now = resolve(&cmd, STARTING)?;
            let units = units_to_start(&cmd.patterns, &self.stopped, &now).map_err(|p| {
                failed(
                    STARTING,
                    &cmd.systemctl,
                    format!("found no unit {p} to start; nothing matching it was stopped either"),
                )
            })?;
            tracing::info!(units = %units.join(" "), "starting");
            systemctl(&cmd.systemctl, "start", &units, STARTING, timeout)?;
            wait_active(&cmd.systemctl, &units)?;
        }
        Ok(())
    }
}

fn failed(what: &str, program: &str, status: String) -> ProcessError {
    ProcessError::Failed {
        what: what.into(),
        program: program.into(),
        status,
        code: None,
        stderr: String::new(),
    }
}

/// `systemctl VERB -- UNITS...`, bounded by `timeout`.
fn systemctl(
    program: &str,
    verb: &str,
    units: &[String],
    what: &str,
    timeout: Duration,
) -> Result<(), ProcessError> {
    let mut argv = vec![program.to_string(), verb.to_string()];
    if !units.is_empty() {
        argv.push("--".into());
        argv.extend(units.iter().cloned());
    }
    process::run(ChildSpec::new(what, &argv, timeout))
}

/// Runs `argv` (bounded like every child: see `process`) and returns its stdout and how it ended;
/// a non-zero exit is the caller's to judge.
fn capture(
    argv: &[String],
    what: &str,
    timeout: Duration,
) -> Result<(String, Result<(), ProcessError>), ProcessError> {
    let io = |err| ProcessError::Spawn {
        what: what.into(),
        program: argv.first().cloned().unwrap_or_default(),
        err,
    };
    let mut file = tempfile::tempfile().map_err(io)?;
    let mut spec = ChildSpec::new(what, argv, timeout);
    spec.stdout = file.try_clone().map_err(io)?.into();
    let ended = process::run(spec);
    file.rewind().map_err(io)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    Ok((text, ended))
}

/// The stdout of `argv`, which must succeed.
fn output(argv: &[String], what: &str, timeout: Duration) -> Result<String, ProcessError> {
    let (text, ended) = capture(argv, what, timeout)?;
    ended.map(|()| text)
}

/// The units `cmd`'s patterns match now, loaded or not.
fn resolve(cmd: &UnitCommand, what: &str) -> Result<Vec<String>, ProcessError> {
    let query = |args: &[&str]| -> Result<String, ProcessError> {
        let mut argv = vec![cmd.systemctl.clone()];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.push("--".into());
        argv.extend(cmd.patterns.iter().cloned());
        output(&argv, what, QUERY_TIMEOUT)
    };
    let loaded = parse_list_units(&query(&[
        "list-units",
        "--all",
        "--plain",
        "--no-legend",
        "--full",
        "--no-pager",
    ])?);
    let with_files = parse_list_unit_files(&query(&[
        "list-unit-files",
        "--no-legend",
        "--full",
        "--no-pager",
    ])?);
    let mut units: Vec<String> = Vec::new();
    for u in loaded.into_iter().chain(with_files) {
        // Only what a pattern names (systemctl matched them; this keeps a stray line out).
        if cmd.patterns.iter().any(|p| matches(p, &u)) && !units.contains(&u) {
            units.push(u);
        }
    }
    Ok(units)
}

/// Polls `systemctl is-active UNITS` until every unit is `active`; fails naming the others once
/// none is still activating, or after [`ACTIVE_WITHIN`].
fn wait_active(program: &str, units: &[String]) -> Result<(), ProcessError> {
    let end = Instant::now() + ACTIVE_WITHIN;
    let mut argv = vec![program.to_string(), "is-active".into(), "--".into()];
    argv.extend(units.iter().cloned());
    loop {
        // is-active exits non-zero when any unit is not active: only its output counts, unless
        // it did not run to the end (it timed out, could not start).
        let text = match capture(&argv, STARTING, QUERY_TIMEOUT)? {
            (text, Ok(()) | Err(ProcessError::Failed { .. })) => text,
            (_, Err(e)) => return Err(e),
        };
        let (bad, pending) = not_active(units, &text);
        if bad.is_empty() {
            return Ok(());
        }
        if !pending || Instant::now() >= end {
            let states: Vec<String> = bad.iter().map(|(u, s)| format!("{u} is {s}")).collect();
            return Err(failed(
                STARTING,
                program,
                format!(
                    "started the units, but not all are active: {}",
                    states.join(", ")
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn systemctl_stop_and_start_become_unit_lists_and_the_rest_runs_as_written() {
        let c = UnitCommand::parse(&argv(&["systemctl", "stop", "jujud-machine-*", "juju-db"]))
            .unwrap();
        assert_eq!(c.verb, Verb::Stop);
        assert_eq!(c.patterns, ["jujud-machine-*", "juju-db.service"]);
        let c = UnitCommand::parse(&argv(&["/bin/systemctl", "start", "juju-db.socket"])).unwrap();
        assert_eq!(
            (c.verb, c.systemctl.as_str()),
            (Verb::Start, "/bin/systemctl")
        );
        assert_eq!(c.patterns, ["juju-db.socket"]);
        for other in [
            &["systemctl", "restart", "juju-db"][..],
            &["systemctl", "stop", "--no-block", "juju-db"],
            &["systemctl", "stop"],
            &["service", "juju-db", "stop"],
            &["snap", "stop", "juju-db"],
            &["mysystemctl", "stop", "x"],
        ] {
            assert_eq!(UnitCommand::parse(&argv(other)), None, "{other:?}");
        }
    }

    #[test]
    fn names_are_mangled_as_systemctl_does() {
        assert_eq!(mangle("juju-db"), "juju-db.service");
        assert_eq!(mangle("juju-db.service"), "juju-db.service");
        assert_eq!(mangle("jujud-machine-*"), "jujud-machine-*");
        assert_eq!(mangle("multi-user.target"), "multi-user.target");
        assert!(matches("jujud-machine-*", "jujud-machine-0.service"));
        assert!(!matches("jujud-machine-*", "juju-db.service"));
        assert!(matches("juju-db.service", "juju-db.service"));
        assert!(!matches("juju-db.service", "juju-db2.service"));
    }

    #[test]
    fn listings_are_read_without_templates_masked_or_missing_units() {
        let units = "jujud-machine-0.service loaded inactive dead juju agent for machine-0\n\
                     juju-db.service         loaded active   running juju-db\n\
                     jujud-machine-9.service not-found inactive dead jujud-machine-9.service\n\
                     \u{25cf} jujud-machine-2.service loaded failed failed juju agent\n\
                     jujud-machine-3.service masked inactive dead jujud-machine-3.service\n";
        assert_eq!(
            parse_list_units(units),
            [
                "jujud-machine-0.service",
                "juju-db.service",
                "jujud-machine-2.service"
            ]
        );
        let files = "jujud-machine-0.service disabled enabled\n\
                     jujud-machine@.service  static   -\n\
                     jujud-machine-5.service masked   enabled\n\
                     jujud-machine-6.service alias    -\n\
                     juju-db.service         enabled  enabled\n";
        assert_eq!(
            parse_list_unit_files(files),
            ["jujud-machine-0.service", "juju-db.service"]
        );
        assert!(parse_list_units("").is_empty());
    }

    /// Issue 14 item 3, defect 5: a unit stopped (and since unloaded, so no listing shows it) is
    /// started again; one the restore brought is started too; a pattern nothing answers fails.
    #[test]
    fn exactly_the_stopped_units_and_those_matching_now_are_started() {
        let patterns = argv(&["juju-db.service", "jujud-machine-*"]);
        let stopped = argv(&["jujud-machine-0.service", "juju-db.service"]);
        assert_eq!(
            units_to_start(&patterns, &stopped, &argv(&["juju-db.service"])).unwrap(),
            ["jujud-machine-0.service", "juju-db.service"]
        );
        assert_eq!(
            units_to_start(
                &patterns,
                &argv(&["juju-db.service"]),
                &argv(&["juju-db.service", "jujud-machine-1.service"])
            )
            .unwrap(),
            ["juju-db.service", "jujud-machine-1.service"]
        );
        // A stopped unit no start pattern names stays stopped.
        assert_eq!(
            units_to_start(
                &argv(&["juju-db.service"]),
                &stopped,
                &argv(&["juju-db.service"])
            )
            .unwrap(),
            ["juju-db.service"]
        );
        assert_eq!(
            units_to_start(&patterns, &argv(&["juju-db.service"]), &[]).unwrap_err(),
            "jujud-machine-*"
        );
    }

    /// A systemctl stand-in over a state directory: `loaded/UNIT` holds a loaded unit's state,
    /// `files/UNIT` a unit file; stopping unloads a unit (as systemd does to a stopped unit that
    /// nothing references), starting loads it active, or failed when `broken/UNIT` exists.
    fn fake_systemctl(dir: &std::path::Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        for d in ["loaded", "files", "broken"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let script = format!(
            r#"#!/bin/sh
S={state}
echo "$*" >> "$S/calls"
verb=$1
while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done
if [ $# -gt 0 ]; then shift; fi
case "$verb" in
list-units)
  for f in "$S"/loaded/*; do [ -e "$f" ] || continue; u=${{f##*/}}
    for p in "$@"; do case "$u" in $p) echo "$u loaded $(cat "$f") x desc"; break;; esac; done; done ;;
list-unit-files)
  for f in "$S"/files/*; do [ -e "$f" ] || continue; u=${{f##*/}}
    for p in "$@"; do case "$u" in $p) echo "$u disabled enabled"; break;; esac; done; done ;;
stop) for u in "$@"; do rm -f "$S/loaded/$u"; done ;;
start) for u in "$@"; do
    if [ -e "$S/broken/$u" ]; then echo failed > "$S/loaded/$u"; else echo active > "$S/loaded/$u"; fi; done ;;
is-active) rc=0; for u in "$@"; do
    if [ -e "$S/loaded/$u" ]; then s=$(cat "$S/loaded/$u"); else s=inactive; fi
    echo "$s"; [ "$s" = active ] || rc=3; done; exit $rc ;;
daemon-reload) ;;
*) exit 1 ;;
esac
"#,
            state = dir.display()
        );
        let path = dir.join("systemctl");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    /// The whole stop and start against the stand-in: the agent, unloaded once stopped and so
    /// invisible to a glob, is started again and checked; a unit that fails is named.
    #[test]
    fn a_stopped_and_unloaded_unit_is_started_again_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let sc = fake_systemctl(dir.path());
        let state = |p: &str| dir.path().join(p);
        std::fs::write(state("loaded/jujud-machine-0.service"), "active").unwrap();
        std::fs::write(state("loaded/juju-db.service"), "active").unwrap();
        std::fs::write(state("files/juju-db.service"), "").unwrap();
        std::fs::write(state("loaded/unrelated.service"), "active").unwrap();
        let stop = vec![argv(&[&sc, "stop", "jujud-machine-*", "juju-db"])];
        let start = vec![argv(&[&sc, "start", "juju-db", "jujud-machine-*"])];
        let mut services = Services::new(&stop, &start);
        services.stop(Duration::from_secs(10)).unwrap();
        assert_eq!(
            services.stopped(),
            ["juju-db.service", "jujud-machine-0.service"]
        );
        assert!(!state("loaded/jujud-machine-0.service").exists());
        services.start(Duration::from_secs(10)).unwrap();
        for u in ["jujud-machine-0.service", "juju-db.service"] {
            assert_eq!(
                std::fs::read_to_string(state(&format!("loaded/{u}")))
                    .unwrap()
                    .trim(),
                "active",
                "{u}"
            );
        }
        let calls = std::fs::read_to_string(state("calls")).unwrap();
        assert!(
            calls.contains("start -- juju-db.service jujud-machine-0.service"),
            "{calls}"
        );
        assert!(!calls.contains("unrelated"), "{calls}");

        // A unit that does not come up fails the start, named with its state.
        std::fs::write(state("broken/jujud-machine-0.service"), "").unwrap();
        let mut services = Services::new(&stop, &start);
        services.stop(Duration::from_secs(10)).unwrap();
        let e = services
            .start(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("jujud-machine-0.service is failed"), "{e}");

        // A plain name that is no unit is refused before anything is stopped.
        let stop = vec![argv(&[&sc, "stop", "jujud-machine-*", "no-such-db"])];
        let mut services = Services::new(&stop, &start);
        let e = services
            .stop(Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no unit no-such-db.service"), "{e}");
        assert!(services.stopped().is_empty());
    }

    #[test]
    fn is_active_output_names_the_units_that_are_not() {
        let units = argv(&["juju-db.service", "jujud-machine-0.service"]);
        assert_eq!(not_active(&units, "active\nactive\n"), (vec![], false));
        assert_eq!(
            not_active(&units, "active\nfailed\n"),
            (
                vec![("jujud-machine-0.service".into(), "failed".into())],
                false
            )
        );
        assert_eq!(
            not_active(&units, "activating\nactive\n"),
            (vec![("juju-db.service".into(), "activating".into())], true)
        );
        assert_eq!(
            not_active(&units, "active\n").0,
            vec![("jujud-machine-0.service".into(), "unknown".into())]
        );
    }
}
