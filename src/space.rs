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

// Sizes in the config file.
/// A byte count written as "512MiB", "2GB" or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 512MiB or 2GB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "t" | "tb" => 1000u64.pow(4),
            "tib" => 1 << 40,
            other => return Err(format!("unknown size unit `{other}` in `{s}`")),
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}MiB", self.0 / (1 << 20))
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match <Raw as serde::Deserialize>::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size like \"512MiB\" or a number of bytes")
        })? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backup checks the dump's share before the whole estimate (snapshot::check_space): that
    /// is only sound because a larger estimate never needs less.
    #[test]
    fn a_larger_estimate_never_needs_less() {
        const G: u64 = 1 << 30;
        for total in [0, 1 << 20, 8 * G, 60 * G, 4096 * G] {
            for part in [0, 1, 300 << 20, 9 * G, 100 * G] {
                for more in [0, 1, 1 << 20, 2 * G, 80 * G] {
                    assert!(required(part, total) <= required(part + more, total));
                }
            }
        }
    }

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
