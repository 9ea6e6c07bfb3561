//! Entry points shared by the fuzz targets (`fuzz/`) and the regression test that replays every
//! input they ever found (`tests/fuzz_regressions.rs`), so both exercise exactly the same code.
//! Each must return normally for any input: an error is fine, a panic is a bug.

use std::io::Write;

/// Config text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text, std::path::Path::new("/fuzz/juju-brd.toml"));
    }
}

/// A whole archive file (gzip or zstd), verified as `juju-brd verify` would.
pub fn archive(data: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("juju-backup-20260101-000000.tar.gz");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("write input");
    let opts = crate::archive::verify::VerifyOptions {
        scratch_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let _ = crate::archive::verify::verify(&path, &opts);
    let _ = crate::archive::verify::read_metadata(&path, None);
}

/// An inner root.tar stream.
pub fn root_tar(data: &[u8]) {
    let _ = crate::archive::verify::check_root_tar(data, None);
}
