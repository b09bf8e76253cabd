//! The human-friendly deployment spec (YAML) and its translation to a wire [`Deployment`].
//!
//! ```yaml
//! name: backups            # the deployment's name; deploying it again updates it
//! description: nightly backups
//! node: 1                  # a node id, `any`, or a filter: { farm: 1, free_hru: 20GiB }
//! workloads:
//!   store:                 # workload name
//!     zdb: { size: 10GiB, mode: user, password: s3cret, public: false }
//!   scratch:
//!     volume: { size: 1GiB }
//! ```
//!
//! A private network spans several nodes:
//!
//! ```yaml
//! name: mesh
//! nodes: all               # every node of the grid, or a list: [1, 2, 3]
//! workloads:
//!   net:
//!     network: { ip_range: 10.20.0.0/16 }
//! ```
//!
//! Each node gets its own contract and deployment holding every workload of the spec; the
//! client computes the WireGuard mesh (keys, subnets, ports, peers; see [`crate::mesh`]).
//!
//! Every field is checked while parsing, so an error names the field path and the line.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zos_types::{Deployment, SignatureRequest, SignatureRequirement, Workload, WorkloadType};

use crate::size::deserialize_size;

/// A parsed spec.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Deployment name (letters, digits, `_`, `-`).
    pub name: SpecName,
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// Where to deploy.
    #[serde(default)]
    pub node: NodeSelector,
    /// Several nodes (one deployment each): `all` or a list of node ids.
    #[serde(default)]
    pub nodes: Option<NodeSet>,
    /// Workloads by name, in file order.
    pub workloads: Workloads,
}

/// Which node to deploy on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub enum NodeSelector {
    /// Any node with room.
    #[default]
    Any,
    /// This node id.
    Id(u32),
    /// The first node matching the filter.
    Filter(NodeFilter),
}

/// A node filter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFilter {
    /// Only nodes of this farm.
    #[serde(default)]
    pub farm: Option<u32>,
    /// At least this much free memory.
    #[serde(default, deserialize_with = "opt_size")]
    pub free_mru: Option<u64>,
    /// At least this much free SSD.
    #[serde(default, deserialize_with = "opt_size")]
    pub free_sru: Option<u64>,
    /// At least this much free HDD.
    #[serde(default, deserialize_with = "opt_size")]
    pub free_hru: Option<u64>,
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    deserialize_size(d).map(Some)
}

impl<'de> Deserialize<'de> for NodeSelector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeSelector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node id, `any`, or a filter such as { farm: 1, free_hru: 10GiB }")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeSelector, E> {
                u32::try_from(v)
                    .map(NodeSelector::Id)
                    .map_err(|_| E::custom("node id out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeSelector, E> {
                u32::try_from(v)
                    .map(NodeSelector::Id)
                    .map_err(|_| E::custom("node id out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeSelector, E> {
                match v {
                    "any" => Ok(NodeSelector::Any),
                    _ => Err(E::custom(format!(
                        "unknown node selector {v:?}: use a node id, `any` or a filter"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NodeSelector, A::Error> {
                NodeFilter::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(NodeSelector::Filter)
            }
        }
        d.deserialize_any(V)
    }
}

/// The nodes of a spec deployed on several nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NodeSet {
    /// Every node on the ledger.
    All,
    /// These node ids.
    Ids(Vec<u32>),
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NodeSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a list of node ids such as [1, 2, 3]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeSet, E> {
                match v {
                    "all" => Ok(NodeSet::All),
                    _ => Err(E::custom(format!(
                        "unknown value {v:?}: use `all` or a list of node ids"
                    ))),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<NodeSet, A::Error> {
                let mut ids: Vec<u32> = Vec::new();
                while let Some(id) = seq.next_element::<u32>()? {
                    if ids.contains(&id) {
                        return Err(de::Error::custom(format!("node {id} is listed twice")));
                    }
                    ids.push(id);
                }
                if ids.is_empty() {
                    return Err(de::Error::custom("the list of nodes is empty"));
                }
                ids.sort_unstable();
                Ok(NodeSet::Ids(ids))
            }
        }
        d.deserialize_any(V)
    }
}

/// A validated name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SpecName(pub String);

impl<'de> Deserialize<'de> for SpecName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(de::Error::custom(format!(
                "invalid name {s:?}: use 1 to 64 letters, digits, '_' or '-'"
            )));
        }
        Ok(SpecName(s))
    }
}

/// A workload name (upstream rules: letters, digits, `_`, at most 36).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WorkloadName(pub String);

impl<'de> Deserialize<'de> for WorkloadName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        zos_types::is_valid_name(&s)
            .map_err(|e| de::Error::custom(format!("invalid workload name {s:?}: {e}")))?;
        Ok(WorkloadName(s))
    }
}

