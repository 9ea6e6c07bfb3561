//! The defaults a config gets are the ones the shipped configs show (issue 14 item 3, defect 7: a
//! config without `[retention]` used to get an all-zero policy, which refuses to prune, while the
//! shipped config's comments promised `keep_last = 7`, ...). The comments' and the README's
//! statement of the retention defaults is checked against the code in `retention`'s unit tests.

use std::path::Path;

use juju_brd::config::Config;
use juju_brd::retention::RetentionConfig;

const AT: &str = "/etc/juju-brd/juju-brd.toml";

fn shipped() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/juju-brd.toml")).unwrap()
}

/// "Every key is shown with its default": config/juju-brd.toml, loaded, is exactly the config of
/// its `environment` line alone.
#[test]
fn the_shipped_config_shows_every_key_with_its_default() {
    let shipped = Config::parse(&shipped(), Path::new(AT)).unwrap();
    let minimal = Config::parse(
        &format!("environment = \"{}\"\n", shipped.environment),
        Path::new(AT),
    )
    .unwrap();
    assert_eq!(
        toml::to_string(&shipped).unwrap(),
        toml::to_string(&minimal).unwrap()
    );
}

/// Without `[retention]`: the documented policy, which prunes.
#[test]
fn a_config_without_retention_gets_the_documented_policy() {
    let c = Config::parse("environment = \"p\"\n", Path::new(AT)).unwrap();
    assert_eq!(c.retention, RetentionConfig::default_policy());
    assert_eq!(
        (
            c.retention.keep_last,
            c.retention.keep_hourly,
            c.retention.keep_daily,
            c.retention.keep_weekly,
            c.retention.keep_monthly,
            c.retention.keep_yearly
        ),
        (7, 0, 7, 4, 6, 0)
    );
}

/// A `[retention]` table is the whole policy: the keys it leaves out are 0.
#[test]
fn a_retention_table_is_the_whole_policy() {
    let c = Config::parse(
        "environment = \"p\"\n[retention]\nkeep_last = 3\n",
        Path::new(AT),
    )
    .unwrap();
    assert_eq!(
        c.retention,
        RetentionConfig {
            keep_last: 3,
            ..RetentionConfig::default()
        }
    );
}
