//! A connected client: the ledger for contracts, the message bus for the nodes.
//!
//! The deploy flow is upstream's: build the deployment, create (or update) the node contract
//! with its hash, sign, send it to the node over RMB, then wait for the node to apply it
//! (`zos.deployment.wait`, polling for nodes without it). Failed workloads cancel a new
//! contract or roll an update back, unless the user keeps them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zos_ledger::{Call, Contract, ContractKind, ContractState, Event, LedgerClient, Node};
use zos_rmb::{Peer, PeerConfig, RmbError};
use zos_types::{Capacity, Deployment, KeyPair, ResultState, Workload};

use crate::config::{Config, ConfigError, IdentityError};
use crate::keys::KeyFileError;
use crate::spec::{NodeSelector, Spec, SpecInput};

mod mesh_deploy;
pub use mesh_deploy::endpoint_of;

/// How long one RMB call to a node may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    /// Configuration is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The key file cannot be used.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// No usable key (file or seed).
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The ledger refused or failed. (The cause is the error's source: `{:#}` prints
    /// "ledger: <cause>"; naming it here too would print it twice.)
    #[error("ledger")]
    Ledger(#[from] zos_ledger::ClientError),
    /// The message bus failed (the cause is the source, as for `Ledger`).
    #[error("message bus")]
    Rmb(#[from] RmbError),
    /// The user's key has no twin on the ledger.
    #[error(
        "your key {0} has no twin on the ledger: run `zos twin create` (or `zos up`, which does it)"
    )]
    NoTwin(String),
    /// No node fits.
    #[error("{0}")]
    NoNode(String),
    /// A node answered something unexpected.
    #[error("node {node}: {message}")]
    Node {
        /// Node id.
        node: u32,
        /// What went wrong.
        message: String,
    },
    /// Workloads ended in error; `outcome` says what was done about the contract.
    #[error(
        "deployment of contract {contract} failed:{}\n{outcome}",
        list_errors(errors)
    )]
    Failed {
        /// The contract.
        contract: u64,
        /// `(workload, the node's message)` of every failed workload.
        errors: Vec<(String, String)>,
        /// Canceled, rolled back or kept.
        outcome: String,
    },
    /// The deployment did not converge in time.
    #[error(
        "timed out after {0:?} waiting for the workloads; `zos status {1}` shows where they are"
    )]
    Timeout(Duration, u64),
    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

fn list_errors(errors: &[(String, String)]) -> String {
    errors
        .iter()
        .map(|(name, message)| format!("\n  workload {name:?}: {message}"))
        .collect()
}

/// How `deploy` behaves.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// How long to wait for the node.
    pub wait: Duration,
    /// Keep a contract whose workloads failed (no cancel, no rollback).
    pub keep_on_error: bool,
    /// Nodes whose network keys are replaced by new ones (the others keep theirs).
    pub rotate_keys: Vec<u32>,
}

/// A node with its free capacity, as `zos nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The ledger record.
    pub node: Node,
    /// Free capacity reported by the node (None when it did not answer).
    pub free: Option<Capacity>,
}

/// One result change of a workload, as the node keeps it (`zos.deployment.history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in the deployment's history (from 1).
    pub seq: u64,
    /// Workload name.
    pub name: String,
    /// Workload type.
    #[serde(rename = "type")]
    pub workload_type: String,
    /// Workload version.
    pub version: u32,
    /// Deployment version when the result was recorded.
    pub deployment_version: u32,
    /// Result state.
    pub state: ResultState,
    /// Stable error code (`capacity`, `backend`…), for errors and refused updates.
    pub code: Option<zos_types::ErrorCode>,
    /// The message (the cause of an error).
    pub message: String,
    /// Unix seconds.
    pub created: i64,
}

/// One of the user's deployments.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    /// Node id.
    pub node_id: u32,
    /// The deployment as the node reports it.
    pub deployment: Deployment,
    /// Why the node could not show it (`zos deployments --all`: the contract is listed with
    /// what the ledger knows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl DeploymentView {
    /// Whether a workload is in error (or the node does not have the deployment).
    pub fn has_failures(&self) -> bool {
        self.problem.is_some()
            || self
                .deployment
                .workloads
                .iter()
                .any(|w| w.result.state == ResultState::Error)
    }
}

/// Progress of a deployment, for display.
#[derive(Debug, Clone)]
pub struct Progress {
    /// `(name, type, state, message)` per workload.
    pub workloads: Vec<(String, String, ResultState, String)>,
}

/// A connected client.
pub struct Grid {
    /// The ledger client.
    pub ledger: LedgerClient,
    /// The message-bus peer.
    pub peer: Peer,
    /// The user's key.
    pub key: KeyPair,
    /// The user's twin.
    pub twin: u32,
}

