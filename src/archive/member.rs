//! The attributes of a root.tar member — mode, owner, time, extended attributes — checked the
//! same way by `verify` and by restore's extraction, so nothing restore writes was not verified.
//!
//! Tar headers carry numbers up to 2^63 (GNU base-256) and free-form PAX records; every one is
//! range-checked here and refused with the member named, never truncated or left to panic later.

use std::io::Read;
use std::time::{Duration, SystemTime};

/// 9999-12-31T23:59:59Z: later modification times are refused (no filesystem needs them, and
/// `SystemTime` arithmetic on 2^63 overflows).
pub const MAX_MTIME: u64 = 253_402_300_799;
/// The extended attribute that grants file capabilities (a privilege, like setuid).
pub const CAPABILITY_XATTR: &str = "security.capability";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits, setuid/setgid/sticky included (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub mtime: SystemTime,
    /// `SCHILY.xattr.*` PAX records: (name, value).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Attrs {
    /// setuid, setgid or file capabilities: what a restore strips unless the operator keeps them.
    pub fn privileged(&self) -> bool {
        self.mode & 0o6000 != 0 || self.xattrs.iter().any(|(k, _)| k == CAPABILITY_XATTR)
    }

    /// The same attributes with setuid, setgid and file capabilities removed.
    pub fn without_privileges(mut self) -> Attrs {
        self.mode &= !0o6000;
        self.xattrs.retain(|(k, _)| k != CAPABILITY_XATTR);
        self
    }
}

/// Reads and checks `entry`'s attributes; `shown` names it in errors.
pub fn attrs<R: Read>(entry: &mut tar::Entry<R>, shown: &str) -> Result<Attrs, String> {
    let h = entry.header();
    let bad = |what: &str, e: std::io::Error| format!("{what} of `{shown}` is unreadable: {e}");
    let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let id = |what: &str, v: u64| -> Result<u32, String> {
        // u32::MAX is (uid_t)-1, "no change" to chown: not an owner.
        u32::try_from(v)
            .ok()
            .filter(|v| *v != u32::MAX)
            .ok_or_else(|| format!("{what} {v} of `{shown}` is out of range"))
    };
    // An empty numeric field (some writers leave owner fields blank) means 0, as tar reads it.
    let blank = |raw: &[u8]| raw.iter().all(|b| *b == 0 || *b == b' ');
    let old = h.as_old();
    let uid = if blank(&old.uid) {
        0
    } else {
        id("uid", h.uid().map_err(|e| bad("uid", e))?)?
    };
    let gid = if blank(&old.gid) {
        0
    } else {
        id("gid", h.gid().map_err(|e| bad("gid", e))?)?
    };
    let secs = h.mtime().map_err(|e| bad("mtime", e))?;
    if secs > MAX_MTIME {
        return Err(format!(
            "mtime {secs} of `{shown}` is out of range (after year 9999)"
        ));
    }
    let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let name = |n: Result<Option<&str>, std::str::Utf8Error>| n.ok().flatten().map(String::from);
    let user = name(h.username()).filter(|n| !n.is_empty());
    let group = name(h.groupname()).filter(|n| !n.is_empty());
    let mut xattrs = Vec::new();
    if let Some(exts) = entry
        .pax_extensions()
        .map_err(|e| format!("PAX records of `{shown}` are unreadable: {e}"))?
    {
        for ext in exts {
            let ext = ext.map_err(|e| format!("PAX record of `{shown}` is unreadable: {e}"))?;
            let key = ext
                .key()
                .map_err(|_| format!("PAX key of `{shown}` is not UTF-8"))?;
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(Attrs {
        mode,
        uid,
        gid,
        user,
        group,
        mtime,
        xattrs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(edit: impl FnOnce(&mut tar::Header)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        edit(&mut h);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    }

    fn check(bytes: &[u8]) -> Result<Attrs, String> {
        let mut a = tar::Archive::new(bytes);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        attrs(&mut e, "f")
    }

    #[test]
    fn out_of_range_numbers_are_refused_not_truncated() {
        assert!(check(&member(|_| {})).is_ok());
        let e = check(&member(|h| h.set_mtime(u64::MAX >> 1))).unwrap_err();
        assert!(e.contains("mtime") && e.contains("out of range"), "{e}");
        let e = check(&member(|h| h.set_uid(1 << 40))).unwrap_err();
        assert!(e.contains("uid 1099511627776"), "{e}");
        let e = check(&member(|h| h.set_gid(u64::from(u32::MAX)))).unwrap_err();
        assert!(e.contains("gid"), "{e}");
    }

    #[test]
    fn privileges_are_seen_and_stripped() {
        let a = check(&member(|h| h.set_mode(0o4755))).unwrap();
        assert!(a.privileged());
        let plain = a.without_privileges();
        assert_eq!(plain.mode, 0o755);
        assert!(!plain.privileged());
    }
}
