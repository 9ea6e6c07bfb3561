//! Any bytes given as an archive file: verify refuses or accepts; it never panics or hangs.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    juju_brd::fuzzing::archive(data);
});