/// The workloads, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Workloads(pub Vec<(WorkloadName, WorkloadSpec)>);

impl<'de> Deserialize<'de> for Workloads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Workloads;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a map of workload name to workload, e.g. `db: { zdb: { size: 1GiB } }`",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Workloads, A::Error> {
                let mut out: Vec<(WorkloadName, WorkloadSpec)> = Vec::new();
                while let Some(name) = map.next_key::<WorkloadName>()? {
                    if out.iter().any(|(n, _)| n == &name) {
                        return Err(de::Error::custom(format!(
                            "duplicate workload {:?}",
                            name.0
                        )));
                    }
                    let spec = map.next_value::<SingletonMap>()?.0;
                    out.push((name, spec));
                }
                if out.is_empty() {
                    return Err(de::Error::custom(
                        "a deployment needs at least one workload",
                    ));
                }
                Ok(Workloads(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads `zdb: {…}` as the enum variant (serde_norway's default is a YAML tag, `!zdb`).
#[derive(Deserialize)]
struct SingletonMap(#[serde(with = "serde_norway::with::singleton_map")] WorkloadSpec);

/// One workload, keyed by its type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// A ZeroDB namespace.
    Zdb(ZdbSpec),
    /// A persistent volume.
    Volume(SizeSpec),
    /// A VM disk.
    Zmount(SizeSpec),
    /// A private network over the deployment's nodes (the mesh is computed at deploy time).
    Network(NetworkSpec),
    /// A public IP for a VM (`network.public_ip` of a zmachine names it): `v4` reserves one
    /// of the farm's IPv4 addresses with the contract, `v6` takes the node's public /64.
    Ip(IpSpec),
    /// A web gateway serving NAME.<node domain> (`zos deploy` creates the name contract).
    GatewayName(GatewayNameSpec),
    /// A web gateway serving your own domain (pointed at the node's public IP).
    GatewayFqdn(GatewayFqdnSpec),
    /// Any upstream workload, data as upstream JSON.
    Raw(RawSpec),
}

/// `gateway-name:` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayNameSpec {
    /// The name (letters, digits, `-`, `_`): served as NAME.<node domain>.
    pub name: String,
    /// `http://IP[:PORT]` backends, or `IP:PORT` with `tls_passthrough`.
    pub backends: Vec<String>,
    /// Pass TLS through to the backends (routed by SNI) instead of terminating it.
    #[serde(default)]
    pub tls_passthrough: bool,
    /// A network of yours on the gateway node the backends are in.
    #[serde(default)]
    pub network: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// `gateway-fqdn:` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFqdnSpec {
    /// Your domain (its DNS must point at the gateway node).
    pub fqdn: String,
    /// `http://IP[:PORT]` backends, or `IP:PORT` with `tls_passthrough`.
    pub backends: Vec<String>,
    /// Pass TLS through to the backends (routed by SNI) instead of terminating it.
    #[serde(default)]
    pub tls_passthrough: bool,
    /// A network of yours on the gateway node the backends are in.
    #[serde(default)]
    pub network: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: String,
}

fn gateway_data(
    key: &str,
    value: &str,
    backends: &[String],
    tls_passthrough: bool,
    network: &Option<String>,
) -> Value {
    let mut v = json!({key: value, "tls_passthrough": tls_passthrough, "backends": backends});
    if let Some(n) = network {
        v["network"] = json!(n);
    }
    v
}

/// `network:` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The network's range, an IPv4 /16 (each node gets a /24 of it, as upstream's clients do).
    #[serde(deserialize_with = "deserialize_range")]
    pub ip_range: std::net::Ipv4Addr,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// A Mycelium instance in every network resource (a key per node, kept across deploys):
    /// VMs then take `network.mycelium` addresses.
    #[serde(default)]
    pub mycelium: bool,
}

fn deserialize_range<'de, D: Deserializer<'de>>(d: D) -> Result<std::net::Ipv4Addr, D::Error> {
    let s = String::deserialize(d)?;
    parse_range(&s).map_err(de::Error::custom)
}

/// An IPv4 /16 with its host bits clear (`10.20.0.0/16`).
pub fn parse_range(s: &str) -> Result<std::net::Ipv4Addr, String> {
    let (a, len) = s
        .split_once('/')
        .ok_or_else(|| format!("ip_range {s:?}: expected an IPv4 /16 such as 10.20.0.0/16"))?;
    let a: std::net::Ipv4Addr = a.parse().map_err(|e| format!("ip_range {s:?}: {e}"))?;
    if len != "16" {
        return Err(format!(
            "ip_range {s:?}: must be a /16 (nodes get /24 subnets, WireGuard addresses are 100.64.X.Y)"
        ));
    }
    let o = a.octets();
    if o[2] != 0 || o[3] != 0 {
        return Err(format!(
            "ip_range {s:?}: host bits set, use {}.{}.0.0/16",
            o[0], o[1]
        ));
    }
    Ok(a)
}

/// `ip:` fields (at least one of them true).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpSpec {
    /// One of the farm's public IPv4 addresses, reserved by the contract.
    #[serde(default)]
    pub v4: bool,
    /// The SLAAC address of the VM's public NIC in the node's public IPv6 /64.
    #[serde(default)]
    pub v6: bool,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// `zdb:` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZdbSpec {
    /// Maximum size.
    #[serde(deserialize_with = "deserialize_size")]
    pub size: u64,
    /// `user` (key-value) or `seq` (append, auto ids).
    #[serde(default)]
    pub mode: ZdbModeSpec,
    /// Namespace password.
    #[serde(default)]
    pub password: String,
    /// Readable by anyone (writes still need the password).
    #[serde(default)]
    pub public: bool,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// ZeroDB modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZdbModeSpec {
    /// Key-value.
    #[default]
    User,
    /// Sequential.
    Seq,
}

