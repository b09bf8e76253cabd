//! The deployment model, re-exported from `zos-types` (the engine and primitives use these).

pub use zos_types::{
    Capacity, Deployment, ResultState, Timestamp, UpgradeOp, Workload, WorkloadResult,
    WorkloadType, workload_id,
};
