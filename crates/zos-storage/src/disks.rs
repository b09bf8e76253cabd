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
pub fn usable_disks(lsblk_json: &str) -> Result<Vec<DiskCandidate>, PoolError> {
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
        if d.kind.as_deref() != Some("disk") || size == 0 || flag(&d.ro) || d.mountpoint.is_some() {
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
        let d = usable_disks(json).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, PathBuf::from("/dev/sdb"));
        assert_eq!(d[0].kind, PoolKind::Hdd);
        assert_eq!(d[1].label.as_deref(), Some("zos-sdc"));
        assert_eq!(d[1].kind, PoolKind::Ssd);
        assert!(usable_disks("not json").is_err());
    }

    proptest::proptest! {
        #[test]
        fn lsblk_parser_never_panics(s in ".*") {
            let _ = usable_disks(&s);
        }
    }
}