/// Fields of sized workloads (`volume:`, `zmount:`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeSpec {
    /// Size.
    #[serde(deserialize_with = "deserialize_size")]
    pub size: u64,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// `raw:` fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Upstream type name.
    #[serde(rename = "type")]
    pub workload_type: String,
    /// Upstream data JSON.
    pub data: Value,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// Errors reading a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// YAML syntax or a field error: the message names the field path and the line.
    #[error("{file}: {message}")]
    Invalid {
        /// The spec file.
        file: String,
        /// What and where.
        message: String,
    },
    /// The translated deployment is refused by the wire model's validation.
    #[error("{file}: workload {workload:?}: {message}")]
    Workload {
        /// The spec file.
        file: String,
        /// The workload.
        workload: String,
        /// Upstream's validation text.
        message: String,
    },
}

/// What a spec file holds: a human spec or a raw upstream deployment.
#[derive(Debug, Clone)]
pub enum SpecInput {
    /// A YAML spec.
    Spec(Box<Spec>),
    /// A deployment JSON document.
    Raw(Box<Deployment>),
}

/// Parses a spec file's text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<SpecInput, SpecError> {
    let invalid = |message: String| SpecError::Invalid {
        file: file.to_string(),
        message,
    };
    if text.trim_start().starts_with('{') {
        let d = Deployment::from_json(text.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        return Ok(SpecInput::Raw(Box::new(d)));
    }
    let spec: Spec = serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
    // Check the translation once, so upstream's rules surface here with the workload's name.
    let d = spec.to_deployment(1, None);
    for w in &d.workloads {
        if let Err(e) = w.typed_data().and_then(|data| data.validate(&d.workloads)) {
            return Err(SpecError::Workload {
                file: file.into(),
                workload: w.name.clone(),
                message: e.to_string(),
            });
        }
    }
    Ok(SpecInput::Spec(Box::new(spec)))
}

