//! Any bytes given as root.tar, checked and staged by restore's single pass into a scratch
//! root, then dropped: no panic, nothing written outside the staging directory, nothing left.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    juju_brd::fuzzing::restore_staged(data);
});
