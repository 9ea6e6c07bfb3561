//! Config loading: defaults, every wrong key and value refused by name and line.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/juju-brd/test.toml"))
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn minimal_config_gets_production_defaults() {
    let c = parse("environment = \"prod\"\n").unwrap();
    assert_eq!(c.archive_dir, PathBuf::from("/var/lib/juju-brd/archives"));
    assert_eq!(c.backup.level(), 7);
    assert_eq!(c.files.include.len(), 5);
    assert_eq!(c.schedule.timezone, chrono_tz::Tz::UTC);
    assert!(c.schedule.catch_up);
}

#[test]
fn wrong_type_names_file_key_and_line() {
    let e = err("environment = \"p\"\n\n[retention]\nkeep_daily = \"seven\"\n");
    assert!(
        e.starts_with("/etc/juju-brd/test.toml:4: retention.keep_daily:"),
        "{e}"
    );
}

#[test]
fn unknown_key_is_refused_with_a_suggestion() {
    let e = err("environment = \"p\"\n[retention]\nkeep_dayly = 7\n");
    assert!(e.contains(":3: retention"), "{e}");
    assert!(e.contains("did you mean `keep_daily`?"), "{e}");
}

#[test]
fn semantic_errors_name_the_key_and_line() {
    let e = err("environment = \"p\"\n[schedule]\ncron = \"61 * * * *\"\n");
    assert!(e.contains(":3: schedule.cron:"), "{e}");
    let e = err("environment = \"p\"\n[schedule]\ntimezone = \"Mars/Olympus\"\n");
    assert!(e.contains(":3: schedule.timezone:"), "{e}");
    let e = err("environment = \"p\"\n[backup]\nlevel = 13\n");
    assert!(
        e.contains(":3: backup.level: gzip level must be 1-12"),
        "{e}"
    );
    let e = err("environment = \"p\"\n[database]\nengine = \"sqlite\"\n");
    assert!(e.contains("database.path"), "{e}");
    let e = err("environment = \"p\"\n[api]\ntcp_listen = \"0.0.0.0:1\"\ntoken_file = \"t\"\n");
    assert!(e.contains(":3: api.tcp_listen:"), "{e}");
}

#[test]
fn bad_enum_and_size_values_are_explained() {
    let e = err("environment = \"p\"\n[backup]\ncompression = \"lz4\"\n");
    assert!(
        e.contains(":3: backup.compression:") && e.contains("lz4"),
        "{e}"
    );
    let e = err("environment = \"p\"\n[retention]\nmin_free_space = \"lots\"\n");
    assert!(e.contains("retention.min_free_space"), "{e}");
    let e = err("environment = \"p\"\n[hooks]\ntimeout = \"soon\"\n");
    assert!(e.contains(":3: hooks.timeout:"), "{e}");
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err("environment = \"p\"\n[backup\n");
    assert!(e.contains("test.toml:2:"), "{e}");
}