impl Spec {
    /// The names of the spec's networks with `mycelium: true`.
    pub fn mycelium_networks(&self) -> Vec<String> {
        self.workloads
            .0
            .iter()
            .filter_map(|(n, w)| match w {
                WorkloadSpec::Network(net) if net.mycelium => Some(n.0.clone()),
                _ => None,
            })
            .collect()
    }

    /// The spec's network workloads (name, range).
    pub fn networks(&self) -> Vec<(String, std::net::Ipv4Addr)> {
        self.workloads
            .0
            .iter()
            .filter_map(|(n, w)| match w {
                WorkloadSpec::Network(net) => Some((n.0.clone(), net.ip_range)),
                _ => None,
            })
            .collect()
    }

    /// Whether `zos deploy` takes the multi-node path (a network, or several nodes).
    pub fn is_mesh(&self) -> bool {
        self.nodes.is_some() || !self.networks().is_empty()
    }

    /// The metadata stored in the deployment and the contract: identifies it by name.
    pub fn metadata(&self) -> String {
        json!({"type": "zos", "name": self.name.0}).to_string()
    }

    /// Builds the deployment for `twin`. With `previous` (an update), the version is bumped,
    /// and workloads that did not change keep their version (so the node leaves them alone).
    pub fn to_deployment(&self, twin: u32, previous: Option<&Deployment>) -> Deployment {
        self.to_deployment_with(twin, previous, &std::collections::BTreeMap::new())
    }

    /// As [`Spec::to_deployment`], with the data of network workloads computed for one node
    /// (`networks`: workload name → upstream network data). A network without data gets a
    /// lone-node placeholder (the first /24, a fixed throwaway key), used to validate a spec.
    pub fn to_deployment_with(
        &self,
        twin: u32,
        previous: Option<&Deployment>,
        networks: &std::collections::BTreeMap<String, Value>,
    ) -> Deployment {
        let version = previous.map_or(0, |p| p.version + 1);
        let workloads = self
            .workloads
            .0
            .iter()
            .map(|(name, spec)| {
                let (workload_type, mut data, description) = spec.wire();
                if let Some(net) = networks.get(&name.0) {
                    data = net.clone();
                }
                let mut wl = Workload {
                    version,
                    name: name.0.clone(),
                    workload_type,
                    data,
                    description,
                    ..Default::default()
                };
                if let Some(old) = previous.and_then(|p| p.get(&name.0)) {
                    let same = old.workload_type == wl.workload_type
                        && old.description == wl.description
                        && old.typed_data().ok() == wl.typed_data().ok();
                    if same {
                        wl.version = old.version;
                    }
                }
                wl
            })
            .collect();
        Deployment {
            version,
            twin_id: twin,
            contract_id: previous.map_or(0, |p| p.contract_id),
            metadata: self.metadata(),
            description: self.description.clone(),
            signature_requirement: SignatureRequirement {
                requests: vec![SignatureRequest {
                    twin_id: twin,
                    required: true,
                    weight: 1,
                }],
                weight_required: 1,
                ..Default::default()
            },
            workloads,
            ..Default::default()
        }
    }
}

