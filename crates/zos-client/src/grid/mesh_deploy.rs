//! `zos deploy` of a spec over several nodes, or holding a private network: one contract and
//! one deployment per node, the network's mesh computed from what the nodes report (their
//! endpoint address via `zos.network.endpoints`, their used ports via
//! `zos.network.list_wg_ports`) and what they already hold; nodes added get a contract, nodes
//! removed lose theirs, and every remaining node is updated with the new peers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Value, json};
use zos_ledger::{ContractKind, Node};
use zos_rmb::RmbError;
use zos_types::Deployment;

use super::{DeployOptions, DeploymentView, Grid, GridError, Progress, failures};
use crate::mesh::{self, MeshNode};
use crate::spec::{NodeSelector, NodeSet, Spec};

/// The address a node's peers reach it at: its first global IPv4 address (else IPv6) on its
/// network plane, as `zos.network.endpoints` reports it.
pub fn endpoint_of(interfaces: &Value) -> Option<IpAddr> {
    let mut found: Vec<IpAddr> = interfaces
        .as_object()?
        .values()
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|a| a.split('/').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    found.sort_by_key(|ip| ip.is_ipv6());
    found.into_iter().next()
}

impl Grid {
    /// Deploys a spec on every node it names (see the module). Returns each node's view.
    pub async fn deploy_mesh(
        &self,
        spec: &Spec,
        opts: &DeployOptions,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Vec<DeploymentView>, GridError> {
        // What exists: this spec's contracts, by node (a contract the node never took only
        // bills, so it is canceled, as for one node).
        let metadata = spec.metadata();
        let mut existing: BTreeMap<u32, Deployment> = BTreeMap::new();
        let mut mine = self.active_contracts().await?;
        mine.retain(|(c, _)| {
            matches!(&c.kind, ContractKind::Node { deployment_data, .. } if *deployment_data == metadata)
        });
        mine.sort_by_key(|(c, _)| std::cmp::Reverse(c.id));
        for (contract, node_id) in mine {
            let node = self
                .ledger
                .node(node_id)
                .await?
                .ok_or_else(|| GridError::Other(format!("node {node_id} vanished")))?;
            if existing.contains_key(&node_id) {
                tracing::warn!(
                    contract = contract.id,
                    node_id,
                    "a second contract of this deployment on one node: canceled"
                );
                self.cancel_contract(contract.id).await?;
                continue;
            }
            match self
                .node_call::<Deployment>(
                    &node,
                    "zos.deployment.get",
                    json!({"contract_id": contract.id}),
                )
                .await
            {
                Ok(d) => {
                    existing.insert(node_id, d);
                }
                Err(GridError::Rmb(RmbError::Remote { code: 404, .. })) => {
                    self.cancel_contract(contract.id).await?;
                }
                Err(e) => return Err(e),
            }
        }
        // Where it goes.
        let targets: Vec<Node> = match &spec.nodes {
            Some(NodeSet::All) => self.list_nodes().await?,
            Some(NodeSet::Ids(ids)) => {
                let mut out = Vec::new();
                for id in ids {
                    out.push(self.ledger.node(*id).await?.ok_or_else(|| {
                        GridError::NoNode(format!("node {id} does not exist (see `zos nodes`)"))
                    })?);
                }
                out
            }
            None if !existing.is_empty() => {
                let mut out = Vec::new();
                for id in existing.keys() {
                    if let Some(n) = self.ledger.node(*id).await? {
                        out.push(n);
                    }
                }
                out
            }
            None => {
                let d = spec.to_deployment(self.twin, None);
                vec![self.pick_node(&spec.node, &d).await?]
            }
        };
        if targets.is_empty() {
            return Err(GridError::NoNode("the grid has no nodes".into()));
        }
        if let (Some(_), NodeSelector::Id(_) | NodeSelector::Filter(_)) = (&spec.nodes, &spec.node)
        {
            return Err(GridError::Other(
                "a spec names either `node` or `nodes`, not both".into(),
            ));
        }
        // The mesh of every network of the spec.
        let networks = spec.networks();
        let mut per_node: BTreeMap<u32, BTreeMap<String, Value>> = BTreeMap::new();
        if !networks.is_empty() {
            let facts = self.mesh_facts(&targets).await?;
            for (name, range) in &networks {
                let nodes = mesh_nodes(&facts, &existing, name, *range);
                let access = existing_access(&existing, name, *range);
                let data = mesh::compute(name, *range, &nodes, &opts.rotate_keys, &access)
                    .map_err(|e| GridError::Other(e.to_string()))?;
                let mycelium = spec.mycelium_networks().contains(name);
                for (node, mut v) in data {
                    if mycelium {
                        mesh::with_mycelium(&mut v, existing.get(&node), name);
                    }
                    per_node.entry(node).or_default().insert(name.clone(), v);
                }
            }
        }
        let empty = BTreeMap::new();
        let mut planned = Vec::new();
        for node in &targets {
            let previous = existing.get(&node.id);
            let d = spec.to_deployment_with(
                self.twin,
                previous,
                per_node.get(&node.id).unwrap_or(&empty),
            );
            planned.push((node.clone(), d, previous.is_some()));
        }
        let views = self.send_all(planned, opts, &mut progress).await;
        // Nodes no longer named lose their contract (their node removes the resources).
        for (node_id, d) in &existing {
            if !targets.iter().any(|n| n.id == *node_id) {
                tracing::info!(
                    node_id,
                    contract = d.contract_id,
                    "node left the deployment"
                );
                self.cancel_contract(d.contract_id).await?;
            }
        }
        views
    }

    /// Adds the user's machine to network `name` as a peer of one node with a reachable
    /// endpoint (every other node routes it through that node) and returns its WireGuard
    /// configuration. Deploying the spec again keeps the peer.
    pub async fn network_access(
        &self,
        name: &str,
        opts: &DeployOptions,
        mut progress: impl FnMut(&Progress),
    ) -> Result<String, GridError> {
        // The deployments holding network `name`: one per node, all of one spec.
        let mut existing: BTreeMap<u32, Deployment> = BTreeMap::new();
        let mut nodes: BTreeMap<u32, Node> = BTreeMap::new();
        let mut metadata: Option<String> = None;
        for (contract, node_id) in self.active_contracts().await? {
            let Some(node) = self.ledger.node(node_id).await? else {
                continue;
            };
            let Ok(d) = self
                .node_call::<Deployment>(
                    &node,
                    "zos.deployment.get",
                    json!({"contract_id": contract.id}),
                )
                .await
            else {
                continue;
            };
            if d.get(name)
                .is_none_or(|w| w.workload_type != zos_types::WorkloadType::Network)
            {
                continue;
            }
            if metadata.as_ref().is_some_and(|m| *m != d.metadata)
                || existing.contains_key(&node_id)
            {
                return Err(GridError::Other(format!(
                    "network {name:?} is in several of your deployments; give it a unique name"
                )));
            }
            metadata = Some(d.metadata.clone());
            existing.insert(node_id, d);
            nodes.insert(node_id, node);
        }
        let Some(range) = existing.values().find_map(|d| {
            let Ok(zos_types::data::WorkloadData::Network(n)) = d.get(name)?.typed_data() else {
                return None;
            };
            match n.ip_range.get()? {
                (IpAddr::V4(r), 16) => Some(r),
                _ => None,
            }
        }) else {
            return Err(GridError::Other(format!(
                "no network named {name:?} in your deployments (see `zos deployments`)"
            )));
        };
        let targets: Vec<Node> = nodes.into_values().collect();
        let facts = self.mesh_facts(&targets).await?;
        let mesh_nodes = mesh_nodes(&facts, &existing, name, range);
        let Some(access_node) = mesh_nodes.iter().find(|n| n.endpoint.is_some()) else {
            return Err(GridError::Other(format!(
                "network {name:?}: none of its nodes reports a reachable endpoint"
            )));
        };
        let mut access = existing_access(&existing, name, range);
        let mut taken: Vec<Ipv4Addr> = access.iter().map(|a| a.subnet).collect();
        taken.extend(
            mesh_nodes
                .iter()
                .filter_map(|n| n.previous.as_ref().map(|p| p.subnet)),
        );
        let subnet = mesh::free_subnet(range, &taken)
            .ok_or_else(|| GridError::Other(format!("network {name:?}: no free /24 left")))?;
        let key = mesh::generate_key();
        access.push(mesh::AccessPeer {
            node_id: access_node.node_id,
            subnet,
            public_key: mesh::public_key(&key).map_err(GridError::Other)?,
        });
        let data = mesh::compute(name, range, &mesh_nodes, &[], &access)
            .map_err(|e| GridError::Other(e.to_string()))?;
        let via = &data[&access_node.node_id];
        let node_key = mesh::public_key(via["wireguard_private_key"].as_str().unwrap_or_default())
            .map_err(GridError::Other)?;
        let endpoint = std::net::SocketAddr::new(
            access_node
                .endpoint
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            u16::try_from(via["wireguard_listen_port"].as_u64().unwrap_or(0)).unwrap_or(0),
        );
        let mut planned = Vec::new();
        for node in &targets {
            let (Some(current), Some(v)) = (existing.get(&node.id), data.get(&node.id)) else {
                continue;
            };
            let mut v = v.clone();
            // A network with a Mycelium instance keeps it (and its key).
            if mesh::previous_mycelium_key(Some(current), name).is_some() {
                mesh::with_mycelium(&mut v, Some(current), name);
            }
            planned.push((node.clone(), updated(current, name, v), true));
        }
        self.send_all(planned, opts, &mut progress).await?;
        Ok(mesh::access_config(
            &key,
            subnet,
            range,
            &node_key,
            &endpoint.to_string(),
        ))
    }

    /// Each node's reachable endpoint and used WireGuard ports.
    async fn mesh_facts(&self, targets: &[Node]) -> Result<Vec<Facts>, GridError> {
        let mut facts = Vec::new();
        for node in targets {
            let ports: Vec<u16> = self
                .node_call(node, "zos.network.list_wg_ports", Value::Null)
                .await?;
            let interfaces: Value = match self
                .node_call(node, "zos.network.endpoints", Value::Null)
                .await
            {
                Ok(v) => v,
                Err(GridError::Rmb(RmbError::Remote { code: 404, .. })) => {
                    return Err(GridError::Node {
                        node: node.id,
                        message: "it cannot run private networks (no zos.network.endpoints: the node needs root, /dev/net/tun and iproute2)".into(),
                    });
                }
                Err(e) => return Err(e),
            };
            facts.push((node.id, endpoint_of(&interfaces), ports));
        }
        Ok(facts)
    }

    /// Sends every deployment (new contracts or updates), then waits for every node; failed
    /// workloads are listed per node, new contracts with failures canceled.
    async fn send_all(
        &self,
        planned: Vec<(Node, Deployment, bool)>,
        opts: &DeployOptions,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<Vec<DeploymentView>, GridError> {
        let mut sent: Vec<(Node, Deployment, bool)> = Vec::new();
        for (node, d, update) in planned {
            self.ensure_names(&d).await?;
            let d = self.send(&node, d, update).await?;
            sent.push((node, d, update));
        }
        let mut views = Vec::new();
        let mut errors = Vec::new();
        for (node, d, update) in &sent {
            let view = self
                .wait(node, d, opts.wait, &mut |p: &Progress| {
                    progress(&Progress {
                        workloads: p
                            .workloads
                            .iter()
                            .map(|(n, t, s, m)| {
                                (format!("node {}/{n}", node.id), t.clone(), *s, m.clone())
                            })
                            .collect(),
                    })
                })
                .await?;
            let failed = failures(d, &view.deployment, self.refusals(node, d, &view).await);
            if !failed.is_empty() && !update && !opts.keep_on_error {
                let _ = self.cancel_contract(d.contract_id).await;
            }
            errors.extend(
                failed
                    .into_iter()
                    .map(|(w, m)| (format!("node {} {w}", node.id), m)),
            );
            views.push(view);
        }
        if !errors.is_empty() {
            return Err(GridError::Failed {
                contract: sent.first().map_or(0, |(_, d, _)| d.contract_id),
                errors,
                outcome: if opts.keep_on_error {
                    "kept as asked (--keep-on-error); fix the spec and deploy it again".into()
                } else {
                    "new contracts whose workloads failed were canceled; updated ones keep the new definition: fix the spec and deploy it again".into()
                },
            });
        }
        Ok(views)
    }
}

/// `(node id, endpoint, used WireGuard ports)`.
type Facts = (u32, Option<IpAddr>, Vec<u16>);

fn mesh_nodes(
    facts: &[Facts],
    existing: &BTreeMap<u32, Deployment>,
    name: &str,
    range: Ipv4Addr,
) -> Vec<MeshNode> {
    facts
        .iter()
        .map(|(id, endpoint, ports)| {
            let previous = existing
                .get(id)
                .and_then(|d| mesh::previous_of(d, name, range));
            // The node's own port is not another's.
            let used = ports
                .iter()
                .copied()
                .filter(|p| previous.as_ref().is_none_or(|prev| prev.port != *p))
                .collect();
            MeshNode {
                node_id: *id,
                endpoint: *endpoint,
                used_ports: used,
                previous,
            }
        })
        .collect()
}

/// The access peers the current deployments hold for network `name`.
fn existing_access(
    existing: &BTreeMap<u32, Deployment>,
    name: &str,
    range: Ipv4Addr,
) -> Vec<mesh::AccessPeer> {
    let subnets: Vec<Ipv4Addr> = existing
        .values()
        .filter_map(|d| mesh::previous_of(d, name, range).map(|p| p.subnet))
        .collect();
    existing
        .iter()
        .filter_map(|(id, d)| Some((*id, d.get(name)?.data.clone())))
        .flat_map(|(id, data)| mesh::access_peers_of(id, &data, &subnets))
        .collect()
}

/// `current` as its next version with network `name`'s data replaced by `data` (other
/// workloads keep their version, so the node leaves them alone).
fn updated(current: &Deployment, name: &str, data: Value) -> Deployment {
    let mut d = current.clone();
    d.version = current.version.wrapping_add(1);
    d.signature_requirement.signatures.clear();
    for w in &mut d.workloads {
        w.result = Default::default();
        if w.name == name && w.data != data {
            w.data = data.clone();
            w.version = d.version;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_prefer_ipv4() {
        let v = json!({"eth0": ["2001:db8::2/64", "198.18.0.2/24"], "eth1": []});
        assert_eq!(endpoint_of(&v), Some("198.18.0.2".parse().unwrap()));
        let v6 = json!({"eth0": ["2001:db8::2/64"]});
        assert_eq!(endpoint_of(&v6), Some("2001:db8::2".parse().unwrap()));
        assert_eq!(endpoint_of(&json!({})), None);
        assert_eq!(endpoint_of(&json!("x")), None);
    }
}
