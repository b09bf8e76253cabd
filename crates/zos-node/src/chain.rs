//! What the engine needs from the ledger, behind a small trait so that the engine can be tested
//! with an in-memory fake. The real implementation over `zos_ledger::LedgerClient` lives in
//! [`crate::ledger`].

use async_trait::async_trait;
use zos_types::crypto::PublicKey;

use crate::model::Capacity;

/// Errors talking to the ledger.
#[derive(Debug, thiserror::Error)]
#[error("ledger {op}: {message}")]
pub struct ChainError {
    /// What was being done.
    pub op: &'static str,
    /// The client's message.
    pub message: String,
    /// The ledger refused the transaction (retrying the same one cannot succeed).
    pub rejected: bool,
}

/// The lifecycle state of a contract, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractStatus {
    /// Active and paid.
    Created,
    /// Owner out of funds: workloads are paused.
    GracePeriod,
    /// Gone.
    Deleted,
}

/// A contract as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractInfo {
    /// Contract id.
    pub id: u64,
    /// Owner twin.
    pub twin_id: u32,
    /// The node of a node contract; `None` for other kinds.
    pub node_id: Option<u32>,
    /// `hex(md5(challenge))` stored in the node contract (empty for other kinds).
    pub deployment_hash: String,
    /// State.
    pub status: ContractStatus,
}

/// The ledger operations the engine and the watcher use.
#[async_trait]
pub trait Chain: Send + Sync {
    /// A contract by id; `None` when it does not exist.
    async fn contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError>;

    /// A contract by id as proven against a head signed by the ledger's producer (a Merkle
    /// proof of its state entry): what destructive decisions (deprovision, pause) rest on, so
    /// that whoever sits between node and ledger cannot make the node delete anything. An
    /// error means "not verified": the caller must not act.
    async fn verified_contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError>;

    /// Ids of the active (created or grace period) node contracts of `node_id`.
    async fn node_contracts(&self, node_id: u32) -> Result<Vec<u64>, ChainError>;

    /// The account key of a twin (used to verify deployment signatures).
    async fn twin_key(&self, twin: u32) -> Result<Option<PublicKey>, ChainError>;

    /// Reports the resources used by each contract (after every job), and whether the
    /// deployment is up (a workload ok or paused): fair billing starts with the first `true`.
    async fn report_resources(&self, used: &[(u64, Capacity, bool)]) -> Result<(), ChainError>;

    /// Reports network units consumed per contract (`add_nru_reports`).
    async fn report_nru(&self, reports: &[NruReport]) -> Result<(), ChainError>;
}

/// Network traffic of one contract over a window (upstream `NruConsumption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NruReport {
    /// The contract.
    pub contract_id: u64,
    /// Time of the report (seconds since the epoch).
    pub timestamp: u64,
    /// Seconds covered.
    pub window: u64,
    /// Bytes.
    pub nru: u64,
}

/// An in-memory ledger for tests (feature `test-fakes`).
#[cfg(any(test, feature = "test-fakes"))]
pub mod fake {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// A fake ledger: contracts and twin keys set by the test; reports are recorded.
    #[derive(Default)]
    pub struct FakeChain {
        /// Contracts by id.
        pub contracts: Mutex<HashMap<u64, ContractInfo>>,
        /// Twin keys.
        pub keys: Mutex<HashMap<u32, PublicKey>>,
        /// Every resource report received.
        pub reports: Mutex<Vec<(u64, Capacity)>>,
        /// Every NRU report received.
        pub nru: Mutex<Vec<NruReport>>,
        /// Unverified answers that differ from the verified state (a man in the middle):
        /// `contract` returns these, `node_contracts` leaves these ids out when they are
        /// `None`; `verified_contract` always tells the truth.
        pub lies: Mutex<HashMap<u64, Option<ContractInfo>>>,
    }

    impl FakeChain {
        /// Adds or replaces a contract.
        pub fn put_contract(&self, c: ContractInfo) {
            self.contracts
                .lock()
                .expect("fake chain lock")
                .insert(c.id, c);
        }

        /// Sets a contract's status.
        pub fn set_status(&self, id: u64, status: ContractStatus) {
            if let Some(c) = self.contracts.lock().expect("fake chain lock").get_mut(&id) {
                c.status = status;
            }
        }

        /// Sets a twin's key.
        pub fn put_key(&self, twin: u32, key: PublicKey) {
            self.keys.lock().expect("fake chain lock").insert(twin, key);
        }
    }

    #[async_trait]
    impl Chain for FakeChain {
        async fn contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError> {
            if let Some(lie) = self.lies.lock().expect("fake chain lock").get(&id) {
                return Ok(lie.clone());
            }
            self.verified_contract(id).await
        }

        async fn verified_contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError> {
            Ok(self
                .contracts
                .lock()
                .expect("fake chain lock")
                .get(&id)
                .cloned())
        }

        async fn node_contracts(&self, node_id: u32) -> Result<Vec<u64>, ChainError> {
            let mut v: Vec<u64> = self
                .contracts
                .lock()
                .expect("fake chain lock")
                .values()
                .filter(|c| c.node_id == Some(node_id) && c.status != ContractStatus::Deleted)
                .map(|c| c.id)
                .collect();
            let lies = self.lies.lock().expect("fake chain lock");
            v.retain(|id| !matches!(lies.get(id), Some(None)));
            v.sort_unstable();
            Ok(v)
        }

        async fn twin_key(&self, twin: u32) -> Result<Option<PublicKey>, ChainError> {
            Ok(self
                .keys
                .lock()
                .expect("fake chain lock")
                .get(&twin)
                .copied())
        }

        async fn report_resources(&self, used: &[(u64, Capacity, bool)]) -> Result<(), ChainError> {
            self.reports
                .lock()
                .expect("fake chain lock")
                .extend(used.iter().map(|(id, c, _)| (*id, *c)));
            Ok(())
        }

        async fn report_nru(&self, reports: &[NruReport]) -> Result<(), ChainError> {
            self.nru
                .lock()
                .expect("fake chain lock")
                .extend_from_slice(reports);
            Ok(())
        }
    }
}
