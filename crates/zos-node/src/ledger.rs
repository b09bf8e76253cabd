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

fn paused_for_maintenance(n: &zos_ledger::Node) -> bool {
    n.maintenance.is_some_and(|m| m.pause)
}

/// The engine pauses contracts in their grace period; a paused maintenance is the same to it.
fn maintenance_status(mut c: ContractInfo, paused: bool) -> ContractInfo {
    if paused {
        c.status = ContractStatus::GracePeriod;
    }
    c
}

#[async_trait]
impl Chain for NodeLedger {
    async fn contract(&self, id: u64) -> Result<Option<ContractInfo>, ChainError> {
        let Some(c) = self
            .client
            .contract(id)
            .await
            .map_err(|e| cerr("get contract", e))?
            .map(contract_info)
        else {
            return Ok(None);
        };
        let paused = match c.node_id {
            Some(n) if c.status == ContractStatus::Created => self
                .client
                .node(n)
                .await
                .map_err(|e| cerr("get node", e))?
                .is_some_and(|n| paused_for_maintenance(&n)),
            _ => false,
        };
        Ok(Some(maintenance_status(c, paused)))
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
            Some(c) => {
                let c = contract_info(c);
                // A node its farmer paused for maintenance pauses its contracts as a grace
                // period does, on the same proof standard (the node record, proven).
                let paused = match c.node_id {
                    Some(n) if c.status == ContractStatus::Created => {
                        let v = self
                            .client
                            .verified_node(n)
                            .await
                            .map_err(|e| cerr("verify node", e))?;
                        v.value
                            .filter(|node| node.id == n)
                            .is_some_and(|node| paused_for_maintenance(&node))
                    }
                    _ => false,
                };
                Ok(Some(maintenance_status(c, paused)))
            }
            None => Ok(None),
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

    async fn report_resources(&self, used: &[(u64, Capacity, bool)]) -> Result<(), ChainError> {
        let reports = used
            .iter()
            .map(|(id, c, up)| ContractResources {
                contract_id: *id,
                used: Resources {
                    cru: c.cru,
                    sru: c.sru,
                    hru: c.hru,
                    mru: c.mru,
                },
                ok: Some(*up),
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