#[derive(Deserialize)]
struct Statistics {
    total: Capacity,
    used: Capacity,
}

impl Grid {
    /// Connects with the configuration (file, environment and flags already merged).
    pub async fn connect(cfg: &Config) -> Result<Grid, GridError> {
        let ledger = cfg.ledger_client()?;
        let relay = cfg.require_relay()?.to_string();
        cfg.trust_relay()
            .map_err(|e| zos_rmb::RmbError::Config(e.to_string()))?;
        let key = cfg.key_pair()?;
        let twin = ledger
            .twin_by_account(&key.public())
            .await?
            .ok_or_else(|| GridError::NoTwin(key.public().to_string()))?;
        let dir = Arc::new(zos_rmb::CachedDirectory::new(
            zos_rmb::LedgerDirectory::new(ledger.clone()),
            Duration::from_secs(60),
        ));
        let session = format!("cli-{}", std::process::id());
        let peer = Peer::connect(
            PeerConfig {
                relays: vec![relay],
                twin_id: twin.id,
                key: key.clone(),
                session: Some(session),
            },
            dir,
        )
        .await?;
        peer.wait_connected(Duration::from_secs(10)).await;
        Ok(Grid {
            ledger,
            peer,
            key,
            twin: twin.id,
        })
    }

    async fn node_call<T: for<'de> Deserialize<'de>>(
        &self,
        node: &Node,
        command: &str,
        payload: Value,
    ) -> Result<T, GridError> {
        let v = self
            .peer
            .call(node.twin_id, command, &payload, CALL_TIMEOUT)
            .await?;
        serde_json::from_value(v).map_err(|e| GridError::Node {
            node: node.id,
            message: format!("unexpected answer to {command}: {e}"),
        })
    }

    /// Every node on the ledger (ids are dense, from 1).
    pub async fn list_nodes(&self) -> Result<Vec<Node>, GridError> {
        let mut nodes = Vec::new();
        for id in 1u32.. {
            match self.ledger.node(id).await? {
                Some(n) => nodes.push(n),
                None => break,
            }
        }
        Ok(nodes)
    }

