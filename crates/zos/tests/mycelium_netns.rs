//! Mycelium in real network namespaces: four `zos mycelium run` processes in a line
//! A–B–C–D (one namespace each, a veth only between neighbours, TCP peers). A reaches D's
//! overlay address with ping and a TCP connection through the TUNs; kill -9 of C while A
//! pings D: traffic stops and comes back after C restarts (the same TCP connection too);
//! cut B–C silently and link A–D: A→D recovers at once, A→C once B declares C dead; D stops
//! answering (SIGSTOP): A loses its routes to D within the dead-peer time.
//!
//! The nodes run with `--test-timer-divisor 5` (hidden flag): Hello 4 s, dead peer 8.6 s
//! checked every 2 s, redial 1 s — upstream's timers / 5, so the silent-failure phases take
//! ~10 s each instead of ~50 s (`ZOS_MYC_TEST_DIVISOR=1` runs with upstream's timers).
//! Needs root, /dev/net/tun and ping; SKIPs loudly otherwise.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Proc, TempDir};

const DIVISOR: u32 = 5;

/// The timer divisor: 5, or `ZOS_MYC_TEST_DIVISOR` (1 measures with upstream's timers).
fn divisor() -> u32 {
    std::env::var("ZOS_MYC_TEST_DIVISOR")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DIVISOR)
}

/// Dead-peer timeout + one check period (43 s + 10 s upstream, divided), plus slack for the
/// retraction to travel, the retracted entry to be held and a loaded CI host.
fn silent_failure_bound() -> Duration {
    Duration::from_secs(53 / u64::from(divisor()) + 8)
}
const ECHO_PORT: u16 = 7070;

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `f` on a thread inside namespace `ns`: sockets it makes belong to that namespace.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// One HTTP/1.0 request to a node's API (on 127.0.0.1:8989 in its namespace).
fn http(ns: &str, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let req = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.0\r\n\r\n"),
    };
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(
            &"127.0.0.1:8989".parse().expect("addr"),
            Duration::from_secs(2),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        let body = out
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Some((status, body))
    })
}

