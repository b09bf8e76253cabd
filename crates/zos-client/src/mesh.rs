//! The WireGuard mesh of a private network, computed by the client as upstream's clients do
//! (`docs/internals/network/mesh.md`): a key pair per node resource, a /24 of the network's
//! /16 per node, a listen port free on each node (from `zos.network.list_wg_ports`), and for
//! every node a peer per other node with allowed IPs = that node's subnet and its WireGuard
//! address `100.64.X.Y/32`, and its endpoint when it has a reachable address. What a node
//! already has (subnet, key, port) is kept on updates, so unchanged tunnels stay up.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine as _;
use serde_json::{Value, json};
use zos_types::Deployment;
use zos_types::data::WorkloadData;

/// The first port tried for a new node resource (upstream's usual WireGuard ports start here).
pub const FIRST_PORT: u16 = 3011;

/// What the client knows about one node of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNode {
    /// Node id.
    pub node_id: u32,
    /// The address peers reach it at (None: it is hidden and only initiates).
    pub endpoint: Option<IpAddr>,
    /// WireGuard ports already used on the node (by any twin).
    pub used_ports: Vec<u16>,
    /// What its current deployment holds for this network.
    pub previous: Option<NodeNet>,
}

/// One node's part of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNet {
    /// Its /24 (network address).
    pub subnet: Ipv4Addr,
    /// Its private key (base64).
    pub private_key: String,
    /// Its listen port.
    pub port: u16,
}

/// A machine outside the grid (the user's, `zos network access`) that reaches the network
/// through one node: a peer of that node only; every other node routes its subnet through
/// the access node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPeer {
    /// The node it connects to.
    pub node_id: u32,
    /// Its /24 in the range (network address).
    pub subnet: Ipv4Addr,
    /// Its public key (base64).
    pub public_key: String,
}

/// The access peers a node's network data holds: peers whose subnet is none of `node_subnets`.
pub fn access_peers_of(node_id: u32, data: &Value, node_subnets: &[Ipv4Addr]) -> Vec<AccessPeer> {
    data["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let subnet: Ipv4Addr = p["subnet"].as_str()?.strip_suffix("/24")?.parse().ok()?;
            if node_subnets.contains(&subnet) {
                return None;
            }
            Some(AccessPeer {
                node_id,
                subnet,
                public_key: p["wireguard_public_key"].as_str()?.to_string(),
            })
        })
        .collect()
}

/// The lowest /24 of `range` (from .2) that no node and no access peer holds.
pub fn free_subnet(range: Ipv4Addr, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let o = range.octets();
    (2u8..=254)
        .map(|x| Ipv4Addr::new(o[0], o[1], x, 0))
        .find(|s| !taken.contains(s))
}

/// The WireGuard configuration (wg-quick format) of an access peer.
pub fn access_config(
    private_key: &str,
    subnet: Ipv4Addr,
    range: Ipv4Addr,
    node_public_key: &str,
    endpoint: &str,
) -> String {
    format!(
        "[Interface]\nAddress = {}/32\nPrivateKey = {private_key}\n\n[Peer]\nPublicKey = {node_public_key}\nAllowedIPs = {range}/16, 100.64.0.0/16\nEndpoint = {endpoint}\nPersistentKeepalive = 25\n",
        wg_ip(subnet)
    )
}

/// Why a mesh cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// Nobody can initiate towards anybody.
    #[error(
        "network {network}: no node has a reachable endpoint (at least one node must report an address)"
    )]
    NoEndpoint {
        /// The network.
        network: String,
    },
    /// Two hidden nodes cannot reach each other directly.
    #[error(
        "network {network}: nodes {a} and {b} both lack a reachable endpoint, so they cannot reach each other"
    )]
    BothHidden {
        /// The network.
        network: String,
        /// A node.
        a: u32,
        /// Another.
        b: u32,
    },
    /// The /16 has no /24 left.
    #[error("network {0}: no free /24 subnet left in its range")]
    NoSubnet(String),
    /// The node has no port left.
    #[error("network {network}: node {node} has no free WireGuard port")]
    NoPort {
        /// The network.
        network: String,
        /// The node.
        node: u32,
    },
}

