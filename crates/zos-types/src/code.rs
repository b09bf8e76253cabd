//! Stable, machine-readable codes for workload failures.
//!
//! Upstream's result carries only a text (`message`). The code is kept next to it on the node
//! (deployment history, `zos.deployment.history`) and never added to the upstream result JSON,
//! so clients that decode results strictly keep working. The names are a public contract:
//! add variants, never rename one.

use serde::{Deserialize, Serialize};

/// Why a workload result is an error (or a refused update).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The workload data does not decode or is not acceptable (fix the deployment).
    InvalidInput,
    /// The node lacks the capacity (memory, disk, cores) the workload asks for.
    Capacity,
    /// The node does not run this workload type, or the type cannot be updated in place.
    Unsupported,
    /// The ledger refused the deployment: contract missing, not on this node, hash mismatch.
    Contract,
    /// Something the workload refers to does not exist (a network, a flist, a sibling).
    NotFound,
    /// A name or resource is already used by another workload.
    Conflict,
    /// The primitive's backend failed (storage, QEMU, network): the cause is in the message.
    Backend,
    /// An operation did not finish in its time bound.
    Timeout,
    /// Removing the workload failed (it may still hold resources).
    Deprovision,
}

impl ErrorCode {
    /// The wire name (`invalid_input`, `capacity`…).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Capacity => "capacity",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Contract => "contract",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Backend => "backend",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Deprovision => "deprovision",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_stable() {
        for c in [
            ErrorCode::InvalidInput,
            ErrorCode::Capacity,
            ErrorCode::Unsupported,
            ErrorCode::Contract,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Backend,
            ErrorCode::Timeout,
            ErrorCode::Deprovision,
        ] {
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                serde_json::json!(c.as_str())
            );
            assert_eq!(
                serde_json::from_value::<ErrorCode>(serde_json::json!(c.as_str())).unwrap(),
                c
            );
        }
        assert!(serde_json::from_value::<ErrorCode>(serde_json::json!("nope")).is_err());
    }
}