struct Net {
    prefix: String,
    dir: TempDir,
    addrs: Vec<Ipv6Addr>,
    procs: Vec<Option<Proc>>,
    stop_echo: Arc<AtomicBool>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop_echo.store(true, Ordering::Relaxed);
        for p in self.procs.iter_mut() {
            // SIGKILL also ends a SIGSTOPped process.
            p.take();
        }
        for i in 0..self.addrs.len() {
            sh(&["ip", "netns", "del", &self.ns(i)]);
        }
    }
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, NAMES[i])
    }

    fn key(&self, i: usize) -> std::path::PathBuf {
        self.dir.0.join(format!("{}.key", NAMES[i]))
    }

    /// A veth between `a` and `b`, 10.77.<net>.1 on `a`, .2 on `b`.
    fn link(&self, a: usize, b: usize, net: u8) {
        let (ia, ib) = (
            format!("{}{a}{b}", self.prefix),
            format!("{}{b}{a}", self.prefix),
        );
        assert!(
            sh(&[
                "ip",
                "link",
                "add",
                &ia,
                "netns",
                &self.ns(a),
                "type",
                "veth",
                "peer",
                "name",
                &ib,
                "netns",
                &self.ns(b),
            ]),
            "veth {ia}"
        );
        for (i, ifn, host) in [(a, &ia, 1), (b, &ib, 2)] {
            let ns = self.ns(i);
            assert!(sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.{net}.{host}/24"),
                "dev",
                ifn
            ]));
            assert!(sh(&["ip", "-n", &ns, "link", "set", ifn, "up"]));
        }
    }

    /// Deletes the veth: neither node sees a FIN (a silent cut).
    fn unlink(&self, a: usize, b: usize) {
        assert!(sh(&[
            "ip",
            "-n",
            &self.ns(a),
            "link",
            "del",
            &format!("{}{a}{b}", self.prefix),
        ]));
    }

    fn start(&mut self, i: usize, peers: &[&str]) {
        self.start_with(i, peers, &["--disable-peer-discovery"]);
    }

    fn start_with(&mut self, i: usize, peers: &[&str], extra: &[&str]) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i), env!("CARGO_BIN_EXE_zos")])
            .args(["mycelium", "run", "--tun-name", "my0"])
            .args(extra)
            .arg("--key-file")
            .arg(self.key(i))
            .args(["--test-timer-divisor", &divisor().to_string()]);
        if !peers.is_empty() {
            c.arg("--peers").args(peers);
        }
        let log = std::fs::File::create(self.dir.0.join(format!("{}.log", NAMES[i]))).expect("log");
        c.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
        self.procs[i] = Some(Proc(c.spawn().expect("zos mycelium run")));
        // Ready when its API answers (the TUN and the listener come first).
        let t0 = Instant::now();
        while http(&self.ns(i), "GET", "/api/v1/admin", None).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "node {} did not start: {}",
                NAMES[i],
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{}.log", NAMES[i]))).unwrap_or_default()
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].as_ref().expect("running").0.id().to_string();
        // `ip netns exec` execs the command: the child's pid is the node's.
        assert!(
            sh(&["sh", "-c", &format!("kill {sig} {pid}")]),
            "kill {sig} {}",
            NAMES[i]
        );
    }

    fn ping(&self, from: usize, to: usize) -> bool {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns(from),
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "1",
            &self.addrs[to].to_string(),
        ])
    }

    /// Time until `ping` from → to gives `want`, within `limit`.
    fn wait_ping(&self, from: usize, to: usize, want: bool, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if self.ping(from, to) == want {
                return Some(t0.elapsed());
            }
            if want {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        None
    }

    /// An echo server on D's overlay address.
    fn echo_server(&self, i: usize) {
        let addr = SocketAddr::from((self.addrs[i], ECHO_PORT));
        let stop = self.stop_echo.clone();
        let listener = in_ns(&self.ns(i), move || {
            TcpListener::bind(addr).expect("bind echo")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        std::thread::spawn(move || {
                            let mut b = [0u8; 4096];
                            while let Ok(n) = s.read(&mut b) {
                                if n == 0 || s.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
    }

    /// A TCP connection from `from`'s namespace to the echo server on `to`.
    fn connect(&self, from: usize, to: usize) -> TcpStream {
        let addr = SocketAddr::from((self.addrs[to], ECHO_PORT));
        in_ns(&self.ns(from), move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .expect("TCP connect through the overlay")
        })
    }

    fn selected_subnets(&self, i: usize) -> Vec<String> {
        let Some((200, body)) = http(&self.ns(i), "GET", "/api/v1/admin/routes/selected", None)
        else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).expect("routes JSON");
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["subnet"].as_str().map(str::to_string))
            .collect()
    }

    fn subnet(&self, i: usize) -> String {
        let s = self.addrs[i].segments();
        format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
    }
}

impl Net {
    /// `n` namespaces `<tag><pid>-a…` with loopback up and a fresh key each.
    fn new(tag: &str, n: usize) -> Net {
        let mut net = Net {
            prefix: format!("{tag}{}", std::process::id() % 100_000),
            dir: TempDir::new(),
            addrs: vec![Ipv6Addr::UNSPECIFIED; n],
            procs: (0..n).map(|_| None).collect(),
            stop_echo: Arc::new(AtomicBool::new(false)),
        };
        for i in 0..n {
            let ns = net.ns(i);
            sh(&["ip", "netns", "del", &ns]);
            assert!(sh(&["ip", "netns", "add", &ns]), "netns {ns}");
            assert!(sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]));
            let out = Command::new(env!("CARGO_BIN_EXE_zos"))
                .args(["mycelium", "generate-keys", "--json", "--key-file"])
                .arg(net.key(i))
                .output()
                .expect("generate-keys");
            assert!(out.status.success());
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            net.addrs[i] = v["address"]
                .as_str()
                .expect("address")
                .parse()
                .expect("IPv6");
        }
        net
    }
}

