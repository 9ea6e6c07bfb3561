//! Free space: checked before a backup writes anything, with Juju's rule for how much is enough.

use std::path::Path;

const GIB: u64 = 1 << 30;

/// (bytes available to us, filesystem size) for the filesystem holding `dir`.
pub fn free_and_total(dir: &Path) -> std::io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let frag = s.fragment_size() as u64;
    Ok((s.blocks_available() as u64 * frag, s.blocks() as u64 * frag))
}

/// Juju's rule: the estimate plus a margin of max(min(5 GiB, 10% of the disk), 20% of the estimate).
pub fn required(estimate: u64, disk_total: u64) -> u64 {
    let margin = (disk_total / 10).min(5 * GIB).max(estimate / 5);
    estimate.saturating_add(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn juju_margin() {
        // Small state on a big disk: the 5 GiB cap applies.
        assert_eq!(required(GIB, 500 * GIB), 6 * GIB);
        // Small disk: 10% of it.
        assert_eq!(required(0, 10 * GIB), GIB);
        // Huge state: 20% of the estimate.
        assert_eq!(required(100 * GIB, 200 * GIB), 120 * GIB);
    }
}
