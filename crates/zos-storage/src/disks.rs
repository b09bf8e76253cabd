//! Whole disks the node may take as pools: `lsblk` output parsed into candidates (blank disks,
//! or disks already carrying a `zos-*` btrfs label).

use std::path::PathBuf;

use serde::Deserialize;

use crate::pool::{PoolError, PoolKind};

/// A whole disk the node may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCandidate {
    /// `/dev/…`.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// From the rotational flag.
    pub kind: PoolKind,
    /// Existing `zos-*` btrfs label, `None` for a blank disk.
    pub label: Option<String>,
}

#[derive(Deserialize)]
struct Lsblk {
    blockdevices: Vec<LsblkDev>,
}

#[derive(Deserialize)]
struct LsblkDev {
    path: Option<String>,
    size: Option<serde_json::Value>,
    rota: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<String>,
    fstype: Option<String>,
    label: Option<String>,
    mountpoint: Option<String>,
    ro: Option<serde_json::Value>,
    #[serde(default)]
    children: Vec<LsblkDev>,
}

fn flag(v: &Option<serde_json::Value>) -> bool {
    match v {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) => s == "1" || s == "true",
        Some(serde_json::Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

/// From `lsblk -J -b -o NAME,PATH,SIZE,ROTA,TYPE,FSTYPE,LABEL,MOUNTPOINT,RO`: whole disks
/// that are blank (no partitions, no filesystem, not mounted, writable) or already a `zos-*`
/// btrfs pool. SSD/HDD comes from the rotational flag.
///
/// A disk mounted below `own_mounts` (where the node mounts its pools) is the node's own pool,
/// still mounted from its previous run: VMs keep files open on their disks through a node
/// restart (an upgrade's switch), so the pool cannot be unmounted, and it must be taken again
/// rather than skipped as someone else's. Without udev (the image) lsblk knows no labels;
/// the label is then read from the filesystem when the pool is added.
pub fn usable_disks(
    lsblk_json: &str,
    own_mounts: &std::path::Path,
) -> Result<Vec<DiskCandidate>, PoolError> {
    let parsed: Lsblk =
        serde_json::from_str(lsblk_json).map_err(|e| PoolError::Lsblk(e.to_string()))?;
    let mut out = Vec::new();
    for d in parsed.blockdevices {
        let size = match &d.size {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let Some(path) = d.path.clone() else { continue };
        let ours = d
            .mountpoint
            .as_deref()
            .is_some_and(|m| std::path::Path::new(m).starts_with(own_mounts));
        if d.kind.as_deref() != Some("disk") || size == 0 || flag(&d.ro) {
            continue;
        }
        if d.mountpoint.is_some() && !ours {
            continue;
        }
        if path.starts_with("/dev/zram") || !d.children.is_empty() {
            continue;
        }
        let kind = if flag(&d.rota) {
            PoolKind::Hdd
        } else {
            PoolKind::Ssd
        };
        let label = match (&d.fstype, &d.label) {
            (None, _) => None,
            (Some(fs), None) if ours && fs == "btrfs" => None,
            (Some(fs), Some(l)) if fs == "btrfs" && l.starts_with("zos-") => Some(l.clone()),
            _ => continue,
        };
        out.push(DiskCandidate {
            path: PathBuf::from(path),
            size,
            kind,
            label,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsblk_classifies_disks() {
        let json = r#"{"blockdevices":[
          {"name":"loop0","path":"/dev/loop0","size":1,"rota":true,"type":"loop","fstype":null,"label":null,"mountpoint":null,"ro":false},
          {"name":"vda","path":"/dev/vda","size":100,"rota":true,"type":"disk","fstype":null,"label":null,"mountpoint":"/","ro":false},
          {"name":"sdb","path":"/dev/sdb","size":100,"rota":"1","type":"disk","fstype":null,"label":null,"mountpoint":null,"ro":"0"},
          {"name":"sdc","path":"/dev/sdc","size":100,"rota":false,"type":"disk","fstype":"btrfs","label":"zos-sdc","mountpoint":null,"ro":false},
          {"name":"sdd","path":"/dev/sdd","size":100,"rota":false,"type":"disk","fstype":"ext4","label":"data","mountpoint":null,"ro":false},
          {"name":"sde","path":"/dev/sde","size":100,"rota":false,"type":"disk","fstype":null,"label":null,"mountpoint":null,"ro":false,
           "children":[{"name":"sde1","path":"/dev/sde1","size":100,"type":"part"}]},
          {"name":"zram0","path":"/dev/zram0","size":100,"rota":false,"type":"disk","fstype":null,"label":null,"mountpoint":null,"ro":false}
        ]}"#;
        let own = std::path::Path::new("/var/lib/zos/run/pools");
        let d = usable_disks(json, own).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, PathBuf::from("/dev/sdb"));
        assert_eq!(d[0].kind, PoolKind::Hdd);
        assert_eq!(d[1].label.as_deref(), Some("zos-sdc"));
        assert_eq!(d[1].kind, PoolKind::Ssd);
        assert!(usable_disks("not json", own).is_err());
    }

    #[test]
    fn a_pool_left_mounted_by_the_node_is_taken_again() {
        // After a node restart with a VM holding its disk open: the pool is still mounted
        // where the node mounts pools (with or without udev's label); other mounts are not ours.
        let json = r#"{"blockdevices":[
          {"name":"vdb","path":"/dev/vdb","size":100,"rota":false,"type":"disk","fstype":"btrfs","label":"zos-ssd-1","mountpoint":"/var/lib/zos/run/pools/zos-ssd-1","ro":false},
          {"name":"vdc","path":"/dev/vdc","size":100,"rota":true,"type":"disk","fstype":null,"label":null,"mountpoint":"/var/lib/zos/run/pools/zos-hdd-1","ro":false},
          {"name":"vdd","path":"/dev/vdd","size":100,"rota":false,"type":"disk","fstype":"btrfs","label":"zos-x","mountpoint":"/srv","ro":false},
          {"name":"vde","path":"/dev/vde","size":100,"rota":false,"type":"disk","fstype":"ext4","label":"data","mountpoint":"/var/lib/zos/run/pools/data","ro":false},
          {"name":"vdf","path":"/dev/vdf","size":100,"rota":false,"type":"disk","fstype":"btrfs","label":"zos-y","mountpoint":"/var/lib/zos/run/poolsx","ro":false}
        ]}"#;
        let d = usable_disks(json, std::path::Path::new("/var/lib/zos/run/pools")).unwrap();
        let paths: Vec<_> = d.iter().map(|c| c.path.display().to_string()).collect();
        assert_eq!(paths, ["/dev/vdb", "/dev/vdc"]);
        assert_eq!(d[0].label.as_deref(), Some("zos-ssd-1"));
        assert_eq!(d[1].label, None);
        assert_eq!(d[1].kind, PoolKind::Hdd);
    }

    proptest::proptest! {
        #[test]
        fn lsblk_parser_never_panics(s in ".*") {
            let _ = usable_disks(&s, std::path::Path::new("/p"));
        }
    }
}
