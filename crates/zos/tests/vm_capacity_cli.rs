//! `zos deployment capacity FILE.json [--json]` through the real binary: upstream's Capacity()
//! per workload (a zmachine's SRU is its root size, at least MinRootSize) and the total.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

use serde_json::{Value, json};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn deployment() -> Value {
    let vm = |name: &str, cpu: u8, memory: u64, size: u64| {
        json!({"version": 0, "name": name, "type": "zmachine", "metadata": "", "description": "",
               "data": {"flist": "https://hub.grid.tf/x.flist",
                        "network": {"interfaces": [{"network": "net", "ip": "10.20.2.5"}], "planetary": false, "public_ip": ""},
                        "size": size, "compute_capacity": {"cpu": cpu, "memory": memory},
                        "mounts": [], "entrypoint": "", "env": {}, "corex": false}})
    };
    json!({"version": 0, "twin_id": 1, "contract_id": 0, "metadata": "", "description": "", "expiration": 0,
    "signature_requirement": {"requests": [{"twin_id": 1, "required": false, "weight": 1}],
                              "weight_required": 1, "signatures": null, "signature_style": ""},
    "workloads": [
        // cu = 2 * 4 GiB / 8 GiB = 1 -> MinRootSize 2 GiB
        vm("big", 2, 4 * GIB, 0),
        // cu = 1 * 1 GiB / 8 GiB = 0 -> MinRootSize 500 MiB
        vm("small", 1, GIB, 0),
        // an explicit size above the minimum wins
        vm("sized", 1, 512 * MIB, 10 * GIB),
        {"version": 0, "name": "db", "type": "zdb", "metadata": "", "description": "",
         "data": {"size": 3 * GIB, "mode": "user", "password": "", "public": false}},
        {"version": 0, "name": "pub", "type": "ip", "metadata": "", "description": "",
         "data": {"v4": true, "v6": false}},
    ]})
}

fn zos(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn capacity_per_workload_and_total_as_upstream() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("d.json");
    std::fs::write(&f, deployment().to_string()).unwrap();
    let (ok, out, err) = zos(&["deployment", "capacity", f.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let cap = |cru: u64, mru: u64, sru: u64, hru: u64, ipv4u: u64| json!({"cru": cru, "mru": mru, "sru": sru, "hru": hru, "ipv4u": ipv4u});
    assert_eq!(v["workloads"]["big"], cap(2, 4 * GIB, 2 * GIB, 0, 0));
    assert_eq!(v["workloads"]["small"], cap(1, GIB, 500 * MIB, 0, 0));
    assert_eq!(v["workloads"]["sized"], cap(1, 512 * MIB, 10 * GIB, 0, 0));
    assert_eq!(v["workloads"]["db"], cap(0, 0, 0, 3 * GIB, 0));
    assert_eq!(v["workloads"]["pub"], cap(0, 0, 0, 0, 1));
    assert_eq!(
        v["total"],
        cap(
            4,
            4 * GIB + GIB + 512 * MIB,
            12 * GIB + 500 * MIB,
            3 * GIB,
            1
        )
    );

    let (ok, table, _) = zos(&["deployment", "capacity", f.to_str().unwrap()]);
    assert!(ok);
    let total = table.lines().last().unwrap();
    assert!(total.starts_with("total"), "{table}");
    assert!(
        total.contains(&(12 * GIB + 500 * MIB).to_string()),
        "{table}"
    );

    std::fs::write(&f, b"{not json").unwrap();
    let (ok, _, err) = zos(&["deployment", "capacity", f.to_str().unwrap()]);
    assert!(!ok && err.contains("parsing"), "{err}");
}