/// Every key, given a value of the wrong type or an invalid one, is refused naming that key
/// and its line.
#[test]
fn every_key_with_a_wrong_value_is_refused_by_name_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "archive_dir", "42"),
        ("", "state_dir", "[1]"),
        ("backup", "compression", "\"lz4\""),
        ("backup", "level", "\"high\""),
        ("backup", "threads", "-1"),
        ("backup", "verify_after", "\"yes\""),
        ("backup", "file_retries", "1.5"),
        ("files", "root", "42"),
        ("files", "include", "[1]"),
        ("files", "include", "[\"relative/path\"]"),
        ("files", "optional", "\"/one\""),
        ("files", "exclude", "[\"[\"]"),
        ("database", "engine", "\"oracle\""),
        ("database", "path", "1"),
        ("database", "command", "\"pg_dump\""),
        ("database", "restore_command", "1"),
        ("database", "dump_file", "\"a/b\""),
        ("database", "environment_file", "[]"),
        ("database", "estimate_bytes", "\"big\""),
        ("database", "timeout", "\"soon\""),
        ("database", "servers", "\"127.0.0.1:9001\""),
        ("database", "databases", "[\"../x\"]"),
        ("database", "shell", "[]"),
        ("database", "tls_cert", "1"),
        ("database", "tls_key", "1"),
        ("hooks", "pre", "\"sync\""),
        ("hooks", "post", "1"),
        ("hooks", "timeout", "5"),
        ("controller", "model_uuid", "1"),
        ("controller", "controller_uuid", "[]"),
        ("controller", "machine", "0"),
        ("controller", "version", "2.9"),
        ("controller", "series", "true"),
        ("controller", "addresses", "\"10.0.0.1\""),
        ("schedule", "cron", "\"every day\""),
        ("schedule", "timezone", "\"Mars/Base\""),
        ("schedule", "jitter", "\"lots\""),
        ("schedule", "catch_up", "1"),
        ("retention", "keep_last", "-3"),
        ("retention", "keep_hourly", "\"x\""),
        ("retention", "keep_daily", "\"seven\""),
        ("retention", "keep_weekly", "1.5"),
        ("retention", "keep_monthly", "[]"),
        ("retention", "keep_yearly", "true"),
        ("retention", "min_free_space", "\"lots\""),
        ("api", "socket", "1"),
        ("api", "socket_mode", "\"0999\""),
        ("api", "tcp_listen", "\"localhost\""),
        ("api", "token_file", "1"),
        ("api", "allow_non_loopback", "\"no\""),
        ("restore", "stop_commands", "[\"systemctl\"]"),
        ("restore", "start_commands", "1"),
        ("restore", "database_start_commands", "\"x\""),
        ("restore", "health_command", "1"),
        ("restore", "health_timeout", "\"later\""),
        ("restore", "probe_ports", "[70000]"),
        ("restore", "probe_timeout", "2"),
        ("ha", "self_address", "1"),
        ("ha", "prefer", "[]"),
        ("ha", "probe_timeout", "\"fast\""),
    ];
    for (section, key, value) in cases {
        let (text, dotted) = if section.is_empty() {
            (
                format!("environment = \"p\"\n\n{key} = {value}\n"),
                key.to_string(),
            )
        } else {
            (
                format!("environment = \"p\"\n[{section}]\n{key} = {value}\n"),
                format!("{section}.{key}"),
            )
        };
        let e = err(&text);
        assert!(
            e.contains(&format!("test.toml:3: {dotted}")),
            "{dotted} = {value}: {e}"
        );
    }
    assert!(err("environment = 42\n").contains("test.toml:1: environment"));
}

#[test]
fn unreadable_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read config {}", dir.path().display())),
        "{e}"
    );
}

#[test]
fn byte_sizes() {
    assert_eq!(ByteSize::parse("2GiB").unwrap().0, 2 << 30);
    assert_eq!(ByteSize::parse("512 MiB").unwrap().0, 512 << 20);
    assert_eq!(ByteSize::parse("1000").unwrap().0, 1000);
    assert!(ByteSize::parse("2 parsecs").is_err());
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let c = parse("environment = \"p\"\narchive_dir = \"out\"\n").unwrap();
    assert_eq!(c.archive_dir, PathBuf::from("/etc/juju-brd/out"));
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no configs under {}", dir.display());
}

/// Numbers the TOML parser itself refuses (out of i64, a float overflow) name their key too, not
/// "(top level)", in tables, arrays of tables and inline tables.
#[test]
fn out_of_range_numbers_name_their_key_and_line() {
    for (text, want) in [
        (
            "environment = \"p\"\n[retention]\nkeep_daily = 99999999999999999999\n",
            ":3: retention.keep_daily:",
        ),
        (
            "environment = \"p\"\n[retention]\nkeep_daily = 5000000000\n",
            ":3: retention.keep_daily:",
        ),
        (
            "environment = \"p\"\n\n[[remote]]\nname = \"a\"\nbucket = \"bkt\"\n[[remote]]\nname = \"b\"\nretries = 99999999999999999999\n",
            ":8: remote[1].retries:",
        ),
        (
            "environment = \"p\"\nbackup = { compression = \"gzip\", level = 99999999999999999999 }\n",
            ":2: backup.level:",
        ),
        (
            "environment = \"p\"\n[hooks]\ntimeout = 1e400\n",
            ":3: hooks.timeout:",
        ),
        (
            "environment = \"p\"\n[restore]\nprobe_ports = [\n  17070,\n  99999999999999999999,\n]\n",
            ":5: restore.probe_ports:",
        ),
    ] {
        let e = err(text);
        assert!(e.contains(want), "want {want}, got {e}");
    }
}