impl WorkloadSpec {
    fn wire(&self) -> (WorkloadType, Value, String) {
        match self {
            WorkloadSpec::Zdb(z) => (
                WorkloadType::Zdb,
                json!({"size": z.size, "mode": match z.mode { ZdbModeSpec::User => "user", ZdbModeSpec::Seq => "seq" },
                       "password": z.password, "public": z.public}),
                z.description.clone(),
            ),
            WorkloadSpec::Volume(s) => (
                WorkloadType::Volume,
                json!({"size": s.size}),
                s.description.clone(),
            ),
            WorkloadSpec::Zmount(s) => (
                WorkloadType::Zmount,
                json!({"size": s.size}),
                s.description.clone(),
            ),
            WorkloadSpec::Network(n) => {
                let o = n.ip_range.octets();
                (
                    WorkloadType::Network,
                    json!({"ip_range": format!("{}/16", n.ip_range),
                           "subnet": format!("{}.{}.2.0/24", o[0], o[1]),
                           // Validation only: deploys always carry a computed key.
                           "wireguard_private_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                           "wireguard_listen_port": 0, "peers": []}),
                    n.description.clone(),
                )
            }
            WorkloadSpec::Ip(i) => (
                WorkloadType::Ip,
                json!({"v4": i.v4, "v6": i.v6}),
                i.description.clone(),
            ),
            WorkloadSpec::GatewayName(g) => (
                WorkloadType::GatewayNameProxy,
                gateway_data("name", &g.name, &g.backends, g.tls_passthrough, &g.network),
                g.description.clone(),
            ),
            WorkloadSpec::GatewayFqdn(g) => (
                WorkloadType::GatewayFqdnProxy,
                gateway_data("fqdn", &g.fqdn, &g.backends, g.tls_passthrough, &g.network),
                g.description.clone(),
            ),
            WorkloadSpec::Raw(r) => (
                WorkloadType::parse(&r.workload_type),
                r.data.clone(),
                r.description.clone(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: backups\nnode: 3\nworkloads:\n  store:\n    zdb: { size: 10GiB, mode: seq, password: pw }\n  scratch:\n    volume:\n      size: 1GiB\n";

    fn spec(text: &str) -> Spec {
        match parse("t.yaml", text).unwrap() {
            SpecInput::Spec(s) => *s,
            SpecInput::Raw(_) => panic!("raw"),
        }
    }

    #[test]
    fn translates_to_a_valid_deployment() {
        let s = spec(GOOD);
        assert_eq!(s.node, NodeSelector::Id(3));
        let d = s.to_deployment(7, None);
        d.validate().unwrap();
        assert_eq!(d.workloads[0].name, "store");
        assert_eq!(d.workloads[0].data["size"], 10u64 << 30);
        assert_eq!(d.workloads[0].data["mode"], "seq");
        assert_eq!(d.workloads[1].workload_type, WorkloadType::Volume);
        assert_eq!(d.signature_requirement.requests[0].twin_id, 7);
    }

    #[test]
    fn ip_workloads_reserve_one_ipv4_each_with_v4() {
        let s = spec(
            "name: web\nnode: 1\nworkloads:\n  pub:\n    ip: { v4: true, v6: true }\n  pub6:\n    ip: { v6: true }\n",
        );
        let d = s.to_deployment(7, None);
        d.validate().unwrap();
        assert_eq!(d.workloads[0].workload_type, WorkloadType::Ip);
        assert_eq!(d.workloads[0].data, json!({"v4": true, "v6": true}));
        assert_eq!(crate::grid::public_ipv4_count(&d), 1);
        let e = err("name: web\nworkloads:\n  pub:\n    ip: {}\n");
        assert!(e.contains("public ip workload with no selections"), "{e}");
        let e = err("name: web\nworkloads:\n  pub:\n    ip: { v4: yes please }\n");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn update_bumps_only_changed_workloads() {
        let mut old = spec(GOOD).to_deployment(7, None);
        old.contract_id = 12;
        let changed = GOOD.replace("size: 1GiB", "size: 2GiB");
        let mut new = spec(&changed).to_deployment(7, Some(&old));
        assert_eq!((new.version, new.contract_id), (1, 12));
        assert_eq!(new.workloads[0].version, 0);
        assert_eq!(new.workloads[1].version, 1);
        let ops = old.upgrade(&mut new).unwrap();
        assert_eq!(
            ops,
            vec![("scratch".to_string(), zos_types::UpgradeOp::Update)]
        );
    }

    fn err(text: &str) -> String {
        parse("t.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let e = err("name: a\nworkloads:\n  db:\n    zdb:\n      sise: 1GiB\n");
        assert!(e.contains("sise") && e.contains("line 5"), "{e}");
        let e = err("name: a\nworkloads:\n  db:\n    zdb:\n      size: 10 GiX\n");
        assert!(
            e.contains("workloads.db.zdb.size")
                && e.contains("unknown size unit")
                && e.contains("line 5"),
            "{e}"
        );
        let e = err("name: a\nworkloads:\n  db:\n    zbd: { size: 1 }\n");
        assert!(e.contains("zbd") && e.contains("line 4"), "{e}");
        let e = err("name: a\nworkloads:\n  bad-name:\n    volume: { size: 1 }\n");
        assert!(e.contains("bad-name") && e.contains("line 3"), "{e}");
        let e = err("name: a\nnode: somewhere\nworkloads:\n  v:\n    volume: { size: 1 }\n");
        assert!(e.contains("node") && e.contains("line 2"), "{e}");
        let e = err("name: a\nworkloads:\n  v:\n    volume: { size: 0 }\n");
        assert!(e.contains("\"v\"") && e.contains("invalid size"), "{e}");
        for size in ["-1GiB", "-5", "-1.5"] {
            let e = err(&format!(
                "name: a\nworkloads:\n  v:\n    volume: {{ size: {size} }}\n"
            ));
            assert!(
                e.contains("size must not be negative") && !e.contains("unknown size unit"),
                "{size}: {e}"
            );
        }
        let e = err("name: a\nworkloads:\n  v:\n    zdb: { size: 1GiB, mode: fast }\n");
        assert!(
            e.contains("mode") && e.contains("fast") && e.contains("line 4"),
            "{e}"
        );
    }

    #[test]
    fn shipped_examples_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let s = spec(&text);
                s.to_deployment(1, None).validate().unwrap();
                seen += 1;
            }
        }
        assert!(seen >= 3, "examples missing in {}", dir.display());
    }

    #[test]
    fn gateways_translate_to_upstream_data() {
        let s = spec(
            "name: gw\nworkloads:\n  a:\n    gateway-name:\n      name: site\n      backends: [\"http://10.1.2.3:80\"]\n      network: net\n  b:\n    gateway-fqdn:\n      fqdn: x.example.org\n      tls_passthrough: true\n      backends: [\"10.1.2.3:443\"]\n",
        );
        let d = s.to_deployment(1, None);
        assert_eq!(d.workloads[0].workload_type, WorkloadType::GatewayNameProxy);
        assert_eq!(
            d.workloads[0].data,
            json!({"name": "site", "tls_passthrough": false, "backends": ["http://10.1.2.3:80"], "network": "net"})
        );
        assert_eq!(
            d.workloads[1].data,
            json!({"fqdn": "x.example.org", "tls_passthrough": true, "backends": ["10.1.2.3:443"]})
        );
        d.validate().unwrap();
        // Upstream's backend rules apply when the spec is read.
        let e = err(
            "name: gw\nworkloads:\n  a:\n    gateway-name:\n      name: site\n      backends: [\"http://127.0.0.1\"]\n",
        );
        assert!(
            e.contains("invalid ip address in backend: 127.0.0.1"),
            "{e}"
        );
    }

    #[test]
    fn networks_over_several_nodes() {
        let s = spec(
            "name: m\nnodes: [3, 1]\nworkloads:\n  net:\n    network: { ip_range: 10.20.0.0/16 }\n",
        );
        assert_eq!(s.nodes, Some(NodeSet::Ids(vec![1, 3])));
        assert!(s.is_mesh());
        assert_eq!(
            s.networks(),
            vec![("net".to_string(), std::net::Ipv4Addr::new(10, 20, 0, 0))]
        );
        let s = spec(
            "name: m\nnodes: all\nworkloads:\n  net:\n    network: { ip_range: 10.20.0.0/16 }\n",
        );
        assert_eq!(s.nodes, Some(NodeSet::All));
        for (bad, want) in [
            ("nodes: some", "unknown value"),
            ("nodes: []", "empty"),
            ("nodes: [1, 1]", "twice"),
        ] {
            let e = err(&format!(
                "name: m\n{bad}\nworkloads:\n  v:\n    volume: {{ size: 1 }}\n"
            ));
            assert!(e.contains(want) && e.contains("line 2"), "{bad}: {e}");
        }
        for (range, want) in [
            ("10.20.0.0/24", "must be a /16"),
            ("10.20.1.0/16", "host bits"),
            ("fd00::/16", "ip_range"),
            ("10.20.0.0", "expected an IPv4 /16"),
        ] {
            let e = err(&format!(
                "name: m\nworkloads:\n  net:\n    network: {{ ip_range: \"{range}\" }}\n"
            ));
            assert!(e.contains(want) && e.contains("line 4"), "{range}: {e}");
        }
    }

    #[test]
    fn raw_json_is_accepted() {
        let raw = r#"{"twin_id": 1, "workloads": []}"#;
        assert!(matches!(parse("d.json", raw).unwrap(), SpecInput::Raw(_)));
    }
}
