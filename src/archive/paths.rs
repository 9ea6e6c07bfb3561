//! Which member paths and link targets are acceptable. Shared by `verify` and `restore` so that what
//! verify passes is exactly what restore will extract.

use std::path::{Component, Path, PathBuf};

/// A member path made safe to join onto a root: relative, no `..`, no empty name. `./` prefixes
/// (what `tar -C dir .` writes) are dropped.
pub fn safe_relative(raw: &[u8]) -> Result<PathBuf, String> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| format!("member name is not UTF-8: {}", String::from_utf8_lossy(raw)))?;
    if text.is_empty() {
        return Err("member with an empty name".into());
    }
    if text.starts_with('/') {
        return Err(format!("absolute path `{text}`"));
    }
    if text.contains('\0') {
        return Err(format!("NUL byte in `{text}`"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("path traversal (`..`) in `{text}`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("absolute path `{text}`"))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(format!("member `{text}` names no file"));
    }
    Ok(out)
}

/// Whether a symlink at `member` (relative to the root) pointing to `target` stays inside the root.
/// Absolute targets are read as relative to the restored root (that is where they will point on the
/// replacement host); relative ones must not climb above it.
pub fn symlink_stays_inside(member: &Path, target: &Path) -> bool {
    let mut depth: i64 = if target.is_absolute() {
        0
    } else {
        member.components().count() as i64 - 1
    };
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            safe_relative(b"./var/lib/x").unwrap(),
            PathBuf::from("var/lib/x")
        );
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"",
            b".",
            b"a\0b",
        ] {
            assert!(
                safe_relative(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn symlinks() {
        let m = Path::new("var/lib/juju/tools/machine-0");
        assert!(symlink_stays_inside(m, Path::new("2.9.42-focal-amd64")));
        assert!(symlink_stays_inside(m, Path::new("../../juju")));
        assert!(symlink_stays_inside(m, Path::new("/var/lib/juju/tools/x")));
        assert!(!symlink_stays_inside(m, Path::new("../../../../../etc")));
        assert!(!symlink_stays_inside(
            Path::new("evil"),
            Path::new("../outside")
        ));
        assert!(!symlink_stays_inside(
            Path::new("a"),
            Path::new("/../../etc")
        ));
    }
}
