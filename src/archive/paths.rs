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

/// Resolves where the symlink `member` -> `target` leads as the kernel would on the restored
/// tree, following the archive's own symlinks (`links`: member path -> target) inside the
/// target, with absolute targets read from the restored root. Errors when the resolution climbs
/// above the root at any step (`up -> ../..` plus `esc -> up/..`), or loops.
pub fn resolve_symlink(
    links: &std::collections::HashMap<PathBuf, PathBuf>,
    member: &Path,
    target: &Path,
) -> Result<PathBuf, String> {
    // Components still to walk, innermost last; the resolved prefix so far.
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let push_target = |t: &Path, todo: &mut Vec<std::ffi::OsString>, done: &mut Vec<_>| {
        if t.is_absolute() {
            done.clear();
        }
        for c in t.components().rev() {
            match c {
                Component::Normal(p) => todo.push(p.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    done.extend(
        member
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_os_string()),
                _ => None,
            }),
    );
    push_target(target, &mut todo, &mut done);
    let mut expansions = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            if done.pop().is_none() {
                return Err(format!(
                    "symlink `{}` -> `{}` escapes the root",
                    member.display(),
                    target.display()
                ));
            }
            continue;
        }
        done.push(c);
        let here: PathBuf = done.iter().collect();
        if let Some(next) = links.get(&here) {
            expansions += 1;
            if expansions > 40 {
                return Err(format!(
                    "symlink `{}` -> `{}` loops",
                    member.display(),
                    target.display()
                ));
            }
            done.pop();
            push_target(next, &mut todo, &mut done);
        }
    }
    Ok(done.iter().collect())
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

    #[test]
    fn symlinks_resolve_as_the_kernel_would() {
        use std::collections::HashMap;
        let mut links = HashMap::new();
        let mut add = |m: &str, t: &str| {
            links.insert(PathBuf::from(m), PathBuf::from(t));
        };
        add("var/lib/up", "../..");
        add("var/lib/esc", "up/..");
        add("var/lib/loop", "loop2");
        add("var/lib/loop2", "loop");
        add("var/lib/tools/machine-0", "2.9.42-focal-amd64");
        // Each link alone stays inside; `esc` through `up` climbs out.
        assert_eq!(
            resolve_symlink(&links, Path::new("var/lib/up"), Path::new("../..")).unwrap(),
            PathBuf::new()
        );
        let e = resolve_symlink(&links, Path::new("var/lib/esc"), Path::new("up/..")).unwrap_err();
        assert!(e.contains("escapes the root"), "{e}");
        assert!(
            resolve_symlink(&links, Path::new("var/lib/loop"), Path::new("loop2"))
                .unwrap_err()
                .contains("loops")
        );
        assert_eq!(
            resolve_symlink(
                &links,
                Path::new("var/lib/tools/machine-0"),
                Path::new("2.9.42-focal-amd64")
            )
            .unwrap(),
            PathBuf::from("var/lib/tools/2.9.42-focal-amd64")
        );
        // Absolute targets are read from the restored root.
        assert_eq!(
            resolve_symlink(&links, Path::new("a/b"), Path::new("/var/lib/up/etc")).unwrap(),
            PathBuf::from("etc")
        );
        assert!(resolve_symlink(&links, Path::new("a/b"), Path::new("/var/lib/up/../x")).is_err());
    }
}
