//! Thin typed wrappers over `mkfs.btrfs`, `mount`, `btrfs` and `blkid`: the only place that knows
//! their command lines and output formats.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::exec::{self, CmdError};

/// A btrfs or mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    /// The tool failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// The tool's output was not in the expected shape.
    #[error("cannot parse output of `{command}`: {output:?}")]
    Parse {
        /// What was run.
        command: String,
        /// The offending output (trimmed to a line or so by the caller).
        output: String,
    },
    /// A filesystem call on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or("<non-utf8 path>")
}

/// Filesystem type on a block device (`None` when blank).
pub async fn fs_type(dev: &Path) -> Result<Option<String>, BtrfsError> {
    match exec::run("blkid", &["-p", "-o", "value", "-s", "TYPE", s(dev)]).await {
        Ok(out) => {
            let t = out.trim();
            Ok((!t.is_empty()).then(|| t.to_string()))
        }
        // blkid exits 2 when it finds nothing on the device.
        Err(CmdError::Failed { status, .. }) if status.code() == Some(2) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `mkfs.btrfs` with a label, single data profile (one filesystem per disk).
pub async fn mkfs(dev: &Path, label: &str) -> Result<(), BtrfsError> {
    exec::run(
        "mkfs.btrfs",
        &["-q", "-f", "-L", label, "-d", "single", s(dev)],
    )
    .await?;
    Ok(())
}

/// Whether `dir` is currently a mount point (reads `/proc/self/mountinfo`).
pub fn is_mountpoint(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| Path::new(&unescape_mount(m)) == canon)
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(m: &str) -> String {
    m.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Mount a btrfs device on `dir` (created if needed).
pub async fn mount(dev: &Path, dir: &Path) -> Result<(), BtrfsError> {
    std::fs::create_dir_all(dir).map_err(|source| BtrfsError::Io {
        op: "create dir",
        path: s(dir).into(),
        source,
    })?;
    exec::run("mount", &["-t", "btrfs", s(dev), s(dir)]).await?;
    Ok(())
}

/// Unmount `dir`.
pub async fn umount(dir: &Path) -> Result<(), BtrfsError> {
    exec::run("umount", &[s(dir)]).await?;
    Ok(())
}

/// Enable quota accounting (idempotent).
pub async fn quota_enable(mnt: &Path) -> Result<(), BtrfsError> {
    exec::run("btrfs", &["quota", "enable", s(mnt)]).await?;
    Ok(())
}

/// Whether `path` is the root of a btrfs subvolume (inode 256 on btrfs).
pub fn is_subvolume(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

/// Create a subvolume.
pub async fn subvolume_create(path: &Path) -> Result<(), BtrfsError> {
    exec::run("btrfs", &["subvolume", "create", s(path)]).await?;
    Ok(())
}

/// Create `path` as a subvolume unless it already is one.
pub async fn ensure_subvolume(path: &Path) -> Result<(), BtrfsError> {
    if !is_subvolume(path) {
        subvolume_create(path).await?;
    }
    Ok(())
}

/// Delete a subvolume (committed, so its space is accounted as free again soon).
pub async fn subvolume_delete(path: &Path) -> Result<(), BtrfsError> {
    exec::run("btrfs", &["subvolume", "delete", "-c", s(path)]).await?;
    Ok(())
}

/// Snapshot `src` to `dst`, read-only or writable.
pub async fn snapshot(src: &Path, dst: &Path, readonly: bool) -> Result<(), BtrfsError> {
    let mut args = vec!["subvolume", "snapshot"];
    if readonly {
        args.push("-r");
    }
    args.extend([s(src), s(dst)]);
    exec::run("btrfs", &args).await?;
    Ok(())
}

/// Limit the referenced size of the subvolume at `path`.
pub async fn qgroup_limit(path: &Path, bytes: u64) -> Result<(), BtrfsError> {
    exec::run("btrfs", &["qgroup", "limit", &bytes.to_string(), s(path)]).await?;
    Ok(())
}

/// One level-0 qgroup (one subvolume) as reported by `btrfs qgroup show -r --raw`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qgroup {
    /// Subvolume id (the `N` of `0/N`).
    pub id: u64,
    /// Bytes referenced (may lag a transaction commit behind: see [`qgroups`]).
    pub referenced: u64,
    /// The referenced limit, if any.
    pub max_referenced: Option<u64>,
    /// Path relative to the filesystem root, or `<stale>` / `<toplevel>`.
    pub path: String,
}

/// All level-0 qgroups of the filesystem mounted at `mnt`.
///
/// Without `--sync`: callers read the limits (`max_referenced`), which are set synchronously by
/// `qgroup limit`; only the usage columns lag behind a transaction commit, and the commit that
/// `--sync` forces cost 6-15 ms of every deploy.
pub async fn qgroups(mnt: &Path) -> Result<Vec<Qgroup>, BtrfsError> {
    let out = exec::run("btrfs", &["qgroup", "show", "-r", "--raw", s(mnt)]).await?;
    Ok(parse_qgroups(&out))
}

/// Parse `btrfs qgroup show -r --raw`: `0/ID rfer excl max_rfer path`. Lines that do not fit
/// (headers, higher-level groups) are skipped.
pub fn parse_qgroups(out: &str) -> Vec<Qgroup> {
    out.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let id = it.next()?.strip_prefix("0/")?.parse().ok()?;
            let referenced = it.next()?.parse().ok()?;
            let _excl: u64 = it.next()?.parse().ok()?;
            let max = it.next()?;
            let max_referenced = if max == "none" {
                None
            } else {
                Some(max.parse().ok()?)
            };
            let path = it.collect::<Vec<_>>().join(" ");
            Some(Qgroup {
                id,
                referenced,
                max_referenced,
                path,
            })
        })
        .collect()
}

/// Device size and bytes used of the filesystem at `mnt`.
pub async fn usage(mnt: &Path) -> Result<(u64, u64), BtrfsError> {
    let args = ["filesystem", "usage", "-b", s(mnt)];
    let out = exec::run("btrfs", &args).await?;
    parse_usage(&out).ok_or_else(|| BtrfsError::Parse {
        command: format!("btrfs {}", args.join(" ")),
        output: out.lines().take(8).collect::<Vec<_>>().join("\n"),
    })
}

/// Parse `Device size:` and `Used:` out of `btrfs filesystem usage -b`.
pub fn parse_usage(out: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("Device size:")?, field("Used:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qgroup_output_parses() {
        let out = "Qgroupid    Referenced    Exclusive  Max referenced   Path \n\
                   --------    ----------    ---------  --------------   ---- \n\
                   0/5              16384        16384            none   <toplevel>\n\
                   0/256            16384        16384        20971520   a\n\
                   0/257            16384        16384            none   <stale>\n\
                   1/1              16384        16384            none   \n";
        let q = parse_qgroups(out);
        assert_eq!(q.len(), 3);
        assert_eq!(
            q[1],
            Qgroup {
                id: 256,
                referenced: 16384,
                max_referenced: Some(20971520),
                path: "a".into()
            }
        );
        assert_eq!(q[2].max_referenced, None);
    }

    #[test]
    fn usage_output_parses() {
        let out = "Overall:\n    Device size:\t\t         314572800\n    Device allocated:\t\t 1\n    Used:\t\t\t            425984\n";
        assert_eq!(parse_usage(out), Some((314572800, 425984)));
        assert_eq!(parse_usage("garbage"), None);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".*") {
            let _ = parse_qgroups(&s);
            let _ = parse_usage(&s);
        }
    }
}
