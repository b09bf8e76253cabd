//! The capacity gate: refuses a workload the node cannot hold.
//!
//! Memory (upstream `statistics.go`): `used = max(Σ MRU of ok/paused workloads (other than the
//! one being checked) + reserved, total − MemAvailable)`, `usable = total − used`; the
//! workload is refused when it needs more than `usable`. Reserved memory is
//! `max(10 % of RAM, 2 GiB)` (upstream code).
//!
//! Storage (a zos addition; upstream leaves it to the allocator): SSD (SRU) and HDD (HRU) are
//! checked against the pool sizes reported by the storage crate, minus the contracted use of
//! other workloads and, for SSD, a reserved system share of `min(5 GiB, 10 %)` (the node's own
//! state lives there). A node without a pool reporter has no storage to give.

use std::collections::HashMap;

use crate::model::Capacity;
use crate::primitives::{PoolKind, PoolUsage};

const GIB: u64 = 1 << 30;

/// Host totals the gate compares against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCapacity {
    /// Total RAM in bytes.
    pub memory: u64,
    /// Logical cores.
    pub cores: u64,
}

impl HostCapacity {
    /// Reads `/proc/meminfo` and the number of logical cores.
    pub fn discover() -> HostCapacity {
        HostCapacity {
            memory: meminfo("MemTotal:").unwrap_or(0),
            cores: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
        }
    }
}

/// A value in bytes from `/proc/meminfo` (which reports kB).
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Memory reserved for the system: `max(10 % of RAM, 2 GiB)`.
pub fn reserved_memory(total: u64) -> u64 {
    (total / 10).max(2 * GIB)
}

/// SSD reserved for the system: `min(5 GiB, 10 % of SSD)`.
pub fn reserved_ssd(total_ssd: u64) -> u64 {
    (total_ssd / 10).min(5 * GIB)
}

/// Sum of the capacity of every ok/paused workload except `except`.
pub fn used_except(used: &HashMap<String, (u64, Capacity)>, except: &str) -> Capacity {
    let mut sum = Capacity::default();
    for (id, (_, c)) in used {
        if id != except {
            sum += *c;
        }
    }
    sum
}

/// Checks that `required` fits. `available_memory` is the kernel's `MemAvailable`.
pub fn check(
    host: HostCapacity,
    available_memory: Option<u64>,
    pools: &[PoolUsage],
    used_by_others: Capacity,
    required: Capacity,
) -> Result<(), String> {
    if required.mru > 0 {
        let reserved = reserved_memory(host.memory);
        let actual = available_memory
            .map(|a| host.memory.saturating_sub(a))
            .unwrap_or(0);
        let used = (used_by_others.mru + reserved).max(actual);
        let usable = host.memory.saturating_sub(used);
        if required.mru > usable {
            return Err(format!(
                "cannot fulfil required memory size {} bytes out of usable {} bytes",
                required.mru, usable
            ));
        }
    }
    let total = |k: PoolKind| {
        pools
            .iter()
            .filter(|p| p.kind == k)
            .map(|p| p.size)
            .sum::<u64>()
    };
    if required.sru > 0 {
        let ssd = total(PoolKind::Ssd);
        let usable = ssd
            .saturating_sub(reserved_ssd(ssd))
            .saturating_sub(used_by_others.sru);
        if required.sru > usable {
            return Err(format!(
                "cannot fulfil required ssd storage size {} bytes out of usable {} bytes",
                required.sru, usable
            ));
        }
    }
    if required.hru > 0 {
        let usable = total(PoolKind::Hdd).saturating_sub(used_by_others.hru);
        if required.hru > usable {
            return Err(format!(
                "cannot fulfil required hdd storage size {} bytes out of usable {} bytes",
                required.hru, usable
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> Vec<PoolUsage> {
        vec![
            PoolUsage {
                name: "s".into(),
                kind: PoolKind::Ssd,
                size: 100 * GIB,
                used: 0,
            },
            PoolUsage {
                name: "h".into(),
                kind: PoolKind::Hdd,
                size: 10 * GIB,
                used: 0,
            },
        ]
    }

    #[test]
    fn memory_gate_keeps_reserved_share() {
        let host = HostCapacity {
            memory: 16 * GIB,
            cores: 4,
        };
        let req = |m| Capacity {
            mru: m,
            ..Capacity::default()
        };
        // reserved = max(1.6 GiB, 2 GiB) = 2 GiB → 14 GiB usable
        assert!(check(host, None, &[], Capacity::default(), req(14 * GIB)).is_ok());
        let e = check(host, None, &[], Capacity::default(), req(14 * GIB + 1)).unwrap_err();
        assert!(e.starts_with("cannot fulfil required memory size"), "{e}");
        // others use 10 GiB → 4 GiB usable
        assert!(check(host, None, &[], req(10 * GIB), req(5 * GIB)).is_err());
        // the kernel says 15 GiB are in use → 1 GiB usable
        assert!(check(host, Some(GIB), &[], Capacity::default(), req(2 * GIB)).is_err());
    }

    #[test]
    fn storage_gate_per_kind() {
        let host = HostCapacity {
            memory: 16 * GIB,
            cores: 4,
        };
        let sru = |s| Capacity {
            sru: s,
            ..Capacity::default()
        };
        let hru = |s| Capacity {
            hru: s,
            ..Capacity::default()
        };
        // 100 GiB SSD, 5 GiB reserved
        assert!(check(host, None, &pools(), Capacity::default(), sru(95 * GIB)).is_ok());
        assert!(check(host, None, &pools(), Capacity::default(), sru(95 * GIB + 1)).is_err());
        assert!(check(host, None, &pools(), sru(90 * GIB), sru(6 * GIB)).is_err());
        assert!(check(host, None, &pools(), Capacity::default(), hru(10 * GIB)).is_ok());
        assert!(check(host, None, &pools(), hru(1), hru(10 * GIB)).is_err());
        // no pools: no storage
        assert!(check(host, None, &[], Capacity::default(), sru(1)).is_err());
    }
}