/// A fresh WireGuard private key (base64 of 32 random bytes, clamped by X25519 on use).
pub fn generate_key() -> String {
    let s = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
    base64::engine::general_purpose::STANDARD.encode(s.to_bytes())
}

/// Gives network data `data` (of workload `name`) a Mycelium instance: the key it had in
/// `previous` (the node's current deployment) when it had one, so the network keeps its /64
/// and its VMs their addresses, else a new random 32-byte key.
pub fn with_mycelium(data: &mut Value, previous: Option<&Deployment>, name: &str) {
    let key = previous_mycelium_key(previous, name).unwrap_or_else(|| {
        let k = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
        hex::encode(k.to_bytes())
    });
    data["mycelium"] = json!({"hex_key": key, "peers": []});
}

/// The hex Mycelium key network workload `name` has in `previous`, if any.
pub fn previous_mycelium_key(previous: Option<&Deployment>, name: &str) -> Option<String> {
    let w = previous?.get(name)?;
    let Ok(WorkloadData::Network(n)) = w.typed_data() else {
        return None;
    };
    n.mycelium
        .filter(|m| m.hex_key.0.len() == 32)
        .map(|m| hex::encode(&m.hex_key.0))
}

/// The base64 public key of a base64 private key.
pub fn public_key(private_b64: &str) -> Result<String, String> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(private_b64.trim())
        .map_err(|e| format!("private key is not base64: {e}"))?;
    let k = <[u8; 32]>::try_from(b.as_slice())
        .map_err(|_| format!("private key must be 32 bytes, got {}", b.len()))?;
    let p = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k));
    Ok(base64::engine::general_purpose::STANDARD.encode(p.as_bytes()))
}

/// Upstream `wgIP(subnet)`: `100.64.<second octet>.<third octet>`.
pub fn wg_ip(subnet: Ipv4Addr) -> Ipv4Addr {
    let o = subnet.octets();
    Ipv4Addr::new(100, 64, o[1], o[2])
}

/// What `d` holds for network workload `name` within `range` (None when absent, when the range
/// changed, or when its data does not decode).
pub fn previous_of(d: &Deployment, name: &str, range: Ipv4Addr) -> Option<NodeNet> {
    let w = d.get(name)?;
    let Ok(WorkloadData::Network(n)) = w.typed_data() else {
        return None;
    };
    let (IpAddr::V4(r), 16) = n.ip_range.get()? else {
        return None;
    };
    let (IpAddr::V4(s), 24) = n.subnet.get()? else {
        return None;
    };
    if r != range || s.octets()[..2] != range.octets()[..2] || n.wireguard_private_key.is_empty() {
        return None;
    }
    Some(NodeNet {
        subnet: s,
        private_key: n.wireguard_private_key,
        port: n.wireguard_listen_port,
    })
}

