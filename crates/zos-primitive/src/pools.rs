//! Storage capacity as the agent sees it: pools by kind, size and use.

use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Kind of a storage pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Solid state: SRU (volumes, zmount disks, the node cache).
    Ssd,
    /// Spinning disk: HRU (ZeroDB data).
    Hdd,
}

/// A pool kind other than `ssd` or `hdd`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown pool kind {0:?}: expected ssd or hdd")]
pub struct UnknownPoolKind(pub String);

impl FromStr for PoolKind {
    type Err = UnknownPoolKind;
    fn from_str(s: &str) -> Result<Self, UnknownPoolKind> {
        match s {
            "ssd" => Ok(PoolKind::Ssd),
            "hdd" => Ok(PoolKind::Hdd),
            other => Err(UnknownPoolKind(other.chars().take(32).collect())),
        }
    }
}

/// One storage pool as reported by `zos.storage.pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    /// Pool name.
    pub name: String,
    /// SSD or HDD.
    #[serde(rename = "type")]
    pub kind: PoolKind,
    /// Size in bytes.
    pub size: u64,
    /// Used bytes.
    pub used: u64,
}

/// Reports storage pools (implemented by the storage crate).
#[async_trait]
pub trait PoolReporter: Send + Sync {
    /// The pools of this node, their size and use.
    async fn pools(&self) -> Vec<PoolUsage>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_serialise_lowercase() {
        assert_eq!("ssd".parse::<PoolKind>(), Ok(PoolKind::Ssd));
        assert_eq!("hdd".parse::<PoolKind>(), Ok(PoolKind::Hdd));
        assert!("SSD".parse::<PoolKind>().is_err());
        assert_eq!(
            serde_json::to_string(&PoolUsage {
                name: "p".into(),
                kind: PoolKind::Hdd,
                size: 1,
                used: 0
            })
            .expect("serialise"),
            r#"{"name":"p","type":"hdd","size":1,"used":0}"#
        );
    }
}
