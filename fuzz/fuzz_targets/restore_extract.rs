//! Any bytes given as root.tar, extracted by restore into a scratch root and rolled back: no
//! panic, nothing written outside the root, nothing left behind.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    juju_brd::fuzzing::restore_extract(data);
});