/// Computes every node's network data for network `name` over `range` (a /16). Nodes in
/// `rotate` get a new key; the others keep what they had. Returns node id → upstream network
/// workload data.
pub fn compute(
    name: &str,
    range: Ipv4Addr,
    nodes: &[MeshNode],
    rotate: &[u32],
    access: &[AccessPeer],
) -> Result<BTreeMap<u32, Value>, MeshError> {
    // Access peers of nodes that left are dropped with them.
    let access: Vec<&AccessPeer> = access
        .iter()
        .filter(|a| nodes.iter().any(|n| n.node_id == a.node_id))
        .collect();
    if nodes.len() > 1 && nodes.iter().all(|n| n.endpoint.is_none()) {
        return Err(MeshError::NoEndpoint {
            network: name.into(),
        });
    }
    for (i, a) in nodes.iter().enumerate() {
        if let Some(b) = nodes[i + 1..]
            .iter()
            .find(|b| a.endpoint.is_none() && b.endpoint.is_none())
        {
            return Err(MeshError::BothHidden {
                network: name.into(),
                a: a.node_id,
                b: b.node_id,
            });
        }
    }
    // Subnets: kept ones first (unless two nodes claim the same), then the lowest free third
    // octet from 2 (.0 and .1 are left alone, as upstream's clients do).
    let mut taken: BTreeSet<u8> = access.iter().map(|a| a.subnet.octets()[2]).collect();
    let mut parts: Vec<Option<NodeNet>> = nodes
        .iter()
        .map(|n| {
            n.previous
                .clone()
                .filter(|p| taken.insert(p.subnet.octets()[2]))
        })
        .collect();
    let o = range.octets();
    for (n, part) in nodes.iter().zip(parts.iter_mut()) {
        let keep = part.take();
        let subnet = match &keep {
            Some(p) => p.subnet,
            None => {
                let x = (2u8..=254)
                    .find(|x| !taken.contains(x))
                    .ok_or_else(|| MeshError::NoSubnet(name.into()))?;
                taken.insert(x);
                Ipv4Addr::new(o[0], o[1], x, 0)
            }
        };
        let private_key = match &keep {
            Some(p) if !rotate.contains(&n.node_id) => p.private_key.clone(),
            _ => generate_key(),
        };
        let port = match &keep {
            Some(p) if p.port != 0 => p.port,
            _ => (FIRST_PORT..=u16::MAX)
                .find(|p| !n.used_ports.contains(p))
                .ok_or_else(|| MeshError::NoPort {
                    network: name.into(),
                    node: n.node_id,
                })?,
        };
        *part = Some(NodeNet {
            subnet,
            private_key,
            port,
        });
    }
    let parts: Vec<NodeNet> = parts.into_iter().flatten().collect();
    let mut out = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let me = &parts[i];
        let mut peers = Vec::new();
        for (j, other) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let p = &parts[j];
            let endpoint = other
                .endpoint
                .map(|ip| SocketAddr::new(ip, p.port).to_string())
                .unwrap_or_default();
            let mut allowed = vec![
                format!("{}/24", p.subnet),
                format!("{}/32", wg_ip(p.subnet)),
            ];
            // The access peers behind that node are reached through it.
            for a in access.iter().filter(|a| a.node_id == other.node_id) {
                allowed.push(format!("{}/24", a.subnet));
                allowed.push(format!("{}/32", wg_ip(a.subnet)));
            }
            peers.push(json!({
                "subnet": format!("{}/24", p.subnet),
                // Keys come from generate_key or a node's stored (validated) workload.
                "wireguard_public_key": public_key(&p.private_key).unwrap_or_default(),
                "allowed_ips": allowed,
                "endpoint": endpoint,
            }));
        }
        for a in access.iter().filter(|a| a.node_id == n.node_id) {
            peers.push(json!({
                "subnet": format!("{}/24", a.subnet),
                "wireguard_public_key": a.public_key,
                "allowed_ips": [format!("{}/24", a.subnet), format!("{}/32", wg_ip(a.subnet))],
                "endpoint": "",
            }));
        }
        out.insert(
            n.node_id,
            json!({
                "ip_range": format!("{range}/16"),
                "subnet": format!("{}/24", me.subnet),
                "wireguard_private_key": me.private_key,
                "wireguard_listen_port": me.port,
                "peers": peers,
            }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_types::{Workload, WorkloadType};

    #[test]
    fn a_mycelium_key_is_new_once_then_kept() {
        let mut v = json!({"subnet": "10.20.2.0/24"});
        with_mycelium(&mut v, None, "net");
        let key = v["mycelium"]["hex_key"].as_str().unwrap().to_string();
        assert_eq!(key.len(), 64);
        assert_eq!(v["mycelium"]["peers"], json!([]));
        let d = Deployment {
            workloads: vec![Workload {
                name: "net".into(),
                workload_type: WorkloadType::Network,
                data: json!({"ip_range": "10.20.0.0/16", "subnet": "10.20.2.0/24",
                    "wireguard_private_key": generate_key(), "wireguard_listen_port": 3011,
                    "peers": [], "mycelium": v["mycelium"].clone()}),
                ..Workload::default()
            }],
            ..Deployment::default()
        };
        assert_eq!(previous_mycelium_key(Some(&d), "net"), Some(key.clone()));
        let mut again = json!({});
        with_mycelium(&mut again, Some(&d), "net");
        assert_eq!(again["mycelium"]["hex_key"], json!(key), "kept");
        let mut other = json!({});
        with_mycelium(&mut other, Some(&d), "other");
        assert_ne!(
            other["mycelium"]["hex_key"],
            json!(key),
            "a new key for another network"
        );
    }

    fn node(id: u32, endpoint: Option<&str>, used: &[u16]) -> MeshNode {
        MeshNode {
            node_id: id,
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            used_ports: used.to_vec(),
            previous: None,
        }
    }

    const RANGE: Ipv4Addr = Ipv4Addr::new(10, 20, 0, 0);

    #[test]
    fn every_node_peers_with_every_other() {
        let nodes = [
            node(1, Some("198.18.0.1"), &[]),
            node(2, Some("198.18.0.2"), &[3011, 3012]),
            node(3, None, &[]),
        ];
        let m = compute("net", RANGE, &nodes, &[], &[]).unwrap();
        assert_eq!(m.len(), 3);
        let n2 = &m[&2];
        assert_eq!(n2["subnet"], "10.20.3.0/24");
        assert_eq!(
            n2["wireguard_listen_port"], 3013,
            "skips the node's used ports"
        );
        assert_eq!(m[&1]["wireguard_listen_port"], 3011);
        let peers = n2["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0]["subnet"], "10.20.2.0/24");
        assert_eq!(
            peers[0]["allowed_ips"],
            json!(["10.20.2.0/24", "100.64.20.2/32"])
        );
        assert_eq!(peers[0]["endpoint"], "198.18.0.1:3011");
        assert_eq!(peers[1]["endpoint"], "", "a hidden node has no endpoint");
        let pk1 = public_key(m[&1]["wireguard_private_key"].as_str().unwrap()).unwrap();
        assert_eq!(peers[0]["wireguard_public_key"], pk1);
        // Every node's data is a valid upstream network the node's checks accept.
        for d in m.values() {
            let n: zos_types::data::Network = serde_json::from_value(d.clone()).unwrap();
            let w = Workload {
                name: "net".into(),
                workload_type: WorkloadType::Network,
                data: d.clone(),
                ..Default::default()
            };
            w.typed_data().unwrap().validate(&[]).unwrap();
            assert_eq!(n.peers.len(), 2);
        }
    }

    #[test]
    fn updates_keep_subnets_keys_and_ports_and_rotate_on_demand() {
        let nodes = [
            node(1, Some("198.18.0.1"), &[]),
            node(2, Some("198.18.0.2"), &[]),
        ];
        let first = compute("net", RANGE, &nodes, &[], &[]).unwrap();
        let d = |v: &Value| Deployment {
            workloads: vec![Workload {
                name: "net".into(),
                workload_type: WorkloadType::Network,
                data: v.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        // Node 3 joins; node 1 is the one listed after it, the old ones keep their parts.
        let mut again = vec![node(3, Some("198.18.0.3"), &[])];
        for n in &nodes {
            let mut n = n.clone();
            n.previous = previous_of(&d(&first[&n.node_id]), "net", RANGE);
            n.used_ports = vec![3011];
            again.push(n);
        }
        let second = compute("net", RANGE, &again, &[2], &[]).unwrap();
        assert_eq!(second[&1]["subnet"], first[&1]["subnet"]);
        assert_eq!(second[&1]["wireguard_listen_port"], 3011, "kept");
        assert_eq!(
            second[&1]["wireguard_private_key"],
            first[&1]["wireguard_private_key"]
        );
        assert_ne!(
            second[&2]["wireguard_private_key"], first[&2]["wireguard_private_key"],
            "rotated"
        );
        assert_eq!(second[&2]["subnet"], first[&2]["subnet"]);
        assert_eq!(second[&3]["subnet"], "10.20.4.0/24", "a new /24");
        // A changed range forgets the old parts.
        assert_eq!(
            previous_of(&d(&first[&1]), "net", Ipv4Addr::new(10, 30, 0, 0)),
            None
        );
    }

    #[test]
    fn access_peers_join_through_their_node() {
        let nodes = [
            node(1, Some("198.18.0.1"), &[]),
            node(2, Some("198.18.0.2"), &[]),
        ];
        let user = generate_key();
        let access = [AccessPeer {
            node_id: 1,
            subnet: Ipv4Addr::new(10, 20, 2, 0),
            public_key: public_key(&user).unwrap(),
        }];
        let m = compute("net", RANGE, &nodes, &[], &access).unwrap();
        // The access peer's /24 is not given to a node.
        assert_eq!(m[&1]["subnet"], "10.20.3.0/24");
        let p1 = m[&1]["peers"].as_array().unwrap();
        assert_eq!(p1.len(), 2);
        assert_eq!(p1[1]["subnet"], "10.20.2.0/24");
        assert_eq!(p1[1]["endpoint"], "");
        // Node 2 reaches the user through node 1.
        let p2 = m[&2]["peers"].as_array().unwrap();
        assert_eq!(p2.len(), 1);
        assert_eq!(
            p2[0]["allowed_ips"],
            json!([
                "10.20.3.0/24",
                "100.64.20.3/32",
                "10.20.2.0/24",
                "100.64.20.2/32"
            ])
        );
        let subnets = [Ipv4Addr::new(10, 20, 3, 0), Ipv4Addr::new(10, 20, 4, 0)];
        assert_eq!(access_peers_of(1, &m[&1], &subnets), access.to_vec());
        assert!(access_peers_of(2, &m[&2], &subnets).is_empty());
        assert_eq!(
            free_subnet(RANGE, &[Ipv4Addr::new(10, 20, 2, 0)]),
            Some(Ipv4Addr::new(10, 20, 3, 0))
        );
        let cfg = access_config(&user, access[0].subnet, RANGE, "PK", "198.18.0.1:3011");
        assert!(cfg.contains("Address = 100.64.20.2/32"), "{cfg}");
        assert!(
            cfg.contains("AllowedIPs = 10.20.0.0/16, 100.64.0.0/16"),
            "{cfg}"
        );
        assert!(cfg.contains("Endpoint = 198.18.0.1:3011"), "{cfg}");
        // A node that left takes its access peers with it.
        let m = compute("net", RANGE, &nodes[1..], &[], &access).unwrap();
        assert!(m[&2]["peers"].as_array().unwrap().is_empty());
    }

    #[test]
    fn unreachable_meshes_are_refused() {
        let e = compute(
            "net",
            RANGE,
            &[node(1, None, &[]), node(2, None, &[])],
            &[],
            &[],
        );
        assert!(matches!(e, Err(MeshError::NoEndpoint { .. })), "{e:?}");
        let e = compute(
            "net",
            RANGE,
            &[
                node(1, None, &[]),
                node(2, Some("1.2.3.4"), &[]),
                node(3, None, &[]),
            ],
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "network net: nodes 1 and 3 both lack a reachable endpoint, so they cannot reach each other"
        );
        // A lone node needs no endpoint.
        assert!(compute("net", RANGE, &[node(1, None, &[])], &[], &[]).is_ok());
    }
}
