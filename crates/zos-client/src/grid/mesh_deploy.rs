//! `zos deploy` of a spec over several nodes, or holding a private network: one contract and
//! one deployment per node, the network's mesh computed from what the nodes report (their
//! endpoint address via `zos.network.endpoints`, their used ports via
//! `zos.network.list_wg_ports`) and what they already hold; nodes added get a contract, nodes
//! removed lose theirs, and every remaining node is updated with the new peers.

use std::collections::BTreeMap;
use std::net::IpAddr;

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
            let mut facts = Vec::new();
            for node in &targets {
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
            for (name, range) in &networks {
                let nodes: Vec<MeshNode> = facts
                    .iter()
                    .map(|(id, endpoint, ports)| {
                        let previous = existing
                            .get(id)
                            .and_then(|d| mesh::previous_of(d, name, *range));
                        // The node's own port counts as used by another only if it is not ours.
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
                    .collect();
                let data = mesh::compute(name, *range, &nodes, &opts.rotate_keys)
                    .map_err(|e| GridError::Other(e.to_string()))?;
                for (node, v) in data {
                    per_node.entry(node).or_default().insert(name.clone(), v);
                }
            }
        }
        // Send everything, then wait for every node.
        let empty = BTreeMap::new();
        let mut sent: Vec<(Node, Deployment, bool)> = Vec::new();
        for node in &targets {
            let previous = existing.get(&node.id);
            let d = spec.to_deployment_with(
                self.twin,
                previous,
                per_node.get(&node.id).unwrap_or(&empty),
            );
            let update = previous.is_some();
            let d = self.send(node, d, update).await?;
            sent.push((node.clone(), d, update));
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
