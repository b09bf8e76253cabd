//! A web gateway in front of a VM on another node (root, QEMU; TCG here): `zos up --nodes 2`,
//! examples/network.yaml over both nodes, a VM of the test guest running busybox httpd on the
//! node that is not the gateway, and a name proxy on node 1 (the gateway node) to the VM's
//! private address over the WireGuard mesh: curl through the gateway returns the VM's page;
//! a backend on the gateway node's own public IP is refused; canceling the name contract takes
//! the route down within the re-check period. One guest boot.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "common/up.rs"]
mod up;
#[path = "common/vm_guest.rs"]
mod vm_guest;
#[path = "common/vm_up.rs"]
mod vm_up;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vm_up::{VmGrid, ok};

const T: &str = "gateway_to_a_vm_on_another_node";

fn curl_gw(host: &str, port: u16, ca: &Path) -> (bool, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn gateway_to_a_vm_on_another_node() {
    let Some(VmGrid {
        rt: _rt,
        hub,
        up,
        printed,
        ..
    }) = vm_up::start(T, &["curl"], &["--gateway-recheck-secs", "2"])
    else {
        return;
    };
    let text = printed.join("\n");
    let sp: u16 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("gateway  https://NAME.gw.zos.local on 127.0.0.1:")
        })
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no gateway line: {text}"));
    // Node 1 (in the zos up process) runs the gateway; its ledger id is on its plane's line.
    let gw_node: u32 = text
        .lines()
        .find(|l| l.contains("namespace zup-node1 at"))
        .and_then(|l| l.trim().strip_prefix("node "))
        .and_then(|r| r.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no ledger id of node 1: {text}"));
    let ca = up.dir.path().join("gateway-ca.pem");

    let net = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/network.yaml");
    ok(
        &up.client(&["deploy", net.to_str().unwrap(), "--wait", "120"]),
        "zos deploy examples/network.yaml",
    );
    let list: Vec<Value> =
        serde_json::from_str(&ok(&up.client(&["deployments", "--json"]), "deployments")).unwrap();
    let (vm_node, base) = list
        .iter()
        .filter(|d| d["node_id"].as_u64() != Some(u64::from(gw_node)))
        .find_map(|d| {
            let w = d["workloads"]
                .as_array()?
                .iter()
                .find(|w| w["type"] == "network")?;
            let subnet = w["data"]["subnet"].as_str()?;
            Some((
                d["node_id"].as_u64()?,
                subnet.rsplit_once(".0/")?.0.to_string(),
            ))
        })
        .unwrap_or_else(|| panic!("no network on a node other than {gw_node}: {list:?}"));
    let vm_ip = format!("{base}.5");

    // The VM serves a page with busybox httpd.
    let flist = format!("http://127.0.0.1:{hub}/flists/0/test-guest.fl");
    // And a TLS server with a certificate made in the guest (self-signed, CN vmpass.DOMAIN),
    // for SNI passthrough.
    let entry = "/bin/sh -c 'mkdir -p /www; echo \\\"hello from vm $(hostname)\\\" > /www/index.html; httpd -p 8080 -h /www && echo HTTPD-UP; \
                 /usr/bin/openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=vmpass.gw.zos.local -addext subjectAltName=DNS:vmpass.gw.zos.local -keyout /tls.key -out /tls.crt && \
                 (/usr/bin/openssl s_server -www -quiet -accept 8443 -cert /tls.crt -key /tls.key &) && echo TLS-UP; while :; do sleep 60; done'";
    let spec = format!(
        "name: gwvm\nnode: {vm_node}\nworkloads:\n  web:\n    raw:\n      type: zmachine\n      data:\n        \
         flist: {flist}\n        network:\n          planetary: false\n          interfaces:\n            \
         - network: net\n              ip: {vm_ip}\n        size: 0\n        compute_capacity:\n          \
         cpu: 1\n          memory: 268435456\n        mounts: []\n        entrypoint: \"{entry}\"\n        env: {{}}\n"
    );
    let vm_spec = up.dir.path().join("gwvm.yaml");
    std::fs::write(&vm_spec, spec).unwrap();
    let t0 = Instant::now();
    let out = ok(
        &up.client(&[
            "deploy",
            vm_spec.to_str().unwrap(),
            "--json",
            "--wait",
            "240",
        ]),
        "deploy the VM",
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    let vm_contract = d["contract_id"].as_u64().unwrap();

    // The name proxy on the gateway node, to the VM over the private network.
    let gw_spec = up.dir.path().join("gwname.yaml");
    std::fs::write(
        &gw_spec,
        format!(
            "name: gwname\nnode: {gw_node}\nworkloads:\n  site:\n    gateway-name:\n      name: vmsite\n      \
             backends: [\"http://{vm_ip}:8080\"]\n      network: net\n"
        ),
    )
    .unwrap();
    ok(
        &up.client(&["deploy", gw_spec.to_str().unwrap()]),
        "deploy the name proxy",
    );
    let host = "vmsite.gw.zos.local";
    let end = Instant::now() + Duration::from_secs(240);
    let page = loop {
        let (ok, body) = curl_gw(host, sp, &ca);
        if ok && body.starts_with("hello from vm web") {
            break body;
        }
        let log = up.client(&["vm", "logs", &vm_contract.to_string(), "web"]);
        assert!(
            Instant::now() < end,
            "no page through the gateway: {body}\nvm log: {}",
            String::from_utf8_lossy(&log.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "{T}: the VM's page through the gateway {:?} after the VM deploy started (TCG): {page:?}",
        t0.elapsed()
    );
    assert!(page.ends_with("200"), "{page}");

    // SNI passthrough to the VM: the client sees the certificate the guest made for itself
    // (issuer = its own subject), not one of the grid's CA, and the VM's TLS server answers.
    let pass_spec = up.dir.path().join("gwpass.yaml");
    std::fs::write(
        &pass_spec,
        format!(
            "name: gwpass\nnode: {gw_node}\nworkloads:\n  pass:\n    gateway-name:\n      name: vmpass\n      \
             tls_passthrough: true\n      backends: [\"{vm_ip}:8443\"]\n      network: net\n"
        ),
    )
    .unwrap();
    ok(
        &up.client(&["deploy", pass_spec.to_str().unwrap()]),
        "deploy the passthrough proxy",
    );
    let pass_host = "vmpass.gw.zos.local";
    let end = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let o = Command::new("curl")
            .args(["-sS", "-k", "-v", "--max-time", "5"])
            .args(["--resolve", &format!("{pass_host}:{sp}:127.0.0.1")])
            .arg(format!("https://{pass_host}:{sp}/"))
            .output()
            .unwrap();
        let (body, info) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        if o.status.success() && body.contains("s_server") {
            break info;
        }
        let log = up.client(&["vm", "logs", &vm_contract.to_string(), "web"]);
        assert!(
            Instant::now() < end,
            "no TLS answer from the VM through passthrough: {info}\nvm log: {}",
            String::from_utf8_lossy(&log.stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        seen.contains("issuer: CN=vmpass.gw.zos.local"),
        "the VM's own self-signed certificate: {seen}"
    );
    assert!(
        !curl_gw(pass_host, sp, &ca).0,
        "the grid's CA does not vouch for the VM's certificate"
    );
    eprintln!("{T}: SNI passthrough shows the VM's own certificate");

    // A backend on the gateway node's own public IP (its public config, set by zos up) is
    // refused.
    let public4 = text
        .lines()
        .find(|l| l.trim().starts_with("public   node"))
        .and_then(|l| l.split(" at ").nth(1))
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no public config line: {text}"))
        .to_string();
    let own_spec = up.dir.path().join("gwown.yaml");
    std::fs::write(
        &own_spec,
        format!(
            "name: gwown\nnode: {gw_node}\nworkloads:\n  site:\n    gateway-name:\n      name: ownip\n      \
             backends: [\"http://{public4}:80\"]\n"
        ),
    )
    .unwrap();
    let o = up.client(&["deploy", own_spec.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("points at this node's public IP"),
        "a backend on {public4}: {err}"
    );

    // Cancel the name contract: 404 within the 2 s re-check.
    let contracts: Value =
        serde_json::from_str(&ok(&up.client(&["contracts"]), "contracts")).unwrap();
    let id = contracts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"]["name"]["name"] == "vmsite")
        .and_then(|c| c["id"].as_u64())
        .unwrap_or_else(|| panic!("no name contract: {contracts}"));
    ok(&up.client(&["cancel", &id.to_string()]), "cancel the name");
    let canceled = Instant::now();
    while !curl_gw(host, sp, &ca).1.ends_with("404") {
        assert!(
            canceled.elapsed() < Duration::from_secs(10),
            "route still served after the name contract was canceled"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let list: Vec<Value> =
        serde_json::from_str(&ok(&up.client(&["deployments", "--json"]), "deployments")).unwrap();
    for d in list {
        if let Some(c) = d["contract_id"].as_u64() {
            let _ = up.client(&["cancel", &c.to_string()]);
        }
    }
    drop(up);
}
