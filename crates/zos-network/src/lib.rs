//! Network primitives for the zos node: the `network` primitive (a network resource per
//! network workload: namespace, bridge, userspace WireGuard, see [`resource`]) and the node
//! API's **views** of network, public IP and VM workloads, as [`ApiCommand`]s over the stored
//! deployments, so that the agent itself knows no workload type.
//!
//! Commands (upstream `pkg/zos_api` names and shapes):
//! - `zos.network.list_wg_ports`: WireGuard ports of network workloads holding resources
//!   (state ok or paused) on this node, every twin's (the port space is the node's), sorted;
//! - `zos.network.list_public_ips`: IPs of `ip`/`ipv4` workloads in state ok, every twin's;
//! - `zos.network.list_private_ips {network_name}`: the caller's VM addresses in that network;
//! - `zos.network.endpoints` (a zos extension, with the `network` primitive): the interfaces of
//!   the node's **network plane** (where the WireGuard sockets live) and their global
//!   addresses, `{NAME: ["198.18.0.2/24", …]}`, so a client can choose WireGuard endpoints.
//!   The agent's `zos.network.interfaces` reports the host's addresses, which differ when the
//!   plane is a namespace (`zos up --nodes N`).
#![forbid(unsafe_code)]

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use zos_primitive::{ApiCommand, NodeView, PrimitiveRegistry};
use zos_types::data::{PublicIpResult, WorkloadData};
use zos_types::{Deployment, ResultState, Workload, WorkloadType};

pub mod ip;
pub mod mycelium;
pub mod names;
pub mod ndmz;
pub mod public;
pub mod resource;
pub mod wg;

pub use names::deployment_names;
pub use public::{ContractIps, Public, ReservedIp, register_public_ips};
pub use resource::{NetConfig, Networks, NrNames};

/// Adds the `network` primitive (network resources on this node's network plane `cfg`).
pub fn register_networks(registry: &mut PrimitiveRegistry, cfg: NetConfig) -> Arc<Networks> {
    let n = Networks::new(cfg.clone());
    registry.register(n.clone());
    registry.register(Arc::new(resource::NetworksLight(n.clone())));
    registry.add_command("zos.network.endpoints", Arc::new(Interfaces(cfg)));
    // Read by the farm's twin through the node's `zos.admin.diag.*` authorisation.
    registry.add_command("zos.admin.diag.wg", Arc::new(WgDiag(n.clone())));
    registry.add_lifecycle(Arc::new(PublicSide(n.clone())));
    registry.add_feature("wireguard");
    n
}

/// `zos.admin.diag.wg`: WireGuard devices and peers with handshake ages.
struct WgDiag(Arc<Networks>);

#[async_trait]
impl ApiCommand for WgDiag {
    async fn call(
        &self,
        _node: &dyn NodeView,
        _twin: u32,
        _payload: Value,
    ) -> Result<Value, String> {
        Ok(self.0.wg_status().await)
    }
}

/// The network set's lifecycle: applies the node's public config in place when it changes.
struct PublicSide(Arc<Networks>);

#[async_trait]
impl zos_primitive::Lifecycle for PublicSide {
    fn name(&self) -> &str {
        "network"
    }

    async fn public_config(&self, config: Option<&Value>) -> Result<(), String> {
        self.0.set_public_config(config).await
    }

    /// Failing while a WireGuard peer that answered once has gone quiet (the node's
    /// self-check then reports `primitives.network error: …` as a reason to be degraded).
    async fn health(&self) -> zos_primitive::Health {
        let stale = self.0.stale_peers(resource::STALE_HANDSHAKE).await;
        if stale.is_empty() {
            zos_primitive::Health::ok()
        } else {
            zos_primitive::Health::failing(format!(
                "no WireGuard handshake for over {} s: {}",
                resource::STALE_HANDSHAKE.as_secs(),
                stale.join("; ")
            ))
        }
    }
}

/// Whether network resources can be made here: root (namespaces, links), `/dev/net/tun` and
/// iproute2's `ip`. The error says what is missing.
pub fn network_support() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Err("private networks need root (network namespaces, TUN devices)".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("private networks need /dev/net/tun".into());
    }
    let has_ip = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("ip").is_file()))
        .unwrap_or(false);
    if !has_ip {
        return Err("private networks need iproute2's `ip` (apt-get install iproute2)".into());
    }
    Ok(())
}

