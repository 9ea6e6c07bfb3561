//! Any text given as a config: parse either succeeds or returns an error; it never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    juju_brd::fuzzing::config(data);
});
