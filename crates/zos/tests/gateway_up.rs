//! Web gateways on a `zos up` grid (root): a private network, a plain HTTP server and a TLS
//! server inside its network resource namespace (standing in for a VM, which would take
//! minutes to boot), and `zos deploy` of name proxies to them (the client creates the name
//! contracts). curl reaches the page through the gateway with the grid's dev CA; passthrough
//! shows the backend's own certificate; `zos deployments` shows the URL; the routes come back
//! after the grid restarts; a second deployment
//! asking for the same name is refused; canceling the name contract removes the route within
//! the re-check period.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/up.rs"]
mod up;
use up::*;

const DOMAIN: &str = "gw.zos.local";

/// The backends and what the network resource left in the host's namespace (one-node grid):
/// removed on drop, also when the test fails.
struct Backends {
    ns: String,
    links: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Backends {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
        for l in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", l])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn curl(args: &[String]) -> (bool, String, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn https(host: &str, port: u16, cacert: &Path) -> Vec<String> {
    vec![
        "--cacert".into(),
        cacert.display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:127.0.0.1"),
        format!("https://{host}:{port}/"),
    ]
}

fn ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn wait_port(ns: &str, ip: &str, port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let open = Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if open {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backend {ip}:{port} in {ns} did not open");
}

/// The gateway's TLS port from `zos up`'s `gateway  https://NAME.DOMAIN on 127.0.0.1:PORT …`.
fn gateway_port(text: &str) -> u16 {
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("gateway  https://NAME.{DOMAIN} on 127.0.0.1:"))
        })
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no gateway line: {text}"))
}