/// Adds the network views to the node API.
pub fn register(registry: &mut PrimitiveRegistry) {
    registry.add_command("zos.network.list_wg_ports", Arc::new(WgPorts));
    registry.add_command("zos.network.list_public_ips", Arc::new(PublicIps));
    registry.add_command("zos.network.list_private_ips", Arc::new(PrivateIps));
}

fn workloads(node: &dyn NodeView, twin: Option<u32>) -> Result<Vec<Workload>, String> {
    Ok(node
        .deployments(twin)?
        .into_iter()
        .flat_map(|d: Deployment| d.workloads)
        .collect())
}

/// `zos.network.endpoints`: what `ip -j addr` shows on the node's network plane, minus
/// loopback, the bridges and veths the network resources made (`b-`, `v-`), and addresses
/// that are not global (link-local, host).
struct Interfaces(NetConfig);

#[async_trait]
impl ApiCommand for Interfaces {
    async fn call(
        &self,
        _node: &dyn NodeView,
        _twin: u32,
        _payload: Value,
    ) -> Result<Value, String> {
        let out = ip::ip(self.0.node_netns.as_deref(), &["-j", "addr", "show"])
            .await
            .map_err(|e| e.to_string())?;
        interfaces_of(&out)
    }
}

#[derive(Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Deserialize)]
struct IpAddrInfo {
    local: String,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

/// Interfaces and their global addresses from `ip -j addr show` output.
pub fn interfaces_of(ip_json: &str) -> Result<Value, String> {
    let links: Vec<IpLink> = serde_json::from_str(ip_json)
        .map_err(|e| format!("unexpected `ip -j addr` output: {e}"))?;
    let mut out = serde_json::Map::new();
    for l in links {
        if l.ifname == "lo" || l.ifname.starts_with("b-") || l.ifname.starts_with("v-") {
            continue;
        }
        let ips: Vec<String> = l
            .addr_info
            .iter()
            .filter(|a| a.scope == "global")
            .map(|a| format!("{}/{}", a.local, a.prefixlen))
            .collect();
        if !ips.is_empty() {
            out.insert(l.ifname, json!(ips));
        }
    }
    Ok(Value::Object(out))
}

/// `zos.network.list_wg_ports`.
struct WgPorts;

#[async_trait]
impl ApiCommand for WgPorts {
    async fn call(
        &self,
        node: &dyn NodeView,
        _twin: u32,
        _payload: Value,
    ) -> Result<Value, String> {
        let mut ports: Vec<u16> = workloads(node, None)?
            .iter()
            .filter(|w| w.result.state.is_okay())
            .filter_map(|w| match w.typed_data() {
                Ok(WorkloadData::Network(n)) => Some(n.wireguard_listen_port),
                _ => None,
            })
            .filter(|p| *p != 0)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(json!(ports))
    }
}

/// `zos.network.list_public_ips`.
struct PublicIps;

#[async_trait]
impl ApiCommand for PublicIps {
    async fn call(
        &self,
        node: &dyn NodeView,
        _twin: u32,
        _payload: Value,
    ) -> Result<Value, String> {
        let ips: Vec<String> = workloads(node, None)?
            .iter()
            .filter(|w| matches!(w.workload_type, WorkloadType::Ip | WorkloadType::Ipv4))
            .filter(|w| w.result.state == ResultState::Ok)
            .filter_map(|w| serde_json::from_value::<PublicIpResult>(w.result.data.clone()).ok())
            .filter_map(|r| serde_json::to_value(r.ip).ok())
            .filter_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_string))
            .collect();
        Ok(json!(ips))
    }
}

#[derive(Deserialize)]
struct NetworkNameArg {
    network_name: String,
}

/// `zos.network.list_private_ips {network_name}`: only the caller's VMs.
struct PrivateIps;

