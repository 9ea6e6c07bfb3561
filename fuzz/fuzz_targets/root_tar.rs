//! Any bytes given as root.tar: the member checks restore relies on never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    juju_brd::fuzzing::root_tar(data);
});
