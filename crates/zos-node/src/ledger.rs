//! The real ledger behind [`Chain`], over `zos_ledger::LedgerClient`. (RMB's twin lookups use
//! `zos_rmb::LedgerDirectory`, proven against signed heads when the producer key is pinned.)
//!
//! Every transaction the node signs goes through [`NodeLedger::send`], which serialises them:
//! the ledger wants consecutive nonces from one account, and registration, uptime and resource
//! reports run concurrently.

use std::sync::Arc;

use async_trait::async_trait;
use zos_ledger::{Call, ContractKind, ContractResources, ContractState, LedgerClient, Resources};
use zos_types::crypto::{KeyPair, PublicKey};

use crate::chain::{Chain, ChainError, ContractInfo, ContractStatus, NruReport};
use crate::model::Capacity;

/// The node's ledger access: reads, and transactions signed with the node key.
#[derive(Clone)]
pub struct NodeLedger {
    client: LedgerClient,
    key: KeyPair,
    tx_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for NodeLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLedger")
            .field("url", &self.client.url())
            .finish()
    }
}

fn cerr(op: &'static str, e: zos_ledger::ClientError) -> ChainError {
    ChainError {
        op,
        rejected: matches!(e, zos_ledger::ClientError::Rejected(_)),
        message: e.to_string(),
    }
}

impl NodeLedger {
    /// A ledger handle signing with `key`.
    pub fn new(client: LedgerClient, key: KeyPair) -> Self {
        NodeLedger {
            client,
            key,
            tx_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The read client.
    pub fn client(&self) -> &LedgerClient {
        &self.client
    }

    /// Signs and submits `call` (one at a time), waiting for its block.
    pub async fn send(
        &self,
        op: &'static str,
        call: Call,
    ) -> Result<zos_ledger::Receipt, ChainError> {
        let _g = self.tx_lock.lock().await;
        self.client
            .send(&self.key, call)
            .await
            .map_err(|e| cerr(op, e))
    }
}

fn contract_info(c: zos_ledger::Contract) -> ContractInfo {
    let status = match c.state {
        ContractState::Created => ContractStatus::Created,
        ContractState::GracePeriod { .. } => ContractStatus::GracePeriod,
        ContractState::Deleted { .. } => ContractStatus::Deleted,
    };
    let (node_id, deployment_hash) = match &c.kind {
        ContractKind::Node {
            node_id,
            deployment_hash,
            ..
        } => (Some(*node_id), deployment_hash.clone()),
        ContractKind::Name { .. } => (None, String::new()),
    };
    ContractInfo {
        id: c.id,
        twin_id: c.twin_id,
        node_id,
        deployment_hash,
        status,
    }
}

#[async_trait]
impl Chain for NodeLedger {
    async fn contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError> {
        Ok(self
            .client
            .contract(id)
            .await
            .map_err(|e| cerr("get contract", e))?
            .map(contract_info))
    }

    async fn verified_contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError> {
        let v = self
            .client
            .verified_contract(id)
            .await
            .map_err(|e| cerr("verify contract", e))?;
        // The proof is for the key of contract `id`; a value naming another id is corrupt.
        match v.value {
            Some(c) if c.id != id => Err(ChainError {
                op: "verify contract",
                message: format!("proven record of contract {id} names contract {}", c.id),
                rejected: false,
            }),
            other => Ok(other.map(contract_info)),
        }
    }

    async fn node_contracts(&self, node_id: u32) -> Result<Vec<u64>, ChainError> {
        Ok(self
            .client
            .node_contracts(node_id)
            .await
            .map_err(|e| cerr("node contracts", e))?
            .into_iter()
            .filter(|c| c.state.is_active())
            .map(|c| c.id)
            .collect())
    }

    async fn twin_key(&self, twin: u32) -> Result<Option<PublicKey>, ChainError> {
        // Proven against a signed head: a swapped account would let anyone sign deployments
        // in this twin's name.
        Ok(self
            .client
            .verified_twin(twin)
            .await
            .map_err(|e| cerr("get twin", e))?
            .value
            .filter(|t| t.id == twin)
            .map(|t| t.account))
    }

    async fn report_resources(&self, used: &[(u64, Capacity)]) -> Result<(), ChainError> {
        let reports = used
            .iter()
            .map(|(id, c)| ContractResources {
                contract_id: *id,
                used: Resources {
                    cru: c.cru,
                    sru: c.sru,
                    hru: c.hru,
                    mru: c.mru,
                },
            })
            .collect();
        self.send(
            "report contract resources",
            Call::ReportContractResources(reports),
        )
        .await
        .map(|_| ())
    }

    async fn report_nru(&self, reports: &[NruReport]) -> Result<(), ChainError> {
        let calls = reports
            .iter()
            .map(|r| zos_ledger::NruConsumption {
                contract_id: r.contract_id,
                timestamp: r.timestamp,
                window: r.window,
                nru: r.nru,
            })
            .collect();
        self.send("add nru reports", Call::AddNruReports(calls))
            .await
            .map(|_| ())
    }
}
