//! Restore's errors on an unlucky host name the path and the step, and lose nothing (issue 11,
//! item 21): an immutable file it must replace, and a disk that fills up during extraction.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{require_root, stderr, tree_state, Env, Tmpfs};

/// `chattr +i` on a file until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(p: &Path) -> Immutable {
        let st = Command::new("chattr").arg("+i").arg(p).status().unwrap();
        assert!(st.success(), "chattr +i {}", p.display());
        Immutable(p.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

#[test]
#[ignore = "needs root: chattr +i (Debian package e2fsprogs)"]
fn an_immutable_file_in_the_way_is_named_and_nothing_is_lost() {
    require_root("chattr +i");
    let env = Env::new(1);
    env.restore_config(&[], "");
    let archive = env.backup();
    let target = env.path("hostB");
    let pem = target.join("var/lib/juju/server.pem");
    std::fs::create_dir_all(pem.parent().unwrap()).unwrap();
    std::fs::write(&pem, b"old pem").unwrap();
    let before = tree_state(&target, &[]);
    let _guard = Immutable::set(&pem);
    let out = env.restore_into(&target, &[archive.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Operation not permitted") && err.contains("server.pem"),
        "{err}"
    );
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(tree_state(&target, &[]), before);
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn a_disk_that_fills_up_during_extraction_is_named_and_rolled_back() {
    require_root("mounts a tmpfs");
    let env = Env::new(6);
    env.restore_config(&[], "");
    let archive = env.backup();
    let target = env.path("small");
    std::fs::create_dir_all(&target).unwrap();
    let _fs = Tmpfs::mount(&target, "64m");
    std::fs::write(target.join("host-file"), b"the host's").unwrap();
    let cfg = juju_brd::config::Config::load(&env.path("config.toml")).unwrap();
    let opts = juju_brd::restore::RestoreOptions {
        archive,
        environment: "test-env".into(),
        target_root: target.clone(),
        address: Some("10.20.30.40".into()),
        ..Default::default()
    };
    let plan = juju_brd::restore::plan(&cfg.restore, &cfg.database, &opts).unwrap();
    // Something else fills the disk between the plan and the extraction.
    let free = nix::sys::statvfs::statvfs(&target).unwrap();
    let room = free.blocks_available() * free.fragment_size();
    let filler = target.join("filler");
    std::fs::write(&filler, vec![0u8; (room - (2 << 20)) as usize]).unwrap();
    let before = tree_state(&target, &[]);
    let err = juju_brd::restore::execute(&cfg.restore, &plan, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("No space left on device"), "{err}");
    // The file being written is named, not only the target root.
    assert!(err.contains(&format!("{}/", target.display())), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(tree_state(&target, &[]), before);
}
