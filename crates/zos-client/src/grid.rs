//! A connected client: the ledger for contracts, the message bus for the nodes.
//!
//! The deploy flow is upstream's: build the deployment, create (or update) the node contract
//! with its hash, sign, send it to the node over RMB, then poll the node until every changed
//! workload is `ok` or one fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zos_ledger::{Call, Contract, ContractKind, ContractState, Event, LedgerClient, Node};
use zos_rmb::{Peer, PeerConfig, RmbError};
use zos_types::{Capacity, Deployment, KeyPair, ResultState, Workload};

use crate::config::{Config, ConfigError};
use crate::keys::{KeyFile, KeyFileError};
use crate::spec::{NodeSelector, Spec, SpecInput};

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
    /// A workload failed.
    #[error("workload {name:?} failed: {message}")]
    Workload {
        /// Workload name.
        name: String,
        /// The node's error.
        message: String,
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

/// A node with its free capacity, as `zos nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// The ledger record.
    pub node: Node,
    /// Free capacity reported by the node (None when it did not answer).
    pub free: Option<Capacity>,
}

/// One of the user's deployments.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    /// Node id.
    pub node_id: u32,
    /// The deployment as the node reports it.
    pub deployment: Deployment,
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
        let ledger = LedgerClient::new(cfg.require_ledger()?)?;
        let relay = cfg.require_relay()?.to_string();
        let key = KeyFile::load(cfg.require_key()?)?
            .key_pair()
            .map_err(GridError::Other)?;
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

    /// The user's deployments on every node that answers.
    pub async fn deployments(&self) -> Result<Vec<DeploymentView>, GridError> {
        let mut out = Vec::new();
        for node in self.list_nodes().await? {
            if let Ok(list) = self
                .node_call::<Vec<Deployment>>(&node, "zos.deployment.list", Value::Null)
                .await
            {
                out.extend(list.into_iter().map(|deployment| DeploymentView {
                    node_id: node.id,
                    deployment,
                }));
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
        })
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
        self.contract_node(contract_id).await?;
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

    /// Deploys (or updates, when a deployment of the same name exists) and waits until every
    /// changed workload is `ok`. Returns the deployment as the node reports it.
    pub async fn deploy(
        &self,
        input: SpecInput,
        wait: Duration,
        mut progress: impl FnMut(&Progress),
    ) -> Result<DeploymentView, GridError> {
        let (node, mut d, previous) = match input {
            SpecInput::Spec(spec) => self.plan(&spec).await?,
            SpecInput::Raw(raw) => {
                let mut raw = *raw;
                raw.twin_id = self.twin;
                let node = self.pick_node(&NodeSelector::Any, &raw).await?;
                (node, raw, None)
            }
        };
        let hash = d
            .challenge_hash_hex()
            .map_err(|e| GridError::Other(e.to_string()))?;
        let created = match &previous {
            Some(old) => {
                self.ledger
                    .send(
                        &self.key,
                        Call::UpdateNodeContract {
                            contract_id: old.contract_id,
                            deployment_hash: hash,
                            deployment_data: d.metadata.clone(),
                        },
                    )
                    .await?;
                None
            }
            None => {
                let receipt = self
                    .ledger
                    .send(
                        &self.key,
                        Call::CreateNodeContract {
                            node_id: node.id,
                            deployment_hash: hash,
                            deployment_data: d.metadata.clone(),
                            public_ips: 0,
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
            }
        };
        d.sign(self.twin, &self.key)
            .map_err(|e| GridError::Other(e.to_string()))?;
        let command = if previous.is_some() {
            "zos.deployment.update"
        } else {
            "zos.deployment.deploy"
        };
        let sent = self
            .peer
            .call(
                node.twin_id,
                command,
                &serde_json::to_value(&d).expect("deployment serialises"),
                CALL_TIMEOUT,
            )
            .await;
        if let Err(e) = sent {
            // A refused new deployment must not leave a contract that bills the user.
            if let Some(id) = created {
                let _ = self
                    .ledger
                    .send(&self.key, Call::CancelContract { contract_id: id })
                    .await;
            }
            return Err(e.into());
        }
        self.wait(&node, &d, wait, &mut progress).await
    }

    async fn plan(&self, spec: &Spec) -> Result<(Node, Deployment, Option<Deployment>), GridError> {
        // An existing deployment with this name is updated on its node.
        let metadata = spec.metadata();
        for view in self.deployments().await? {
            if view.deployment.metadata == metadata {
                let node =
                    self.ledger.node(view.node_id).await?.ok_or_else(|| {
                        GridError::Other(format!("node {} vanished", view.node_id))
                    })?;
                let d = spec.to_deployment(self.twin, Some(&view.deployment));
                return Ok((node, d, Some(view.deployment)));
            }
        }
        let d = spec.to_deployment(self.twin, None);
        let node = self.pick_node(&spec.node, &d).await?;
        Ok((node, d, None))
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
        for view in self.nodes().await? {
            let Some(free) = view.free else { continue };
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

    async fn wait(
        &self,
        node: &Node,
        sent: &Deployment,
        wait: Duration,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<DeploymentView, GridError> {
        let start = Instant::now();
        let changed: Vec<&Workload> = sent
            .workloads
            .iter()
            .filter(|w| w.version == sent.version)
            .collect();
        loop {
            let got: Result<Deployment, _> = self
                .node_call(
                    node,
                    "zos.deployment.get",
                    json!({"contract_id": sent.contract_id}),
                )
                .await;
            if let Ok(current) = got {
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
                let mut done = current.version == sent.version;
                for want in &changed {
                    // The node stores the new header before it applies the workloads, so a
                    // result counts only once it is for the version sent (an older "ok" is
                    // not the update's outcome).
                    match current
                        .get(&want.name)
                        .filter(|w| w.version == want.version)
                        .map(|w| (&w.result.state, &w.result.error))
                    {
                        Some((ResultState::Ok, _)) => {}
                        Some((ResultState::Error, message)) => {
                            return Err(GridError::Workload {
                                name: want.name.clone(),
                                message: message.clone(),
                            });
                        }
                        _ => done = false,
                    }
                }
                if done {
                    return Ok(DeploymentView {
                        node_id: node.id,
                        deployment: current,
                    });
                }
            }
            if start.elapsed() > wait {
                return Err(GridError::Timeout(wait, sent.contract_id));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
