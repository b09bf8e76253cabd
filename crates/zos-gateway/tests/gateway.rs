//! The gateway end to end in one process: real listeners, real TLS (dev CA), backends in a
//! real network namespace named as a network resource's, reached by curl.
//!
//! Name proxy with TLS termination and plain HTTP; SNI passthrough shows the backend's own
//! certificate; FQDN proxy with its own certificate; duplicate domain, unowned name, own
//! public IP as backend and FQDN under the node domain refused; a name contract gone removes
//! the route within the re-check period; deprovision removes a route.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use zos_gateway::{DevCa, FqdnProxy, Gateway, GatewayConfig, Issuer, NameOwners, NameProxy};
use zos_primitive::{Lifecycle, NodeSecret, Primitive, WorkloadCtx};
use zos_types::{Deployment, Workload, WorkloadType};

const BACKEND_IP: &str = "10.231.0.1";
const TWIN: u32 = 7;

#[derive(Default)]
struct Names(Mutex<HashMap<String, u32>>);

#[zos_gateway::async_trait]
impl NameOwners for Names {
    async fn owner(&self, name: &str) -> Result<Option<u32>, String> {
        Ok(self.0.lock().unwrap().get(name).copied())
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The namespace and the backend processes; removed on drop, also when the test fails.
struct Fixture {
    ns: String,
    children: Vec<Child>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

fn wait_port(ns: &str, port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{BACKEND_IP}/{port}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("backend port {port} in {ns} did not open");
}

/// `curl` with `args`: (exit ok, stdout, stderr).
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

fn wl(name: &str, t: WorkloadType, data: serde_json::Value) -> Workload {
    Workload {
        name: name.into(),
        workload_type: t,
        data,
        ..Workload::default()
    }
}

fn deployment(contract: u64, workloads: Vec<Workload>) -> Arc<Deployment> {
    Arc::new(Deployment {
        twin_id: TWIN,
        contract_id: contract,
        workloads,
        ..Deployment::default()
    })
}

fn ctx(d: &Arc<Deployment>, name: &str) -> WorkloadCtx {
    WorkloadCtx::new(1, d.clone(), name, NodeSecret::new([3; 32]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_terminates_passes_through_and_forgets() {
    if !is_root() || !has("ip") || !has("curl") || !has("python3") || !has("openssl") {
        eprintln!("SKIP gateway e2e: needs root, ip, curl, python3 and openssl");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let prefix = format!("gw{}", std::process::id());
    let ns = zos_network::NrNames::new(TWIN, "net", &prefix).namespace;
    ip(&["netns", "add", &ns]);
    let mut fx = Fixture {
        ns: ns.clone(),
        children: Vec::new(),
    };
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{BACKEND_IP}/32"),
        "dev",
        "lo",
    ]);

    // An HTTP backend and a TLS backend with its own certificate, inside the namespace only.
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from the backend\n").unwrap();
    fx.children.push(
        Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-m", "http.server", "8080"])
            .args(["--bind", BACKEND_IP, "--directory"])
            .arg(&site)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let own = rcgen::generate_simple_self_signed(vec!["pass.gw.test".to_string()]).unwrap();
    let (bcert, bkey) = (
        tmp.path().join("backend.pem"),
        tmp.path().join("backend-key.pem"),
    );
    std::fs::write(&bcert, own.cert.pem()).unwrap();
    std::fs::write(&bkey, own.signing_key.serialize_pem()).unwrap();
    fx.children.push(
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "openssl", "s_server", "-www", "-quiet",
            ])
            .args(["-accept", &format!("{BACKEND_IP}:8443"), "-cert"])
            .arg(&bcert)
            .arg("-key")
            .arg(&bkey)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(&ns, 8080);
    wait_port(&ns, 8443);

    // The gateway: dev CA, short re-check period.
    let ca = DevCa::load_or_create(tmp.path()).unwrap();
    let (hp, sp) = (free_port(), free_port());
    let mut cfg = GatewayConfig::new(
        tmp.path().join("cache"),
        Issuer::DevCa {
            ca: ca.clone(),
            days: 90,
        },
    );
    cfg.http_listen = format!("127.0.0.1:{hp}").parse().unwrap();
    cfg.https_listen = format!("127.0.0.1:{sp}").parse().unwrap();
    cfg.domain = Some("gw.test".into());
    cfg.recheck = Duration::from_secs(1);
    cfg.ns_prefix = prefix.clone();
    cfg.check_fqdn_dns = false;
    let names = Arc::new(Names::default());
    names.0.lock().unwrap().insert("web".into(), TWIN);
    names.0.lock().unwrap().insert("pass".into(), TWIN);
    names.0.lock().unwrap().insert("theirs".into(), TWIN + 1);
    let gw = Gateway::new(cfg, names.clone());
    gw.start().await.unwrap();
    // The public config's IPs are the node's own: backends there are refused. Its empty
    // domain leaves the configured one.
    gw.public_config(Some(&json!({"ipv4": "198.51.100.7/24", "domain": ""})))
        .await
        .unwrap();
    let (name_p, fqdn_p) = (NameProxy(gw.clone()), FqdnProxy(gw.clone()));

    let net = wl("net", WorkloadType::Network, json!({}));
    let gw_wl = |n: &str, data| wl(n, WorkloadType::GatewayNameProxy, data);
    let web = gw_wl(
        "web",
        json!({"name": "web", "backends": [format!("http://{BACKEND_IP}:8080")], "network": "net"}),
    );
    let pass = gw_wl(
        "pass",
        json!({"name": "pass", "tls_passthrough": true, "backends": [format!("{BACKEND_IP}:8443")], "network": "net"}),
    );
    let app = wl(
        "app",
        WorkloadType::GatewayFqdnProxy,
        json!({"fqdn": "app.example.org", "backends": [format!("http://{BACKEND_IP}:8080")], "network": "net"}),
    );
    let d = deployment(1, vec![net.clone(), web.clone(), pass.clone(), app.clone()]);

    let r = name_p.provision(&ctx(&d, "web"), &web).await.unwrap();
    assert_eq!(r, json!({"fqdn": "web.gw.test"}));
    name_p.provision(&ctx(&d, "pass"), &pass).await.unwrap();
    assert_eq!(
        fqdn_p.provision(&ctx(&d, "app"), &app).await.unwrap(),
        json!({})
    );
    // Idempotent: provisioning again converges to the same route.
    name_p.provision(&ctx(&d, "web"), &web).await.unwrap();

    let out = tokio::task::spawn_blocking(move || {
        let ca = DevCa::in_dir(tmp.path());
        let terminated = curl(&https("web.gw.test", sp, &ca.cert));
        let plain = curl(&[
            "-H".into(),
            "Host: web.gw.test".into(),
            format!("http://127.0.0.1:{hp}/"),
        ]);
        let fqdn = curl(&https("app.example.org", sp, &ca.cert));
        let passed = curl(&https("pass.gw.test", sp, &bcert));
        let passed_with_gw_ca = curl(&https("pass.gw.test", sp, &ca.cert));
        let unknown = curl(&[
            "-H".into(),
            "Host: nope.gw.test".into(),
            "-w".into(),
            "%{http_code}".into(),
            format!("http://127.0.0.1:{hp}/"),
        ]);
        (
            tmp,
            [terminated, plain, fqdn, passed, passed_with_gw_ca, unknown],
        )
    })
    .await
    .unwrap();
    let (tmp, [terminated, plain, fqdn, passed, passed_with_gw_ca, unknown]) = out;
    assert!(terminated.0, "https through the gateway: {terminated:?}");
    assert_eq!(terminated.1, "hello from the backend\n");
    assert_eq!(plain.1, "hello from the backend\n", "{plain:?}");
    assert_eq!(fqdn.1, "hello from the backend\n", "{fqdn:?}");
    assert!(
        passed.0,
        "passthrough with the backend's own cert: {passed:?}"
    );
    assert!(passed.1.contains("s_server"), "{passed:?}");
    assert!(
        !passed_with_gw_ca.0,
        "the gateway's CA does not verify a passed-through connection: {passed_with_gw_ca:?}"
    );
    assert!(unknown.1.ends_with("404"), "{unknown:?}");
    // Network consumption: the page's bytes, fetched twice (https and http); the passthrough
    // connection's bytes (both ways) once it ended.
    let page = u64::try_from("hello from the backend\n".len()).unwrap();
    let used = name_p
        .consumption(&ctx(&d, "web"), &web)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used, 2 * page, "body bytes only: {used}");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let p = name_p
            .consumption(&ctx(&d, "pass"), &pass)
            .await
            .unwrap()
            .unwrap();
        if p > 1000 {
            break;
        }
        assert!(Instant::now() < end, "passthrough bytes not counted: {p}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Refusals.
    let d2 = deployment(
        2,
        vec![
            net.clone(),
            gw_wl(
                "web2",
                json!({"name": "web", "backends": ["http://10.231.0.2"]}),
            ),
            gw_wl(
                "theirs",
                json!({"name": "theirs", "backends": ["http://10.231.0.2"]}),
            ),
            gw_wl(
                "unowned",
                json!({"name": "unowned", "backends": ["http://10.231.0.2"]}),
            ),
            gw_wl(
                "self",
                json!({"name": "pass", "backends": ["http://198.51.100.7"]}),
            ),
            wl(
                "under",
                WorkloadType::GatewayFqdnProxy,
                json!({"fqdn": "x.gw.test", "backends": ["http://10.231.0.2"]}),
            ),
        ],
    );
    let err = |r: Result<serde_json::Value, zos_primitive::PrimitiveError>| {
        r.expect_err("refused").to_string()
    };
    let e = err(name_p.provision(&ctx(&d2, "web2"), &d2.workloads[1]).await);
    assert!(e.contains("already used"), "{e}");
    let e = err(name_p
        .provision(&ctx(&d2, "theirs"), &d2.workloads[2])
        .await);
    assert!(e.contains("belongs to twin 8"), "{e}");
    let e = err(name_p
        .provision(&ctx(&d2, "unowned"), &d2.workloads[3])
        .await);
    assert!(e.contains("no active name contract"), "{e}");
    let e = err(name_p.provision(&ctx(&d2, "self"), &d2.workloads[4]).await);
    assert!(e.contains("public IP"), "{e}");
    let e = err(fqdn_p.provision(&ctx(&d2, "under"), &d2.workloads[5]).await);
    assert!(e.contains("under the node domain"), "{e}");
    assert_eq!(
        gw.routes().into_iter().map(|(h, _)| h).collect::<Vec<_>>(),
        ["app.example.org", "pass.gw.test", "web.gw.test"]
    );

    // The name contract goes: the route goes within the re-check period (1 s here).
    names.0.lock().unwrap().remove("web");
    let end = Instant::now() + Duration::from_secs(5);
    while gw.routes().iter().any(|(h, _)| h == "web.gw.test") {
        assert!(Instant::now() < end, "route still there: {:?}", gw.routes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca_cert = ca.cert.clone();
    let gone = tokio::task::spawn_blocking(move || {
        let mut a = https("web.gw.test", sp, &ca_cert);
        a.splice(0..0, ["-w".to_string(), "%{http_code}".to_string()]);
        curl(&a)
    })
    .await
    .unwrap();
    assert_eq!(gone.1, "no gateway for web.gw.test\n404", "{gone:?}");

    // Deprovision removes a route; the others stay.
    name_p.deprovision(&ctx(&d, "pass"), &pass).await.unwrap();
    assert_eq!(gw.routes().len(), 1);
    gw.shutdown().await;
    drop(tmp);
    drop(fx);
}
