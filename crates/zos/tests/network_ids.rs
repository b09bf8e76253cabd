//! `zos deployment ids FILE.json`: workload ids, NetworkIDs and the names a node derives,
//! checked through the binary against upstream's vectors (zos-reference §3.3).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

const DEPLOYMENT: &str = r#"{"version":0,"twin_id":1,"contract_id":1234,"metadata":"","description":"","expiration":0,
 "signature_requirement":{"requests":[{"twin_id":1,"required":false,"weight":1}],"weight_required":1,"signatures":[],"signature_style":""},
 "workloads":[
  {"version":0,"name":"net1","type":"network","data":{"ip_range":"10.20.0.0/16","subnet":"10.20.2.0/24",
    "wireguard_private_key":"GDU+cjKrHNJS9fodzjFDzNFl5su3kJXTZ3ipPgUjOUE=","wireguard_listen_port":3011,"peers":[]},
   "metadata":"","description":"","result":{"created":0,"state":"","message":"","data":null}},
  {"version":0,"name":"pubip","type":"ip","data":{"v4":true,"v6":true},
   "metadata":"","description":"","result":{"created":0,"state":"","message":"","data":null}},
  {"version":0,"name":"vm1","type":"zmachine","data":{"flist":"https://hub.grid.tf/tf-official-apps/base:latest.flist",
    "network":{"public_ip":"pubip","planetary":true,"interfaces":[{"network":"net1","ip":"10.20.2.5"}]},
    "size":0,"compute_capacity":{"cpu":2,"memory":2147483648},"mounts":[],"entrypoint":"/sbin/zinit init","env":{}},
   "metadata":"","description":"","result":{"created":0,"state":"","message":"","data":null}}]}"#;

fn ids(args: &[&str], file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["deployment", "ids"])
        .arg(file)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn names_match_upstream_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.json");
    std::fs::write(&file, DEPLOYMENT).unwrap();
    let o = ids(&["--json"], &file);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let w = &v["workloads"];
    assert_eq!(w["net1"]["id"], "1-1234-net1");
    assert_eq!(w["net1"]["network_id"], "HFzUQHtqE2iA5");
    assert_eq!(w["net1"]["names"]["namespace"], "n-HFzUQHtqE2iA5");
    assert_eq!(w["net1"]["names"]["bridge"], "b-HFzUQHtqE2iA5");
    assert_eq!(w["net1"]["names"]["wireguard"], "w-HFzUQHtqE2iA5");
    assert_eq!(w["vm1"]["names"]["tap:net1"], "DvnEEWyEnKoJE");
    assert_eq!(w["vm1"]["names"]["tap:ygg"], "BTRxNQaCT5tx6");
    assert_eq!(w["vm1"]["names"]["ipv6:net1"], "fd48:467a:5551:2::5");
    assert_eq!(w["pubip"]["names"]["tap"], "9x4gDTJ4tiohE");
    assert_eq!(w["pubip"]["names"]["mac"], "ee:cb:5b:ec:5f:85");
    assert!(w["pubip"].get("network_id").is_none());

    let o = ids(&[], &file);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("net1: id 1-1234-net1  network_id HFzUQHtqE2iA5"),
        "{text}"
    );
    assert!(text.contains("DvnEEWyEnKoJE"), "{text}");

    // Bad input: a clear error, exit status 1.
    std::fs::write(&file, "{\"twin_id\": \"x\"").unwrap();
    let o = ids(&[], &file);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("parsing") && err.contains("d.json"), "{err}");
}
