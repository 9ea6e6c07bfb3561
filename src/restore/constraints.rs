//! `--constraints` in Juju's syntax (`mem=4G cores=2 root-disk=20G arch=amd64`), checked against
//! facts about this host. Pure: the facts are gathered by [`HostFacts::detect`] and passed in.

use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraints {
    pub mem_mib: Option<u64>,
    pub cores: Option<u64>,
    pub root_disk_mib: Option<u64>,
    pub arch: Option<String>,
    /// Keys Juju knows but a host check cannot answer (instance-type, tags, ...).
    pub unchecked: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HostFacts {
    pub mem_mib: u64,
    pub cores: u64,
    /// Free space on the filesystem that will receive the restored files.
    pub free_mib: u64,
    pub arch: String,
}

/// Juju sizes: a number with an optional M, G, T or P suffix; no suffix means MiB.
fn parse_mib(key: &str, v: &str) -> Result<u64, String> {
    let (num, mult) = match v.chars().last() {
        Some('M' | 'm') => (&v[..v.len() - 1], 1.0),
        Some('G' | 'g') => (&v[..v.len() - 1], 1024.0),
        Some('T' | 't') => (&v[..v.len() - 1], 1024.0 * 1024.0),
        Some('P' | 'p') => (&v[..v.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (v, 1.0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("constraint {key}={v}: not a size like 4G or 512M"))?;
    if n < 0.0 {
        return Err(format!("constraint {key}={v}: negative"));
    }
    Ok((n * mult).ceil() as u64)
}

impl Constraints {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut c = Constraints {
            mem_mib: None,
            cores: None,
            root_disk_mib: None,
            arch: None,
            unchecked: Vec::new(),
        };
        for item in text.split_whitespace() {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("constraint `{item}` is not key=value"))?;
            match k {
                "mem" => c.mem_mib = Some(parse_mib(k, v)?),
                "root-disk" => c.root_disk_mib = Some(parse_mib(k, v)?),
                "cores" | "cpu-cores" => {
                    c.cores = Some(
                        v.parse()
                            .map_err(|_| format!("constraint {k}={v}: not a whole number"))?,
                    )
                }
                "arch" => c.arch = Some(v.to_string()),
                "cpu-power" | "instance-type" | "tags" | "container" | "spaces" | "virt-type"
                | "zones" | "allocate-public-ip" | "root-disk-source" | "instance-role"
                | "image-id" => c.unchecked.push(item.to_string()),
                other => return Err(format!("unknown constraint `{other}`")),
            }
        }
        Ok(c)
    }

    /// Every unmet constraint, described for the operator; empty when the host qualifies.
    pub fn unmet(&self, host: &HostFacts) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = self.mem_mib {
            if host.mem_mib < m {
                out.push(format!("mem={m}M: this host has {}M", host.mem_mib));
            }
        }
        if let Some(c) = self.cores {
            if host.cores < c {
                out.push(format!("cores={c}: this host has {}", host.cores));
            }
        }
        if let Some(d) = self.root_disk_mib {
            if host.free_mib < d {
                out.push(format!(
                    "root-disk={d}M: the target filesystem has {}M free",
                    host.free_mib
                ));
            }
        }
        if let Some(a) = &self.arch {
            if *a != host.arch {
                out.push(format!("arch={a}: this host is {}", host.arch));
            }
        }
        out
    }
}

impl HostFacts {
    pub fn detect(target: &Path) -> std::io::Result<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let mem_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let (free, _) = crate::space::free_and_total(target)?;
        Ok(HostFacts {
            mem_mib: mem_kib / 1024,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            free_mib: free >> 20,
            arch: juju_arch(std::env::consts::ARCH).to_string(),
        })
    }
}

/// Juju's architecture names.
fn juju_arch(rust: &str) -> &str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostFacts {
        HostFacts {
            mem_mib: 8192,
            cores: 2,
            free_mib: 30 * 1024,
            arch: "amd64".into(),
        }
    }

    #[test]
    fn met_and_unmet() {
        let c = Constraints::parse("mem=4G cores=2 root-disk=20G arch=amd64").unwrap();
        assert!(c.unmet(&host()).is_empty());
        let c = Constraints::parse("mem=16G cores=4 root-disk=100G arch=arm64").unwrap();
        let unmet = c.unmet(&host());
        assert_eq!(unmet.len(), 4, "{unmet:?}");
        assert_eq!(unmet[0], "mem=16384M: this host has 8192M");
    }

    #[test]
    fn sizes_and_errors() {
        assert_eq!(Constraints::parse("mem=512").unwrap().mem_mib, Some(512));
        assert_eq!(Constraints::parse("mem=1.5G").unwrap().mem_mib, Some(1536));
        assert!(Constraints::parse("mem=lots").is_err());
        assert!(Constraints::parse("colour=blue").is_err());
        assert!(Constraints::parse("cores").is_err());
        let c = Constraints::parse("instance-type=m5.large").unwrap();
        assert_eq!(c.unchecked, vec!["instance-type=m5.large"]);
    }
}