fn can_run(test: &str) -> bool {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || !std::path::Path::new("/dev/net/tun").exists() || !have("ping") {
        eprintln!("SKIP {test}: needs root, /dev/net/tun and ping");
        return false;
    }
    true
}

fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(msg).expect("write through the overlay");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("echo through the overlay");
    assert_eq!(got, msg);
}

/// A JSON-RPC call to a node (upstream's port 8990, in its namespace).
fn json_rpc(ns: &str, body: &'static str) -> String {
    in_ns(ns, move || {
        let mut s = TcpStream::connect("127.0.0.1:8990").expect("JSON-RPC port");
        write!(
            s,
            "POST / HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    })
}

#[test]
fn four_nodes_in_a_line_reroute_and_recover() {
    if !can_run("four_nodes_in_a_line_reroute_and_recover") {
        return;
    }
    let mut net = Net::new("myc", 4);
    net.link(0, 1, 1);
    net.link(1, 2, 2);
    net.link(2, 3, 3);
    // Each node dials its right-hand neighbour (10.77.<net>.2).
    net.start(3, &[]);
    net.start(2, &["tcp://10.77.3.2:9651"]);
    net.start(1, &["tcp://10.77.2.2:9651"]);
    net.start(0, &["tcp://10.77.1.2:9651"]);

    // 1. A reaches D over three hops: ping and TCP.
    let t = net
        .wait_ping(0, 3, true, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("A reaches D over 3 hops; A's log:\n{}", net.log(0)));
    eprintln!("A->D first ping after {:.1} s", t.as_secs_f64());
    net.echo_server(3);
    let mut conn = net.connect(0, 3);
    echo(&mut conn, b"hello over three hops");
    assert!(net.selected_subnets(0).contains(&net.subnet(3)));
    // The same route through JSON-RPC, and the link's and route's health in A's metrics.
    let rpc = json_rpc(
        &net.ns(0),
        r#"{"jsonrpc":"2.0","id":1,"method":"getSelectedRoutes"}"#,
    );
    assert!(rpc.contains(&net.subnet(3)), "{rpc}");
    let (_, metrics) = http(&net.ns(0), "GET", "/metrics", None).expect("metrics");
    assert!(
        metrics.contains(r#"mycelium_peer_up{endpoint="tcp://10.77.1.2:9651",type="static"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "mycelium_route_seqno{{subnet=\"{}\"}}",
            net.subnet(3)
        )),
        "{metrics}"
    );

    // 2. kill -9 of C while pinging: A->D stops (it went through C), then comes back after
    // the restart, and the TCP connection opened before carries data again.
    net.signal(2, "-KILL");
    net.procs[2].take();
    assert!(
        net.wait_ping(0, 3, false, Duration::from_secs(5)).is_some(),
        "A->D keeps working without C: traffic did not go through C"
    );
    let t0 = Instant::now();
    net.start(2, &["tcp://10.77.3.2:9651"]);
    net.wait_ping(
        0,
        3,
        true,
        Duration::from_secs(120 / u64::from(divisor()) + 6),
    )
    .unwrap_or_else(|| panic!("A->D after C restarted; B's log:\n{}", net.log(1)));
    eprintln!(
        "A->D back {:.1} s after C was restarted",
        t0.elapsed().as_secs_f64()
    );
    echo(&mut conn, b"the same connection after C crashed");

    // 3. Silent cut of B–C and a new link A–D: A->D recovers at once over the origin route;
    // A->C once B declares C dead and retracts (the documented silent-failure time).
    net.unlink(1, 2);
    net.link(0, 3, 4);
    let t0 = Instant::now();
    let added = http(
        &net.ns(0),
        "POST",
        "/api/v1/admin/peers",
        Some(r#"{"endpoint":"tcp://10.77.4.2:9651"}"#),
    );
    assert_eq!(added.map(|r| r.0), Some(204), "adding A-D through the API");
    net.wait_ping(0, 3, true, Duration::from_secs(10))
        .expect("A->D over the new link");
    eprintln!(
        "A->D over A-D {:.1} s after the cut",
        t0.elapsed().as_secs_f64()
    );
    echo(&mut conn, b"the same connection over the new link");
    net.wait_ping(0, 2, true, silent_failure_bound())
        .unwrap_or_else(|| panic!("A->C via D; A's log:\n{}", net.log(0)));
    eprintln!(
        "A->C via D {:.1} s after the cut (bound {:?})",
        t0.elapsed().as_secs_f64(),
        silent_failure_bound()
    );

    // 4. D leaves without a word (SIGSTOP: its sockets stay open, it sends nothing): its
    // neighbours declare it dead and retract; A has no route to D any more.
    assert!(net.ping(0, 3));
    net.signal(3, "-STOP");
    let t0 = Instant::now();
    let d_subnet = net.subnet(3);
    while net.selected_subnets(0).contains(&d_subnet) {
        assert!(
            t0.elapsed() < silent_failure_bound(),
            "A still routes to D {:?} after D left",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "A dropped its route to D {:.1} s after D left",
        t0.elapsed().as_secs_f64()
    );
    assert!(!net.ping(0, 3), "D answers after it left");
    // It stays gone: no stale route comes back from B or C.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!net.selected_subnets(0).contains(&d_subnet));
    assert!(net.ping(0, 1), "A still reaches B");
}

/// Link-local discovery is on by default: two nodes on one veth with no peers configured find
/// each other through the `ff02::cafe` beacon and reach each other's overlay address. B is
/// told to look only on its A-side link, so C (on B's other link) finds nobody.
#[test]
fn nodes_on_a_link_find_each_other() {
    if !can_run("nodes_on_a_link_find_each_other") {
        return;
    }
    let mut net = Net::new("mycd", 3);
    net.link(0, 1, 5);
    net.link(1, 2, 6);
    // Link-local addresses are usable once duplicate address detection is over.
    std::thread::sleep(Duration::from_secs(2));
    let b_side_a = format!("{}10", net.prefix);
    net.start_with(0, &[], &[]);
    net.start_with(1, &[], &["--peer-discovery-interface", &b_side_a]);
    let t = net
        .wait_ping(0, 1, true, Duration::from_secs(8))
        .unwrap_or_else(|| {
            panic!(
                "A reaches B through a discovered link; logs:\n{}\n{}",
                net.log(0),
                net.log(1)
            )
        });
    eprintln!("A->B over a discovered link after {:.1} s", t.as_secs_f64());
    let (_, peers) = http(&net.ns(0), "GET", "/api/v1/admin/peers", None).expect("peers");
    assert!(peers.contains("fe80::"), "{peers}");
    net.start_with(2, &[], &[]);
    std::thread::sleep(Duration::from_secs(3));
    let (_, peers) = http(&net.ns(2), "GET", "/api/v1/admin/peers", None).expect("peers");
    assert_eq!(peers, "[]", "C found a peer");
}

/// QUIC links as upstream (quic:// peers): control packets on one stream, data packets as
/// DATAGRAMs; a full-size packet that does not fit the path's datagram size goes on the
/// stream. A reaches C over two QUIC hops with small and full-MTU pings and TCP.
#[test]
fn three_nodes_over_quic() {
    if !can_run("three_nodes_over_quic") {
        return;
    }
    let mut net = Net::new("mycq", 3);
    net.link(0, 1, 7);
    net.link(1, 2, 8);
    net.start(2, &[]);
    net.start(1, &["quic://10.77.8.2:9651"]);
    net.start(0, &["quic://10.77.7.2:9651"]);
    let t = net
        .wait_ping(0, 2, true, Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "A reaches C over QUIC; logs:\n{}\n{}",
                net.log(0),
                net.log(1)
            )
        });
    eprintln!("A->C over two QUIC hops after {:.1} s", t.as_secs_f64());
    // 1352 bytes of payload: a 1400-byte IPv6 packet, the TUN MTU.
    assert!(sh(&[
        "ip",
        "netns",
        "exec",
        &net.ns(0),
        "ping",
        "-6",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-s",
        "1352",
        &net.addrs[2].to_string(),
    ]));
    net.echo_server(2);
    let mut conn = net.connect(0, 2);
    let big = vec![7u8; 256 * 1024];
    echo(&mut conn, &big);
    let (_, peers) = http(&net.ns(0), "GET", "/api/v1/admin/peers", None).expect("peers");
    assert!(peers.contains(r#""proto":"quic""#), "{peers}");
    let (_, metrics) = http(&net.ns(0), "GET", "/metrics", None).expect("metrics");
    assert!(
        metrics.contains(r#"mycelium_peer_up{endpoint="quic://10.77.7.2:9651",type="static"} 1"#),
        "{metrics}"
    );
    // Small packets went as DATAGRAMs, full-MTU ones (1476-byte frames: over a 1500-byte
    // path's datagram size) on the stream.
    let count = |what: &str| -> u64 {
        let key = format!("mycelium_packets_total{{what=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("quic_datagram") > 0, "{metrics}");
    assert!(count("quic_stream") > 0, "{metrics}");
}

/// `zos node run --mycelium`: the node's host instance runs in the node's network namespace
/// with the key converted from the node's identity (upstream's derivation), and two nodes on
/// one link find each other by link-local discovery (no peers given) and ping. The nodes
/// have no ledger (they keep retrying registration): the host instance does not wait for it.
#[test]
fn node_host_instances_find_each_other() {
    if !can_run("node_host_instances_find_each_other") {
        return;
    }
    let mut net = Net::new("myh", 2);
    net.link(0, 1, 9);
    std::thread::sleep(Duration::from_secs(2));
    for (i, name) in NAMES.iter().enumerate().take(2) {
        let data = net.dir.0.join(format!("node{i}"));
        let log = std::fs::File::create(net.dir.0.join(format!("{name}.log"))).expect("log");
        let c = Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(["node", "run", "--mycelium", "--farm", "1"])
            .args([
                "--ledger",
                "http://127.0.0.1:9",
                "--relay",
                "ws://127.0.0.1:9",
            ])
            .arg("--net-namespace")
            .arg(net.ns(i))
            .arg("--data")
            .arg(&data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("zos node run");
        net.procs[i] = Some(Proc(c));
    }
    // Each host address is the one derived from that node's seed, on my0 in its namespace.
    for i in 0..2 {
        let seed_file = net.dir.0.join(format!("node{i}")).join("seed.txt");
        let t0 = Instant::now();
        let seed = loop {
            if let Ok(b) = std::fs::read(&seed_file)
                && let Ok(s) = zos_node::identity::decode(&seed_file, &b)
            {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no seed: {}",
                net.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let want = zos_mycelium::SecretKey::from_ed25519_seed(&seed)
            .public_key()
            .address();
        net.addrs[i] = want;
        let t0 = Instant::now();
        loop {
            let out = Command::new("ip")
                .args(["-n", &net.ns(i), "-6", "-o", "addr", "show", "dev", "my0"])
                .output()
                .expect("ip");
            if String::from_utf8_lossy(&out.stdout).contains(&format!("{want}/7")) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no my0 with {want} in {}: {}",
                net.ns(i),
                net.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let t = net
        .wait_ping(0, 1, true, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("node hosts do not link: {}\n{}", net.log(0), net.log(1)));
    eprintln!(
        "host instances linked and pinged after {:.1} s",
        t.as_secs_f64()
    );
}