/// Every duration key has a maximum (and timeouts a minimum); the error names key, line, value
/// and the maximum. `jitter = "99999999999d"` once panicked the scheduler.
#[test]
fn absurd_durations_and_counts_are_refused_by_key_and_line() {
    for (section, key, value, want) in [
        ("schedule", "jitter", "\"99999999999d\"", "maximum of 1day"),
        ("schedule", "jitter", "\"25h\"", "maximum of 1day"),
        ("hooks", "timeout", "\"400d\"", "maximum of 1day"),
        ("hooks", "timeout", "\"0s\"", "0s would fail"),
        (
            "database",
            "timeout",
            "\"18446744073709551615s\"",
            "maximum of 1day",
        ),
        ("ha", "probe_timeout", "\"1h\"", "maximum of 5m"),
        ("restore", "health_timeout", "\"2d\"", "maximum of 1day"),
        ("restore", "probe_timeout", "\"0ms\"", "0s would fail"),
        ("backup", "threads", "100000", "maximum of 256"),
        ("backup", "file_retries", "4294967295", "maximum of 100"),
    ] {
        let e = err(&format!(
            "environment = \"p\"\n[{section}]\n{key} = {value}\n"
        ));
        assert!(
            e.contains(&format!(":3: {section}.{key}:")) && e.contains(want),
            "{section}.{key} = {value}: {e}"
        );
    }
    for (key, value, want) in [
        ("retry_delay", "\"2h\"", "maximum of 1h"),
        ("retries", "1000", "maximum of 100"),
        ("part_size", "\"6GiB\"", "at most 5GiB"),
    ] {
        let e = err(&format!(
            "environment = \"p\"\n[[remote]]\nname = \"a\"\nbucket = \"bkt\"\n{key} = {value}\n"
        ));
        assert!(
            e.contains(&format!(":5: remote[0].{key}:")) && e.contains(want),
            "{key} = {value}: {e}"
        );
    }
    // The maxima themselves are accepted.
    parse("environment = \"p\"\n[schedule]\njitter = \"1day\"\n[hooks]\ntimeout = \"24h\"\n")
        .unwrap();
}

#[test]
fn a_cron_that_never_fires_is_refused_by_key_and_line() {
    let e = err("environment = \"p\"\n\n[schedule]\ncron = \"0 0 30 2 *\"\n");
    assert!(e.contains(":4: schedule.cron:"), "{e}");
    assert!(e.contains("never fires"), "{e}");
}

/// A socket mode that gives every local user the API (archives hold the controller's keys) is
/// refused; group access is fine.
#[test]
fn socket_modes_open_to_other_users_are_refused() {
    for mode in ["0666", "0606", "0661", "0604", "0777"] {
        let e = err(&format!(
            "environment = \"p\"\n[api]\nsocket_mode = \"{mode}\"\n"
        ));
        assert!(e.contains(":3: api.socket_mode:"), "{mode}: {e}");
        assert!(e.contains("every local user"), "{mode}: {e}");
    }
    for mode in ["0600", "0660", "0640", "0700"] {
        parse(&format!(
            "environment = \"p\"\n[api]\nsocket_mode = \"{mode}\"\n"
        ))
        .unwrap();
    }
}

#[test]
fn secret_files_readable_by_everyone_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let env = dir.path().join("db.env");
    std::fs::write(&env, "PGPASSWORD=x\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = Config::parse(
        &format!(
            "environment = \"p\"\n[api]\ntcp_listen = \"127.0.0.1:1\"\ntoken_file = \"{}\"\n\
             [database]\nengine = \"command\"\ncommand = [\"true\"]\nenvironment_file = \"{}\"\n",
            token.display(),
            env.display()
        ),
        &dir.path().join("c.toml"),
    )
    .unwrap();
    let w = cfg.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("api.token_file:") && w[0].contains("mode 0644"),
        "{w:?}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(cfg.warnings().is_empty());
}