#[test]
fn name_proxies_on_a_local_grid() {
    if !is_root() || zos_network::network_support().is_err() {
        eprintln!("SKIP name_proxies_on_a_local_grid: needs root, /dev/net/tun and ip");
        return;
    }
    for tool in ["curl", "python3", "openssl"] {
        if !has(tool) {
            eprintln!("SKIP name_proxies_on_a_local_grid: {tool} is not installed");
            return;
        }
    }
    let (mut up, printed) = Up::start(
        1,
        &["--gateway-recheck-secs", "2"],
        Duration::from_secs(180),
    );
    let text = printed.join("\n");
    // The fixture gives the gateway free ports; zos up prints the TLS one.
    let sp = gateway_port(&text);
    let twin: u32 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("you      twin "))
        .and_then(|l| l.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no twin: {text}"));
    let dir = up.dir.path().to_path_buf();
    let ca = dir.join("gateway-ca.pem");
    assert!(ca.is_file(), "the dev CA is next to the client config");

    // A private network; its resource namespace holds the backends.
    let spec = |name: &str, body: &str| {
        let p = dir.join(format!("{name}.yaml"));
        std::fs::write(&p, format!("name: {name}\nnode: 1\nworkloads:\n{body}")).unwrap();
        p.display().to_string()
    };
    let net = spec(
        "gwnetdep",
        "  gwnet:\n    network:\n      ip_range: 10.232.0.0/16\n",
    );
    ok(&up.client(&["deploy", &net]));
    let names = zos_network::NrNames::new(twin, "gwnet", "");
    let mut be = Backends {
        ns: names.namespace.clone(),
        links: vec![names.bridge.clone(), names.bridge_port.clone()],
        children: Vec::new(),
    };
    let addrs = Command::new("ip")
        .args(["-n", &names.namespace, "-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
    let ip = addrs
        .split_whitespace()
        .find_map(|w| w.strip_prefix("10.232.").map(|r| format!("10.232.{r}")))
        .and_then(|a| a.split('/').next().map(str::to_string))
        .unwrap_or_else(|| panic!("no network address in {}: {addrs}", names.namespace));
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello through the gateway\n").unwrap();
    be.children.push(
        Command::new("ip")
            .args(["netns", "exec", &names.namespace, "python3", "-m"])
            .args(["http.server", "8080", "--bind", &ip, "--directory"])
            .arg(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (bcert, bkey) = (dir.join("backend.pem"), dir.join("backend-key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN=gwpass.{DOMAIN}")])
        .args(["-addext", &format!("subjectAltName=DNS:gwpass.{DOMAIN}")])
        .arg("-keyout")
        .arg(&bkey)
        .arg("-out")
        .arg(&bcert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl req");
    be.children.push(
        Command::new("ip")
            .args(["netns", "exec", &names.namespace, "openssl", "s_server"])
            .args(["-www", "-quiet", "-accept", &format!("{ip}:8443"), "-cert"])
            .arg(&bcert)
            .arg("-key")
            .arg(&bkey)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(&names.namespace, &ip, 8080);
    wait_port(&names.namespace, &ip, 8443);

    // Name proxies over the private network; `zos deploy` creates the name contracts.
    let gw = spec(
        "gwweb",
        &format!(
            "  web:\n    gateway-name:\n      name: gwtest\n      backends: [\"http://{ip}:8080\"]\n      network: gwnet\n\
             \x20 pass:\n    gateway-name:\n      name: gwpass\n      tls_passthrough: true\n      backends: [\"{ip}:8443\"]\n      network: gwnet\n"
        ),
    );
    ok(&up.client(&["deploy", &gw]));
    let list = ok(&up.client(&["deployments"]));
    assert!(
        list.contains(&format!("https://gwtest.{DOMAIN}")),
        "the URL is shown: {list}"
    );
    let host = format!("gwtest.{DOMAIN}");
    let page = curl(&https(&host, sp, &ca));
    assert_eq!(page.1, "hello through the gateway\n", "{page:?}");
    let pass_host = format!("gwpass.{DOMAIN}");
    let passed = curl(&https(&pass_host, sp, &bcert));
    assert!(
        passed.0 && passed.1.contains("s_server"),
        "passthrough serves the backend's own certificate: {passed:?}"
    );
    assert!(
        !curl(&https(&pass_host, sp, &ca)).0,
        "the grid's CA does not vouch for a passed-through backend"
    );

    // The grid restarted: the engine provisions the gateways again (routes live in memory),
    // the certificate comes from the node's cache, the CA is kept.
    let ca_before = std::fs::read(&ca).unwrap();
    up.stop(Duration::from_secs(60));
    let printed = up.restart(
        1,
        &["--gateway-recheck-secs", "2"],
        Duration::from_secs(180),
    );
    let sp = gateway_port(&printed.join("\n"));
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before, "the dev CA is kept");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let page = curl(&https(&host, sp, &ca));
        if page.1 == "hello through the gateway\n" {
            break;
        }
        assert!(Instant::now() < end, "after a restart: {page:?}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A second deployment asking for the same name is refused (by the node: the name
    // contract is the twin's, the domain is served).
    let dup = spec(
        "gwweb2",
        &format!(
            "  web:\n    gateway-name:\n      name: gwtest\n      backends: [\"http://{ip}:8080\"]\n      network: gwnet\n"
        ),
    );
    let o = up.client(&["deploy", &dup]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "duplicate deployed");
    assert!(err.contains("already used"), "{err}");

    // Cancel the name contract: the route goes within the re-check period (2 s).
    let contracts: serde_json::Value =
        serde_json::from_str(&ok(&up.client(&["contracts"]))).unwrap();
    let id = contracts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"]["name"]["name"] == "gwtest")
        .and_then(|c| c["id"].as_u64())
        .unwrap_or_else(|| panic!("no name contract gwtest: {contracts}"));
    ok(&up.client(&["cancel", &id.to_string()]));
    let canceled = Instant::now();
    loop {
        let mut a = https(&host, sp, &ca);
        a.splice(0..0, ["-w".to_string(), "%{http_code}".to_string()]);
        let r = curl(&a);
        if r.1.ends_with("404") {
            break;
        }
        assert!(
            canceled.elapsed() < Duration::from_secs(10),
            "route still served 10 s after canceling: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The other name keeps its route.
    assert!(curl(&https(&pass_host, sp, &bcert)).0);
    eprintln!(
        "gateway route removed {:?} after the name contract was canceled",
        canceled.elapsed()
    );

    // Contracts ended before the grid stops: the node removes what it made.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&up.client(&["deployments", "--json"]))).unwrap();
    for d in list.as_array().unwrap() {
        if let Some(c) = d["contract_id"].as_u64() {
            let _ = up.client(&["cancel", &c.to_string()]);
        }
    }
    drop(be);
    drop(up);
}