#[async_trait]
impl ApiCommand for PrivateIps {
    async fn call(&self, node: &dyn NodeView, twin: u32, payload: Value) -> Result<Value, String> {
        let a: NetworkNameArg =
            serde_json::from_value(payload).map_err(|e| format!("invalid request payload: {e}"))?;
        let mut out = Vec::new();
        for w in workloads(node, Some(twin))? {
            let interfaces = match w.typed_data() {
                Ok(WorkloadData::Zmachine(m)) => m.network.interfaces,
                Ok(WorkloadData::ZmachineLight(m)) => m.network.interfaces,
                _ => continue,
            };
            for i in interfaces
                .into_iter()
                .filter(|i| i.network == a.network_name)
            {
                if let Some(ip) = serde_json::to_value(i.ip)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .filter(|s| !s.is_empty())
                {
                    out.push(ip);
                }
            }
        }
        Ok(json!(out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The stored deployments, as the agent's store would hand them out.
    struct Stored(Vec<Deployment>);

    impl NodeView for Stored {
        fn deployments(&self, twin: Option<u32>) -> Result<Vec<Deployment>, String> {
            Ok(self
                .0
                .iter()
                .filter(|d| twin.is_none_or(|t| d.twin_id == t))
                .cloned()
                .collect())
        }
    }

    fn wl(name: &str, t: WorkloadType, data: Value, state: ResultState) -> Workload {
        let mut w = Workload {
            name: name.into(),
            workload_type: t,
            data,
            ..Workload::default()
        };
        w.result.state = state;
        w
    }

    fn node(state: ResultState) -> Stored {
        let mut public = wl("pub", WorkloadType::Ip, json!({"v4": true}), state);
        public.result.data = json!({"ip": "185.1.1.5/24"});
        Stored(vec![Deployment {
            twin_id: 3,
            contract_id: 1,
            workloads: vec![
                wl(
                    "net",
                    WorkloadType::Network,
                    json!({"ip_range": "10.1.0.0/16", "subnet": "10.1.1.0/24",
                           "wireguard_listen_port": 3011}),
                    state,
                ),
                public,
                wl(
                    "vm",
                    WorkloadType::Zmachine,
                    json!({"flist": "x", "network": {"interfaces": [{"network": "net", "ip": "10.1.1.2"}]},
                           "compute_capacity": {"cpu": 1, "memory": 268435456}, "size": 0,
                           "entrypoint": "/sbin/init"}),
                    state,
                ),
            ],
            ..Deployment::default()
        }])
    }

    async fn call(node: &Stored, name: &str, twin: u32, payload: Value) -> Result<Value, String> {
        let mut r = PrimitiveRegistry::new();
        register(&mut r);
        r.command(name).unwrap().call(node, twin, payload).await
    }

    #[test]
    fn interfaces_keep_global_addresses_of_the_node_plane() {
        let text = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
            {"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.2","prefixlen":24,"scope":"global"},
                {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
            {"ifname":"b-HFzUQHtqE2iA5","addr_info":[]},{"ifname":"v-x","addr_info":[]}]"#;
        assert_eq!(
            interfaces_of(text).unwrap(),
            json!({"eth0": ["198.18.0.2/24"]})
        );
        assert!(interfaces_of("not json").is_err());
    }

    #[tokio::test]
    async fn views_come_from_stored_workloads() {
        let init = node(ResultState::Init);
        assert_eq!(
            call(&init, "zos.network.list_wg_ports", 3, Value::Null).await,
            Ok(json!([]))
        );
        assert_eq!(
            call(&init, "zos.network.list_public_ips", 3, Value::Null).await,
            Ok(json!([]))
        );
        let ok = node(ResultState::Ok);
        assert_eq!(
            call(&ok, "zos.network.list_wg_ports", 3, Value::Null).await,
            Ok(json!([3011]))
        );
        assert_eq!(
            call(&ok, "zos.network.list_public_ips", 9, Value::Null).await,
            Ok(json!(["185.1.1.5/24"]))
        );
        let arg = json!({"network_name": "net"});
        assert_eq!(
            call(&ok, "zos.network.list_private_ips", 3, arg.clone()).await,
            Ok(json!(["10.1.1.2"]))
        );
        // another twin's network is not visible
        assert_eq!(
            call(&ok, "zos.network.list_private_ips", 4, arg).await,
            Ok(json!([]))
        );
        let e = call(&ok, "zos.network.list_private_ips", 3, json!({"name": 1})).await;
        assert!(e.unwrap_err().starts_with("invalid request payload"));
    }
}
