//! Replays every input under `tests/fuzz_regressions/TARGET/` (crashes the fuzzers found, and
//! seeds) through the same entry points the fuzz targets use; each must return without panicking.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep") {
            f(&std::fs::read(&p).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn fuzz_regressions_do_not_panic() {
    let n = replay("config_parse", juju_brd::fuzzing::config)
        + replay("archive_verify", juju_brd::fuzzing::archive)
        + replay("root_tar", juju_brd::fuzzing::root_tar)
        + replay("restore_extract", juju_brd::fuzzing::restore_extract)
        + replay("restore_staged", juju_brd::fuzzing::restore_staged);
    assert!(n >= 4, "the seed inputs are missing");
}