    /// Nodes with the free capacity they report.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, GridError> {
        let mut out = Vec::new();
        for node in self.list_nodes().await? {
            let free = self
                .node_call::<Statistics>(&node, "zos.statistics.get", Value::Null)
                .await
                .ok()
                .map(|s| free_of(&s));
            out.push(NodeView { node, free });
        }
        Ok(out)
    }

    /// The user's deployments on every node that answers. With `all`, every contract that is
    /// not deleted, as its node reports it, also those whose workloads all failed (which
    /// nodes leave out of `zos.deployment.list`) and those the node does not have.
    pub async fn deployments(&self, all: bool) -> Result<Vec<DeploymentView>, GridError> {
        if all {
            return self.all_deployments().await;
        }
        let mut out = Vec::new();
        for node in self.list_nodes().await? {
            if let Ok(list) = self
                .node_call::<Vec<Deployment>>(&node, "zos.deployment.list", Value::Null)
                .await
            {
                out.extend(list.into_iter().map(|deployment| DeploymentView {
                    node_id: node.id,
                    deployment,
                    problem: None,
                }));
            }
        }
        out.sort_by_key(|d| d.deployment.contract_id);
        Ok(out)
    }

    async fn all_deployments(&self) -> Result<Vec<DeploymentView>, GridError> {
        let mut out = Vec::new();
        for (contract, node_id) in self.active_contracts().await? {
            let placeholder = |problem: String| DeploymentView {
                node_id,
                deployment: Deployment {
                    twin_id: self.twin,
                    contract_id: contract.id,
                    metadata: match &contract.kind {
                        ContractKind::Node {
                            deployment_data, ..
                        } => deployment_data.clone(),
                        ContractKind::Name { .. } => String::new(),
                    },
                    ..Deployment::default()
                },
                problem: Some(problem),
            };
            let Some(node) = self.ledger.node(node_id).await? else {
                out.push(placeholder(format!("node {node_id} does not exist")));
                continue;
            };
            match self
                .node_call::<Deployment>(
                    &node,
                    "zos.deployment.get",
                    json!({"contract_id": contract.id}),
                )
                .await
            {
                Ok(deployment) => out.push(DeploymentView {
                    node_id,
                    deployment,
                    problem: None,
                }),
                Err(e) => out.push(placeholder(format!("node {node_id}: {e:#}"))),
            }
        }
        out.sort_by_key(|d| d.deployment.contract_id);
        Ok(out)
    }

    /// The deployment of a contract, from its node.
    pub async fn status(&self, contract_id: u64) -> Result<DeploymentView, GridError> {
        let (node, _) = self.contract_node(contract_id).await?;
        let deployment = self
            .node_call(
                &node,
                "zos.deployment.get",
                json!({"contract_id": contract_id}),
            )
            .await?;
        Ok(DeploymentView {
            node_id: node.id,
            deployment,
            problem: None,
        })
    }

    /// A read-only diagnostics command (`zos.admin.diag.*`) on node `node_id`: the node
    /// answers only its farm's twin (and its admin twins).
    pub async fn node_diag(
        &self,
        node_id: u32,
        what: &str,
        payload: Value,
    ) -> Result<Value, GridError> {
        let node = self
            .ledger
            .node(node_id)
            .await?
            .ok_or_else(|| GridError::Other(format!("node {node_id} does not exist")))?;
        self.node_call(&node, &format!("zos.admin.diag.{what}"), payload)
            .await
    }

    /// Asks node `node_id` for a clean reboot (`zos.admin.reboot`): only its farm's twin and
    /// its admin twins may, and only a node under the zos image's PID 1 can.
    pub async fn node_reboot(&self, node_id: u32) -> Result<Value, GridError> {
        let node = self
            .ledger
            .node(node_id)
            .await?
            .ok_or_else(|| GridError::Other(format!("node {node_id} does not exist")))?;
        self.node_call(&node, "zos.admin.reboot", Value::Null).await
    }

    /// The node's kept result history of one of the user's contracts
    /// (`zos.deployment.history`), also once the contract is canceled: a rolled-back
    /// deployment keeps its evidence. Oldest first.
    pub async fn history(&self, contract_id: u64) -> Result<Vec<HistoryEntry>, GridError> {
        let contract =
            self.ledger.contract(contract_id).await?.ok_or_else(|| {
                GridError::Other(format!("contract {contract_id} does not exist"))
            })?;
        if contract.twin_id != self.twin {
            return Err(GridError::Other(format!(
                "contract {contract_id} is not yours"
            )));
        }
        let ContractKind::Node { node_id, .. } = &contract.kind else {
            return Err(GridError::Other(format!(
                "contract {contract_id} is not a node contract"
            )));
        };
        let node = self
            .ledger
            .node(*node_id)
            .await?
            .ok_or_else(|| GridError::Other(format!("node {node_id} does not exist")))?;
        #[derive(Deserialize)]
        struct Answer {
            history: Vec<HistoryEntry>,
        }
        let a: Answer = self
            .node_call(
                &node,
                "zos.deployment.history",
                json!({"contract_id": contract_id}),
            )
            .await?;
        Ok(a.history)
    }

    /// The snapshots of one of the user's volumes (`zos.storage.volume.snapshots`), oldest first.
    pub async fn volume_snapshots(&self, contract_id: u64, name: &str) -> Result<Value, GridError> {
        let (node, _) = self.contract_node(contract_id).await?;
        self.node_call(
            &node,
            "zos.storage.volume.snapshots",
            json!({"contract_id": contract_id, "name": name}),
        )
        .await
    }

    /// The last `bytes` of one of the user's VM consoles (`zos.vm.logs`; the node answers
    /// only the deployment's owner).
    pub async fn vm_logs(
        &self,
        contract_id: u64,
        name: &str,
        bytes: u64,
    ) -> Result<String, GridError> {
        let (node, _) = self.contract_node(contract_id).await?;
        let v: Value = self
            .node_call(
                &node,
                "zos.vm.logs",
                json!({"contract_id": contract_id, "name": name, "bytes": bytes}),
            )
            .await?;
        Ok(v.get("log")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Restores a volume to a snapshot; the state before the restore is kept as a snapshot too.
    pub async fn volume_restore(
        &self,
        contract_id: u64,
        name: &str,
        snapshot: &str,
    ) -> Result<Value, GridError> {
        let (node, _) = self.contract_node(contract_id).await?;
        self.node_call(
            &node,
            "zos.storage.volume.restore",
            json!({"contract_id": contract_id, "name": name, "snapshot": snapshot}),
        )
        .await
    }

    /// Cancels a contract; its node removes the workloads when it sees the event.
    pub async fn cancel(&self, contract_id: u64) -> Result<(), GridError> {
        // A name contract (a gateway name) has no node: it is canceled on the ledger only.
        let name_contract = matches!(
            self.ledger.contract(contract_id).await?,
            Some(Contract {
                kind: ContractKind::Name { .. },
                twin_id,
                ..
            }) if twin_id == self.twin
        );
        if !name_contract {
            self.contract_node(contract_id).await?;
        }
        self.ledger
            .send(&self.key, Call::CancelContract { contract_id })
            .await?;
        Ok(())
    }

    async fn contract_node(&self, contract_id: u64) -> Result<(Node, Contract), GridError> {
        let contract =
            self.ledger.contract(contract_id).await?.ok_or_else(|| {
                GridError::Other(format!("contract {contract_id} does not exist"))
            })?;
        if contract.twin_id != self.twin {
            return Err(GridError::Other(format!(
                "contract {contract_id} is not yours"
            )));
        }
        if matches!(contract.state, ContractState::Deleted { .. }) {
            return Err(GridError::Other(format!(
                "contract {contract_id} is deleted"
            )));
        }
        let ContractKind::Node { node_id, .. } = &contract.kind else {
            return Err(GridError::Other(format!(
                "contract {contract_id} is not a node contract"
            )));
        };
        let node = self
            .ledger
            .node(*node_id)
            .await?
            .ok_or_else(|| GridError::Other(format!("node {node_id} does not exist")))?;
        Ok((node, contract))
    }

    /// Deploys (or updates, when a deployment of the same name exists) and waits until the
    /// node has applied it. When workloads end in error, a new contract is canceled and an
    /// update is rolled back to the previous definition, unless `opts.keep_on_error`; the
    /// error lists every failed workload and what was done.
    pub async fn deploy(
        &self,
        input: SpecInput,
        opts: &DeployOptions,
        mut progress: impl FnMut(&Progress),
    ) -> Result<DeploymentView, GridError> {
        let (node, d, previous) = match input {
            SpecInput::Spec(spec) => self.plan(&spec).await?,
            SpecInput::Raw(raw) => {
                let mut raw = *raw;
                raw.twin_id = self.twin;
                let node = self.pick_node(&NodeSelector::Any, &raw).await?;
                (node, raw, None)
            }
        };
        self.ensure_names(&d).await?;
        let sent = self.send(&node, d, previous.is_some()).await?;
        let view = self.wait(&node, &sent, opts.wait, &mut progress).await?;
        let errors = failures(
            &sent,
            &view.deployment,
            self.refusals(&node, &sent, &view).await,
        );
        if errors.is_empty() {
            return Ok(view);
        }
        let outcome = if opts.keep_on_error {
            format!(
                "kept as asked (--keep-on-error): contract {} stays and is billed; fix the spec and deploy it again, or `zos cancel {}`",
                sent.contract_id, sent.contract_id
            )
        } else if let Some(old) = &previous {
            match self
                .roll_back(&node, old, &view.deployment, opts, &mut progress)
                .await
            {
                Ok(v) => format!(
                    "rolled back: contract {} runs the previous definition again (version {})",
                    sent.contract_id, v.deployment.version
                ),
                Err(e) => format!(
                    "rolling back failed too ({e}); `zos status {}` shows where it is",
                    sent.contract_id
                ),
            }
        } else {
            match self.cancel_contract(sent.contract_id).await {
                Ok(()) => format!(
                    "contract {} canceled, so nothing is billed (use --keep-on-error to keep it)",
                    sent.contract_id
                ),
                Err(e) => format!(
                    "canceling contract {} failed ({e}): run `zos cancel {}`",
                    sent.contract_id, sent.contract_id
                ),
            }
        };
        Err(GridError::Failed {
            contract: sent.contract_id,
            errors,
            outcome,
        })
    }

    /// Creates the name contract of every gateway-name-proxy of `d` the twin does not hold
    /// yet (a name held by another twin is an error: the node would refuse the gateway).
    async fn ensure_names(&self, d: &Deployment) -> Result<(), GridError> {
        for w in &d.workloads {
            if w.workload_type != zos_types::WorkloadType::GatewayNameProxy {
                continue;
            }
            let Some(name) = w.data["name"].as_str() else {
                continue;
            };
            match self.ledger.name_contract(name).await? {
                Some(c) if c.twin_id == self.twin => {}
                Some(c) => {
                    return Err(GridError::Other(format!(
                        "gateway name {name:?} is taken (name contract {} of twin {})",
                        c.id, c.twin_id
                    )));
                }
                None => {
                    self.ledger
                        .send(
                            &self.key,
                            Call::CreateNameContract {
                                name: name.to_string(),
                            },
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Whether `node` announces the v2 deployment hash in `zos.system.version` (zos nodes do;
    /// upstream nodes and any failure to ask mean MD5, which every node takes).
    async fn node_takes_hash_v2(&self, node: &Node) -> bool {
        use zos_types::deployment::{HASH_V2, VERSION_HASH_KEY};
        match self
            .node_call::<Value>(node, "zos.system.version", Value::Null)
            .await
        {
            Ok(v) => v[VERSION_HASH_KEY]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(u64::from(HASH_V2)))),
            Err(e) => {
                tracing::debug!(node = node.id, error = %e, "version query failed; using the MD5 deployment hash");
                false
            }
        }
    }

    /// Creates or updates the contract for `d`, signs it and sends it to `node`. A new contract
    /// whose deployment the node refuses is canceled at once, so it never bills.
    async fn send(
        &self,
        node: &Node,
        mut d: Deployment,
        update: bool,
    ) -> Result<Deployment, GridError> {
        if d.hash_version == 0 && self.node_takes_hash_v2(node).await {
            d.hash_version = zos_types::deployment::HASH_V2;
        }
        let hash = d
            .challenge_hash_hex()
            .map_err(|e| GridError::Other(e.to_string()))?;
        let created = if update {
            self.ledger
                .send(
                    &self.key,
                    Call::UpdateNodeContract {
                        contract_id: d.contract_id,
                        deployment_hash: hash,
                        deployment_data: d.metadata.clone(),
                    },
                )
                .await?;
            None
        } else {
            let receipt = self
                .ledger
                .send(
                    &self.key,
                    Call::CreateNodeContract {
                        node_id: node.id,
                        deployment_hash: hash,
                        deployment_data: d.metadata.clone(),
                        // One reserved IPv4 per `ipv4` / `ip` (v4) workload (IPV4U).
                        public_ips: public_ipv4_count(&d),
                    },
                )
                .await?;
            let id = receipt
                .events
                .iter()
                .find_map(|e| match &e.event {
                    Event::NodeContractCreated { contract_id, .. } => Some(*contract_id),
                    _ => None,
                })
                .ok_or_else(|| {
                    GridError::Other("the ledger did not report the new contract".into())
                })?;
            d.contract_id = id;
            Some(id)
        };
        d.sign(self.twin, &self.key)
            .map_err(|e| GridError::Other(e.to_string()))?;
        let command = if update {
            "zos.deployment.update"
        } else {
            "zos.deployment.deploy"
        };
        let payload = serde_json::to_value(&d).map_err(|e| GridError::Other(e.to_string()))?;
        if let Err(e) = self
            .peer
            .call(node.twin_id, command, &payload, CALL_TIMEOUT)
            .await
        {
            if let Some(id) = created {
                let _ = self.cancel_contract(id).await;
            }
            return Err(e.into());
        }
        Ok(d)
    }

    async fn cancel_contract(&self, contract_id: u64) -> Result<(), GridError> {
        self.ledger
            .send(&self.key, Call::CancelContract { contract_id })
            .await?;
        Ok(())
    }

    /// Puts the previous definition back: a new version whose workloads are `old`'s (unchanged
    /// ones keep their version, so the node leaves them alone; failed ones are provisioned
    /// again; ones the failed update added are removed).
    async fn roll_back(
        &self,
        node: &Node,
        old: &Deployment,
        current: &Deployment,
        opts: &DeployOptions,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<DeploymentView, GridError> {
        let back = rollback_of(old, current);
        let sent = self.send(node, back, true).await?;
        let view = self.wait(node, &sent, opts.wait, progress).await?;
        let errors = failures(
            &sent,
            &view.deployment,
            self.refusals(node, &sent, &view).await,
        );
        match errors.first() {
            None => Ok(view),
            Some((name, message)) => Err(GridError::Other(format!(
                "workload {name:?} of the previous definition failed: {message}"
            ))),
        }
    }

    /// Messages of changed workloads the node logged as `unchanged` (an update it refused,
    /// e.g. for capacity), which stay at their old version in the current view.
    async fn refusals(
        &self,
        node: &Node,
        sent: &Deployment,
        view: &DeploymentView,
    ) -> Vec<(String, String)> {
        let refused: Vec<&Workload> = changed(sent)
            .filter(|w| {
                view.deployment
                    .get(&w.name)
                    .is_some_and(|c| c.version != w.version)
            })
            .collect();
        if refused.is_empty() {
            return Vec::new();
        }
        let log: Vec<Workload> = self
            .node_call(
                node,
                "zos.deployment.changes",
                json!({"contract_id": sent.contract_id}),
            )
            .await
            .unwrap_or_default();
        refused
            .iter()
            .map(|w| {
                let message = log
                    .iter()
                    .rev()
                    .find(|l| l.name == w.name && l.version == w.version)
                    .map(|l| l.result.error.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "the node did not apply the update".into());
                (w.name.clone(), message)
            })
            .collect()
    }

    async fn plan(&self, spec: &Spec) -> Result<(Node, Deployment, Option<Deployment>), GridError> {
        // An existing deployment with this name is updated on its node, also one whose
        // workloads all failed (kept with --keep-on-error): it is found by its contract.
        let metadata = spec.metadata();
        let mut mine = self.active_contracts().await?;
        mine.retain(|(c, _)| match &c.kind {
            ContractKind::Node {
                deployment_data, ..
            } => *deployment_data == metadata,
            ContractKind::Name { .. } => false,
        });
        mine.sort_by_key(|(c, _)| std::cmp::Reverse(c.id));
        for (contract, node_id) in mine {
            let node = self
                .ledger
                .node(node_id)
                .await?
                .ok_or_else(|| GridError::Other(format!("node {node_id} vanished")))?;
            let got = self
                .node_call::<Deployment>(
                    &node,
                    "zos.deployment.get",
                    json!({"contract_id": contract.id}),
                )
                .await;
            match got {
                Ok(current) => {
                    let d = spec.to_deployment(self.twin, Some(&current));
                    return Ok((node, d, Some(current)));
                }
                // The node never took it (refused, or removed): the contract only bills.
                Err(GridError::Rmb(RmbError::Remote { code: 404, .. })) => {
                    tracing::info!(
                        contract = contract.id,
                        "canceling a contract its node does not know"
                    );
                    self.cancel_contract(contract.id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        let d = spec.to_deployment(self.twin, None);
        let node = self.pick_node(&spec.node, &d).await?;
        Ok((node, d, None))
    }

    /// The user's node contracts that are not deleted, with their node.
    async fn active_contracts(&self) -> Result<Vec<(Contract, u32)>, GridError> {
        Ok(self
            .ledger
            .twin_contracts(self.twin)
            .await?
            .into_iter()
            .filter(|c| !matches!(c.state, ContractState::Deleted { .. }))
            .filter_map(|c| c.node_id().map(|n| (c, n)))
            .collect())
    }

    async fn pick_node(&self, selector: &NodeSelector, d: &Deployment) -> Result<Node, GridError> {
        let need = d.capacity().map_err(|e| GridError::Other(e.to_string()))?;
        if let NodeSelector::Id(id) = selector {
            return self.ledger.node(*id).await?.ok_or_else(|| {
                GridError::NoNode(format!("node {id} does not exist (see `zos nodes`)"))
            });
        }
        let filter = match selector {
            NodeSelector::Filter(f) => f.clone(),
            _ => Default::default(),
        };
        // Public IPs need a public node (one its farmer gave a public config).
        let public = d.workloads.iter().any(|w| {
            matches!(
                w.workload_type,
                zos_types::WorkloadType::Ip | zos_types::WorkloadType::Ipv4
            )
        });
        for view in self.nodes().await? {
            let Some(free) = view.free else { continue };
            if public && view.node.public_config.is_none() {
                continue;
            }
            // The ledger refuses new contracts on a node in maintenance.
            if view.node.maintenance.is_some() {
                continue;
            }
            if filter.farm.is_some_and(|f| f != view.node.farm_id) {
                continue;
            }
            let want = |min: Option<u64>, need: u64| min.unwrap_or(0).max(need);
            if free.mru >= want(filter.free_mru, need.mru)
                && free.sru >= want(filter.free_sru, need.sru)
                && free.hru >= want(filter.free_hru, need.hru)
            {
                return Ok(view.node);
            }
        }
        Err(GridError::NoNode(
            "no node has room for this deployment (see `zos nodes` for free capacity)".into(),
        ))
    }

    /// Waits until the node has applied `sent` (its version): with `zos.deployment.wait`,
    /// which answers as soon as the node's job for it is done, else (older nodes) by polling
    /// `zos.deployment.get` from 5 ms, doubling to 200 ms.
    async fn wait(
        &self,
        node: &Node,
        sent: &Deployment,
        wait: Duration,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<DeploymentView, GridError> {
        let deadline = Instant::now() + wait;
        let mut long_poll = true;
        let mut pause = Duration::from_millis(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let current = if long_poll {
                let hold = left.min(WAIT_HOLD);
                let got: Result<WaitReply, _> = self
                    .node_call(
                        node,
                        "zos.deployment.wait",
                        json!({"contract_id": sent.contract_id, "version": sent.version,
                               "timeout_ms": hold.as_millis() as u64}),
                    )
                    .await;
                match got {
                    Ok(r) => Some((r.deployment, r.settled)),
                    Err(GridError::Rmb(RmbError::Remote { code: 404, message }))
                        if !message.contains("deployment not found") =>
                    {
                        tracing::debug!("node {} has no zos.deployment.wait: polling", node.id);
                        long_poll = false;
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "waiting for the node");
                        None
                    }
                }
            } else {
                self.node_call::<Deployment>(
                    node,
                    "zos.deployment.get",
                    json!({"contract_id": sent.contract_id}),
                )
                .await
                .ok()
                .map(|d| {
                    let done = polled_done(sent, &d);
                    (d, done)
                })
            };
            let answered = current.is_some();
            if let Some((current, settled)) = current {
                progress(&Progress {
                    workloads: current
                        .workloads
                        .iter()
                        .map(|w| {
                            (
                                w.name.clone(),
                                w.workload_type.to_string(),
                                w.result.state,
                                w.result.error.clone(),
                            )
                        })
                        .collect(),
                });
                if settled {
                    return Ok(DeploymentView {
                        node_id: node.id,
                        deployment: current,
                        problem: None,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(GridError::Timeout(wait, sent.contract_id));
            }
            // A long-poll that answered unsettled held on the node already: ask again at once.
            if !long_poll || !answered {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// How long one `zos.deployment.wait` call may hold (below [`CALL_TIMEOUT`]).
const WAIT_HOLD: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct WaitReply {
    settled: bool,
    deployment: Deployment,
}

/// How many public IPv4 addresses the contract of `d` reserves: its IPV4U (one per `ipv4`
/// workload and per `ip` workload with `v4`).
pub fn public_ipv4_count(d: &Deployment) -> u32 {
    d.workloads
        .iter()
        .filter_map(|w| w.capacity().ok())
        .map(|c| c.ipv4u)
        .sum::<u64>()
        .try_into()
        .unwrap_or(u32::MAX)
}

/// The workloads `sent` changes (their version is the deployment's).
fn changed(sent: &Deployment) -> impl Iterator<Item = &Workload> {
    sent.workloads.iter().filter(|w| w.version == sent.version)
}

/// Polling without `zos.deployment.wait`: done when every changed workload has a final
/// result for the version sent (the node stores the new header before it applies the
/// workloads, so an older result is not the update's outcome).
fn polled_done(sent: &Deployment, current: &Deployment) -> bool {
    current.version == sent.version
        && changed(sent).all(|want| {
            current
                .get(&want.name)
                .filter(|w| w.version == want.version)
                .is_some_and(|w| {
                    matches!(
                        w.result.state,
                        ResultState::Ok | ResultState::Error | ResultState::Deleted
                    )
                })
        })
}

/// Every changed workload that did not end `ok`, with the node's message; `refused` are
/// the updates the node logged as unchanged.
fn failures(
    sent: &Deployment,
    current: &Deployment,
    refused: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = changed(sent)
        .filter_map(|want| {
            let got = current.get(&want.name)?;
            if got.version != want.version {
                return None; // in `refused`
            }
            match got.result.state {
                ResultState::Ok | ResultState::Paused => None,
                state => Some((
                    want.name.clone(),
                    if got.result.error.is_empty() {
                        format!("ended in state {state:?}")
                    } else {
                        got.result.error.clone()
                    },
                )),
            }
        })
        .collect();
    out.extend(refused);
    out
}

/// The deployment that puts `old`'s workloads back over `current` (the failed version), as
/// the next version: workloads whose definition is what `current` has keep their version
/// (the node leaves them alone), the others get the new one, and workloads `old` did not
/// have are dropped (the node removes them).
pub fn rollback_of(old: &Deployment, current: &Deployment) -> Deployment {
    let version = current.version.wrapping_add(1);
    let workloads = old
        .workloads
        .iter()
        .map(|o| {
            let mut w = o.clone();
            w.result = Default::default();
            let same = current.get(&o.name).is_some_and(|c| {
                c.workload_type == o.workload_type
                    && c.data == o.data
                    && c.description == o.description
                    && c.metadata == o.metadata
                    && c.result.state.is_okay()
            });
            w.version = match current.get(&o.name) {
                Some(c) if same => c.version,
                _ => version,
            };
            w
        })
        .collect();
    let mut signature_requirement = old.signature_requirement.clone();
    signature_requirement.signatures.clear();
    Deployment {
        version,
        twin_id: old.twin_id,
        contract_id: old.contract_id,
        metadata: old.metadata.clone(),
        description: old.description.clone(),
        expiration: old.expiration,
        signature_requirement,
        workloads,
        hash_version: old.hash_version,
    }
}

fn free_of(s: &Statistics) -> Capacity {
    Capacity {
        cru: s.total.cru,
        sru: s.total.sru.saturating_sub(s.used.sru),
        hru: s.total.hru.saturating_sub(s.used.hru),
        mru: s.total.mru.saturating_sub(s.used.mru),
        ipv4u: 0,
    }
}

/// Hides secrets (passwords, keys) before printing a deployment.
pub fn redact(d: &Deployment) -> Value {
    let mut v = serde_json::to_value(d).expect("deployment serialises");
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    let secret = matches!(
                        k.as_str(),
                        "password" | "wireguard_private_key" | "hex_key" | "key" | "signature"
                    );
                    if secret && val.as_str().is_some_and(|s| !s.is_empty()) {
                        *val = Value::String("<redacted>".into());
                    } else {
                        walk(val);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use zos_types::{WorkloadResult, WorkloadType};

    fn zdb(name: &str, version: u32, size: u64, state: ResultState) -> Workload {
        Workload {
            version,
            name: name.into(),
            workload_type: WorkloadType::Zdb,
            data: json!({"size": size, "mode": "user", "password": "p", "public": false}),
            result: WorkloadResult {
                state,
                error: if state == ResultState::Error {
                    format!("{name} failed")
                } else {
                    String::new()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn dep(version: u32, workloads: Vec<Workload>) -> Deployment {
        Deployment {
            version,
            twin_id: 1,
            contract_id: 7,
            metadata: "{\"name\":\"x\"}".into(),
            workloads,
            ..Default::default()
        }
    }

    #[test]
    fn failures_name_every_failed_changed_workload() {
        let sent = dep(
            1,
            vec![
                zdb("a", 0, 1, ResultState::Unset),
                zdb("b", 1, 1, ResultState::Unset),
                zdb("c", 1, 2, ResultState::Unset),
            ],
        );
        let current = dep(
            1,
            vec![
                // `a` was not changed: its old error is not this deploy's failure.
                zdb("a", 0, 1, ResultState::Error),
                zdb("b", 1, 1, ResultState::Error),
                zdb("c", 1, 2, ResultState::Ok),
            ],
        );
        let refused = vec![("d".to_string(), "cannot shrink".to_string())];
        assert_eq!(
            failures(&sent, &current, refused),
            vec![
                ("b".to_string(), "b failed".to_string()),
                ("d".to_string(), "cannot shrink".to_string())
            ]
        );
    }

    #[test]
    fn rollback_puts_the_previous_workloads_back_as_the_next_version() {
        let old = dep(
            2,
            vec![
                zdb("keep", 0, 1, ResultState::Ok),
                zdb("grown", 2, 1, ResultState::Ok),
                zdb("dropped", 1, 1, ResultState::Ok),
            ],
        );
        // The failed version 3: `keep` untouched, `grown` changed and failed, `dropped`
        // removed, `added` new.
        let current = dep(
            3,
            vec![
                zdb("keep", 0, 1, ResultState::Ok),
                zdb("grown", 3, 5, ResultState::Error),
                zdb("added", 3, 1, ResultState::Error),
            ],
        );
        let back = rollback_of(&old, &current);
        assert_eq!(back.version, 4);
        let v = |n: &str| back.get(n).map(|w| (w.version, w.data["size"].clone()));
        assert_eq!(
            v("keep"),
            Some((0, json!(1))),
            "unchanged keeps its version"
        );
        assert_eq!(
            v("grown"),
            Some((4, json!(1))),
            "the old definition, re-applied"
        );
        assert_eq!(v("dropped"), Some((4, json!(1))), "re-added");
        assert_eq!(v("added"), None, "what the update added is removed");
        assert!(back.signature_requirement.signatures.is_empty());
        // The node accepts it as the next version of the failed one.
        let mut next = back.clone();
        let ops = current.upgrade(&mut next).unwrap();
        assert!(ops.contains(&("added".to_string(), zos_types::UpgradeOp::Remove)));
    }

    #[test]
    fn polling_is_done_only_with_final_results_of_the_version_sent() {
        let sent = dep(1, vec![zdb("a", 1, 1, ResultState::Unset)]);
        let old_ok = dep(1, vec![zdb("a", 0, 1, ResultState::Ok)]);
        assert!(
            !polled_done(&sent, &old_ok),
            "an older ok is not the update's"
        );
        let init = dep(1, vec![zdb("a", 1, 1, ResultState::Init)]);
        assert!(!polled_done(&sent, &init));
        for state in [ResultState::Ok, ResultState::Error] {
            assert!(polled_done(&sent, &dep(1, vec![zdb("a", 1, 1, state)])));
        }
    }
}
