//! How much memory this process may use: the machine's RAM, or less when a cgroup (v1 or v2)
//! limits it. Used to size the read cache when it is not given (`--cache-size auto`), so a
//! server in a 2 GiB container does not plan for the host's 256 GiB.

use std::path::{Path, PathBuf};

/// A memory ceiling and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// `None`: physical RAM; `Some(file)`: the cgroup limit file that set it.
    pub cgroup: Option<PathBuf>,
}

/// The memory this process may use, from `/proc/meminfo` and `/sys/fs/cgroup`; `None` when
/// `/proc` cannot be read.
pub fn memory_limit() -> Option<MemoryLimit> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let ram = mem_total(&meminfo)?;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Some(limit_under(ram, &cgroups, Path::new("/sys/fs/cgroup")))
}

/// The lower of `ram` and every memory limit of this process's cgroups (their ancestors
/// included, since those limits apply too) found under the cgroup mount `root`.
pub fn limit_under(ram: u64, proc_self_cgroup: &str, root: &Path) -> MemoryLimit {
    let mut best = MemoryLimit {
        bytes: ram,
        cgroup: None,
    };
    for file in limit_files(proc_self_cgroup, root) {
        let Some(limit) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| parse_limit(&t))
        else {
            continue;
        };
        if limit < best.bytes {
            best = MemoryLimit {
                bytes: limit,
                cgroup: Some(file),
            };
        }
    }
    best
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A limit file's content in bytes; `None` for "no limit" (`max` in v2, a value near
/// `i64::MAX` in v1) or anything unreadable.
pub fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < 1 << 60).then_some(v)
}

/// Candidate limit files, leaf to root, for every line of `/proc/self/cgroup`:
/// `0::/path` (v2, `memory.max`) and `N:…memory…:/path` (v1, `memory.limit_in_bytes`).
fn limit_files(proc_self_cgroup: &str, root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut dir = base.join(path.trim_start_matches('/'));
        // Never climb above the mount, even with `..` in a hostile path.
        if !dir.starts_with(&base) || path.contains("..") {
            dir = base.clone();
        }
        loop {
            files.push(dir.join(file));
            if dir == base || !dir.pop() {
                break;
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn reads_mem_total() {
        let text = "MemTotal:       24522344 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(text), Some(24522344 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn unlimited_is_no_limit() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("2147483648\n"), Some(2 * GIB));
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn v2_limit_of_an_ancestor_applies() {
        let root = tempfile::tempdir().unwrap();
        let leaf = root.path().join("system.slice/zdb.service");
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.path().join("system.slice/memory.max"), "4294967296\n").unwrap();
        let got = limit_under(16 * GIB, "0::/system.slice/zdb.service\n", root.path());
        assert_eq!(got.bytes, 4 * GIB);
        assert_eq!(
            got.cgroup,
            Some(root.path().join("system.slice/memory.max"))
        );
    }

    #[test]
    fn v1_memory_controller_is_found_among_others() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("memory/docker/abc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
        let cgroups = "12:cpu,cpuacct:/docker/abc\n9:memory:/docker/abc\n1:name=systemd:/\n";
        assert_eq!(limit_under(16 * GIB, cgroups, root.path()).bytes, GIB);
    }

    #[test]
    fn ram_wins_when_lower_or_nothing_is_set() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("memory.max"), "68719476736\n").unwrap();
        let got = limit_under(8 * GIB, "0::/\n", root.path());
        assert_eq!(
            got,
            MemoryLimit {
                bytes: 8 * GIB,
                cgroup: None
            }
        );
        let got = limit_under(8 * GIB, "garbage\n0::/../../etc\n", root.path());
        assert_eq!(got.bytes, 8 * GIB);
    }
}
