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

/// An inner root.tar stream, extracted as restore would: into a scratch target root inside a
/// private directory, then rolled back. Besides never panicking, nothing may appear outside the
/// target, and the rollback must leave it empty again.
pub fn restore_extract(data: &[u8]) {
    use crate::restore::extract::{extract, ExtractOptions, Journal};
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).expect("target dir");
    let mut journal = Journal::new(&target).expect("journal");
    let _ = extract(
        data,
        &mut journal,
        None,
        ExtractOptions::default(),
        &mut |_, _| {},
    );
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(outside, ["target"], "extraction wrote outside its target");
    journal.rollback().expect("rollback");
    let left: Vec<_> = walkdir_names(&target);
    assert!(left.is_empty(), "rollback left files behind: {left:?}");
}

/// An inner root.tar stream, checked and staged as restore's single pass does it (the staging
/// thread, the finishing thread, early syncs) into a staging directory under a scratch target
/// root, then dropped as a refused restore drops it. Besides never panicking, nothing may appear
/// outside the staging directory, and dropping the stage must leave the target root empty.
pub fn restore_staged(data: &[u8]) {
    use crate::restore::{extract::Staging, offload::offload};
    let names = |p: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(p)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).expect("target dir");
    {
        let mut staging = Staging::new(&target, false).expect("staging");
        let dump_dir = staging.dump_dir();
        let _ = offload(
            &mut staging,
            dump_dir,
            |stage| crate::archive::verify::check_root_tar_staged(data, None, Some(stage)),
            |m| m,
        );
        let _ = staging.settle();
        let staged = names(&target);
        assert!(
            staged.len() == 1 && staged[0].starts_with(".juju-brd-staging-"),
            "staging wrote beside its directory: {staged:?}"
        );
    }
    assert_eq!(
        names(dir.path()),
        ["target"],
        "staging wrote outside its target"
    );
    assert!(
        names(&target).is_empty(),
        "the dropped stage left files behind"
    );
}

/// Every path under `root` (relative), symlinks not followed.
fn walkdir_names(root: &std::path::Path) -> Vec<String> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.expect("entry");
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            rel.display().to_string()
        })
        .collect()
}
