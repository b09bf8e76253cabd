//! ZeroDB: one server per HDD pool (SSD when the node has none), supervised; namespaces per
//! `zdb` workload.

/// The subvolume holding ZeroDB data and index on a pool.
pub const ZDB_DIR: &str = "zdb";

/// Supervises the ZeroDB servers.
#[derive(Debug, Default)]
pub struct ZdbSupervisor {}

impl ZdbSupervisor {
    /// Bytes reserved by namespaces on pool `pool`.
    pub async fn reserved_on(&self, pool: &str) -> u64 {
        let _ = pool;
        0
    }

    /// Stop every server.
    pub async fn stop_all(&self) {}
}
