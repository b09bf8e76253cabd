//! The names a node derives for a deployment's workloads (upstream `WorkloadID.Unique` and
//! `NetworkID` rules, §6.2), so that a user can find what the node made: `zos deployment ids`.
//!
//! Per workload, keyed by workload name: `id` (`twin-contract-name`), `network_id` for
//! networks, and `names`:
//! - `network`: `namespace` `n-<netid>`, `bridge` `b-<netid>`, `wireguard` `w-<netid>`, and
//!   `mycelium` `m-<netid>` when the network runs a mycelium instance;
//! - `zmachine` / `zmachine-light`: per interface `tap:<network>` = `Unique(<network>)`, its
//!   `mac:<network>` (`HardwareAddrFromInputBytes(tap)`), the bridge `bridge:<network>` and
//!   the ULA `ipv6:<network>` (`Convert4to6`); `tap:ygg` (planetary) and `tap:mycelium`;
//! - `ip` / `ipv4`: `tap` = `Unique("pub")` and its `mac`.
//!
//! A node running several nodes on one machine prefixes its namespaces (docs/network.md);
//! the names here are upstream's.

use serde_json::{Map, Value, json};
use zos_types::Deployment;
use zos_types::data::WorkloadData;
use zos_types::ids::{convert_4to6, format_mac, hardware_addr, network_id, unique, workload_id};

fn tap(names: &mut Map<String, Value>, key: &str, wid: &str, n: &str) -> String {
    let t = unique(wid, n);
    names.insert(format!("tap{key}"), json!(t));
    names.insert(
        format!("mac{key}"),
        json!(format_mac(&hardware_addr(t.as_bytes()))),
    );
    t
}

/// `{"workloads": {NAME: {"id", "network_id"?, "names": {…}}}}` for `d`.
pub fn deployment_names(d: &Deployment) -> Value {
    let mut out = Map::new();
    for w in &d.workloads {
        let wid = workload_id(d.twin_id, d.contract_id, &w.name);
        let mut entry = Map::new();
        entry.insert("id".into(), json!(wid));
        let mut names = Map::new();
        match w.typed_data() {
            Ok(WorkloadData::Network(n)) => {
                let netid = network_id(d.twin_id, &w.name);
                names.insert("namespace".into(), json!(format!("n-{netid}")));
                names.insert("bridge".into(), json!(format!("b-{netid}")));
                names.insert("wireguard".into(), json!(format!("w-{netid}")));
                if n.mycelium.is_some() {
                    names.insert("mycelium".into(), json!(format!("m-{netid}")));
                }
                entry.insert("network_id".into(), json!(netid));
            }
            Ok(WorkloadData::NetworkLight(_)) => {
                entry.insert("network_id".into(), json!(network_id(d.twin_id, &w.name)));
            }
            Ok(WorkloadData::Zmachine(m)) => {
                interfaces(&mut names, d.twin_id, &wid, &m.network.interfaces);
                if m.network.planetary {
                    tap(&mut names, ":ygg", &wid, "ygg");
                }
                if m.network.mycelium.is_some() {
                    names.insert("tap:mycelium".into(), json!(unique(&wid, "mycelium")));
                }
            }
            Ok(WorkloadData::ZmachineLight(m)) => {
                interfaces(&mut names, d.twin_id, &wid, &m.network.interfaces);
                if m.network.mycelium.is_some() {
                    names.insert("tap:mycelium".into(), json!(unique(&wid, "mycelium")));
                }
            }
            Ok(WorkloadData::Ip(_) | WorkloadData::Ipv4(_)) => {
                tap(&mut names, "", &wid, "pub");
            }
            _ => {}
        }
        entry.insert("names".into(), Value::Object(names));
        out.insert(w.name.clone(), Value::Object(entry));
    }
    json!({ "workloads": out })
}

fn interfaces(
    names: &mut Map<String, Value>,
    twin: u32,
    wid: &str,
    list: &[zos_types::data::MachineInterface],
) {
    for i in list {
        let key = format!(":{}", i.network);
        tap(names, &key, wid, &i.network);
        let netid = network_id(twin, &i.network);
        names.insert(format!("bridge{key}"), json!(format!("b-{netid}")));
        if let Some(v6) = i.ip.0.and_then(|ip| convert_4to6(&netid, ip)) {
            names.insert(format!("ipv6{key}"), json!(v6.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's vectors (zos-reference §3.3): V3's deployment as contract 1234 of twin 1.
    #[test]
    fn names_follow_upstream_vectors() {
        let d: Deployment = serde_json::from_value(json!({
            "version": 0, "twin_id": 1, "contract_id": 1234, "metadata": "", "description": "",
            "expiration": 0,
            "signature_requirement": {"requests": [{"twin_id": 1, "required": false, "weight": 1}],
                "weight_required": 1, "signatures": [], "signature_style": ""},
            "workloads": [
                {"version": 0, "name": "net1", "type": "network", "data": {
                    "ip_range": "10.20.0.0/16", "subnet": "10.20.2.0/24",
                    "wireguard_private_key": "GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=",
                    "wireguard_listen_port": 3011, "peers": []},
                 "metadata": "", "description": "", "result": {"created": 0, "state": "", "message": "", "data": null}},
                {"version": 0, "name": "pubip", "type": "ip", "data": {"v4": true, "v6": true},
                 "metadata": "", "description": "", "result": {"created": 0, "state": "", "message": "", "data": null}},
                {"version": 0, "name": "vm1", "type": "zmachine", "data": {
                    "flist": "https://hub.grid.tf/tf-official-apps/base:latest.flist",
                    "network": {"public_ip": "pubip", "planetary": true,
                        "interfaces": [{"network": "net1", "ip": "10.20.2.5"}]},
                    "size": 0, "compute_capacity": {"cpu": 2, "memory": 2147483648u64},
                    "mounts": [], "entrypoint": "/sbin/zinit init", "env": {}},
                 "metadata": "", "description": "", "result": {"created": 0, "state": "", "message": "", "data": null}}
            ]
        }))
        .unwrap();
        let v = deployment_names(&d);
        let w = &v["workloads"];
        assert_eq!(w["net1"]["id"], "1-1234-net1");
        assert_eq!(w["net1"]["network_id"], "HFzUQHtqE2iA5");
        assert_eq!(w["net1"]["names"]["namespace"], "n-HFzUQHtqE2iA5");
        assert_eq!(w["net1"]["names"]["bridge"], "b-HFzUQHtqE2iA5");
        assert_eq!(w["net1"]["names"]["wireguard"], "w-HFzUQHtqE2iA5");
        assert_eq!(w["vm1"]["id"], "1-1234-vm1");
        assert!(w["vm1"].get("network_id").is_none());
        assert_eq!(w["vm1"]["names"]["tap:net1"], "DvnEEWyEnKoJE");
        assert_eq!(w["vm1"]["names"]["tap:ygg"], "BTRxNQaCT5tx6");
        assert_eq!(w["vm1"]["names"]["bridge:net1"], "b-HFzUQHtqE2iA5");
        assert_eq!(w["vm1"]["names"]["ipv6:net1"], "fd48:467a:5551:2::5");
        assert_eq!(w["pubip"]["id"], "1-1234-pubip");
        assert_eq!(w["pubip"]["names"]["tap"], "9x4gDTJ4tiohE");
        assert_eq!(w["pubip"]["names"]["mac"], "ee:cb:5b:ec:5f:85");
    }
}
