//! The ledger on etcd, end to end and root-free: real `etcd` members (3.4, spawned on loopback
//! ports, data in a tempdir) and ledger servers as child processes (this test binary run again
//! as `child_ledger_server`), killed on drop. Skips loudly without `etcd`.
//!
//! - `cluster_survives_producer_kills_and_member_restart`: signed transfers from 16 concurrent
//!   clients while the producer is killed -9 twice and one etcd member is stopped and
//!   restarted: every acknowledged transaction is in the chain exactly once, the chain
//!   verifies, every server reaches the same head and proves the same balance from its own
//!   state tree, an event follower sees each event once.
//! - `partitioned_producer_steps_down_before_its_lease_ends`: the producer's etcd connection is
//!   cut (a TCP proxy the test severs): it stops producing before its lease can expire, another
//!   server takes over, and every block after the cut is the new producer's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use zos_ledger::store::{EtcdConfig, EtcdStore};
use zos_ledger::{Call, EventRecord, LedgerClient, Receipt, SignedTransaction};
use zos_types::crypto::{KeyPair, KeyType};

const PRODUCER_SEED: [u8; 32] = [7; 32];
const TTL_SECS: u64 = 2;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_installed() -> bool {
    Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A child process killed (and reaped) on drop.
struct Proc(Option<Child>);

impl Proc {
    fn kill(&mut self, signal: &str) {
        if let Some(c) = &self.0 {
            let _ = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status();
        }
        if signal == "-9" || signal == "-TERM" {
            if let Some(mut c) = self.0.take() {
                let _ = c.wait();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An etcd cluster of `n` members on loopback.
struct EtcdCluster {
    dir: PathBuf,
    members: Vec<(String, u16, u16)>,
    procs: Vec<Proc>,
}

impl EtcdCluster {
    fn start(dir: &Path, n: usize) -> Self {
        let members: Vec<(String, u16, u16)> = (0..n)
            .map(|i| (format!("m{i}"), free_port(), free_port()))
            .collect();
        let mut c = EtcdCluster {
            dir: dir.to_path_buf(),
            members,
            procs: Vec::new(),
        };
        for i in 0..n {
            let p = c.spawn(i);
            c.procs.push(p);
        }
        c.wait_healthy();
        c
    }

    fn spawn(&self, i: usize) -> Proc {
        let (name, client, peer) = &self.members[i];
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect();
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("etcd")
            .args([
                "--name",
                name,
                "--data-dir",
                self.dir.join(name).to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &format!("zos-test-{}", std::process::id()),
                "--initial-cluster-state",
                "new",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        Proc(Some(child))
    }

    fn urls(&self) -> String {
        self.members
            .iter()
            .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, c, _) in &self.members {
            loop {
                let ok = Command::new("etcdctl")
                    .args([
                        "--endpoints",
                        &format!("http://127.0.0.1:{c}"),
                        "endpoint",
                        "health",
                    ])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                assert!(Instant::now() < deadline, "etcd member on {c} not healthy");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    fn stop(&mut self, i: usize) {
        self.procs[i].kill("-TERM");
    }

    fn restart(&mut self, i: usize) {
        self.procs[i] = self.spawn(i);
    }
}

/// On a failed test, prints the end of every log in the test's directory (the ledger servers'
/// and etcd members'): the directory is a tempdir, gone after the test.
struct LogsOnPanic(PathBuf);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return;
        };
        let mut logs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(80);
            eprintln!("==== {} (last {} lines)", p.display(), lines.len() - from);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Ledger servers as child processes of this test binary.
struct Servers {
    dir: PathBuf,
    etcd: String,
    ports: Vec<u16>,
    procs: Vec<Proc>,
}

impl Servers {
    fn start(dir: &Path, etcd: &str, n: usize) -> Self {
        let mut s = Servers {
            dir: dir.to_path_buf(),
            etcd: etcd.to_string(),
            ports: (0..n).map(|_| free_port()).collect(),
            procs: Vec::new(),
        };
        for i in 0..n {
            let p = s.spawn(i, etcd);
            s.procs.push(p);
        }
        s
    }

    /// Server `i` with its own etcd URL list (a proxy, for the partition test).
    fn spawn(&self, i: usize, etcd: &str) -> Proc {
        let data = self.dir.join(format!("ledger{i}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("producer.key"), hex::encode(PRODUCER_SEED)).unwrap();
        let log = std::fs::File::create(self.dir.join(format!("ledger{i}.log"))).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_ledger_server", "--ignored", "--nocapture"])
            .env("ZOS_CHILD_DATA", &data)
            .env("ZOS_CHILD_ETCD", etcd)
            .env("ZOS_CHILD_LISTEN", format!("127.0.0.1:{}", self.ports[i]))
            .env("ZOS_CHILD_ID", format!("ledger{i}"))
            // The test's RUST_LOG, if any, reaches the servers (e.g. zos_ledger=debug).
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc(Some(child))
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn urls(&self) -> String {
        (0..self.ports.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn client(&self, i: usize) -> LedgerClient {
        LedgerClient::new(&self.url(i)).unwrap()
    }

    async fn wait_up(&self, i: usize) {
        let c = self.client(i);
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.head().await.is_err() {
            assert!(Instant::now() < deadline, "ledger{i} did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn status(&self, i: usize) -> Option<Value> {
        self.client(i)
            .call_one::<Value>("ledger_cluster", json!([]))
            .await
            .ok()
    }

    /// The index of the server that holds the producer lease (waits for one).
    async fn producer(&self, skip: Option<usize>) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..self.ports.len() {
                if Some(i) == skip {
                    continue;
                }
                if let Some(s) = self.status(i).await {
                    if s["producer"] == json!(true) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no producer elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Not a test: the ledger server process the cluster tests spawn (configured by env).
#[test]
#[ignore = "child process of the etcd cluster tests"]
fn child_ledger_server() {
    let Ok(data) = std::env::var("ZOS_CHILD_DATA") else {
        return;
    };
    let etcd = std::env::var("ZOS_CHILD_ETCD").unwrap();
    let listen: SocketAddr = std::env::var("ZOS_CHILD_LISTEN").unwrap().parse().unwrap();
    let id = std::env::var("ZOS_CHILD_ID").unwrap();
    // The server's own logs (RUST_LOG, to stderr: the ledger<i>.log the test keeps) are what
    // explains a failover that went wrong.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    // No etcd URL: the embedded redb store (the benchmark's baseline).
    let ec = (!etcd.is_empty()).then(|| {
        let mut ec = EtcdConfig::new(&etcd, &id).unwrap();
        ec.lease_ttl = Duration::from_secs(TTL_SECS);
        ec
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut cfg = zos_ledger::LedgerConfig::dev(PathBuf::from(data));
        cfg.listen = listen;
        cfg.etcd = ec;
        let server = zos_ledger::LedgerServer::bind(cfg).await.unwrap();
        server.run(std::future::pending()).await.unwrap();
    });
}

fn skip() -> bool {
    if etcd_installed() {
        return false;
    }
    eprintln!("SKIP: etcd is not installed (Debian: apt-get install etcd-server etcd-client)");
    true
}

fn sign(key: &KeyPair, gh: &[u8; 32], nonce: u64, to: &KeyPair) -> SignedTransaction {
    SignedTransaction::sign(
        key,
        gh,
        nonce,
        Call::Transfer {
            to: to.public(),
            amount: 1,
        },
    )
}

/// Submits until acknowledged: the client fails over by itself; a submission that still
/// failed is looked up (it may have landed) and otherwise sent again.
async fn submit_until_acked(c: &LedgerClient, tx: &SignedTransaction) -> Receipt {
    // Retries span a failover (the old producer's lease must run out first), with a growing
    // pause: ten retries without one could all fail inside the failover window, and a client
    // that gave up left the test waiting forever for transfers that never came.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(50);
    loop {
        match c.submit(tx.clone()).await {
            Ok(r) => return r,
            Err(e) => {
                if let Ok(Some(r)) = c.landed(tx).await {
                    return r;
                }
                assert!(
                    Instant::now() < deadline,
                    "transaction never acknowledged in 60 s: {e}"
                );
                eprintln!("retrying a submission: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_survives_producer_kills_and_member_restart() {
    if skip() {
        return;
    }
    let per_client: usize = std::env::var("ZOS_ETCD_TXS_PER_CLIENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    const CLIENTS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let _logs = LogsOnPanic(dir.path().to_path_buf());
    let mut etcd = EtcdCluster::start(dir.path(), 3);
    let servers = Arc::new(tokio::sync::Mutex::new(Servers::start(
        dir.path(),
        &etcd.urls(),
        3,
    )));
    let urls = {
        let s = servers.lock().await;
        for i in 0..3 {
            s.wait_up(i).await;
        }
        s.urls()
    };
    let client = LedgerClient::new(&urls).unwrap();
    let gh = client.genesis_hash().await.unwrap();
    let sink = KeyPair::from_seed(KeyType::Ed25519, [200; 32]);
    let keys: Vec<KeyPair> = (0..CLIENTS)
        .map(|i| KeyPair::from_seed(KeyType::Ed25519, [i as u8 + 1; 32]))
        .collect();
    for k in &keys {
        client.dev_fund(&k.public(), 1_000_000).await.unwrap();
    }

    // The event follower: all URLs, from height 0, until told to stop.
    let follower_client = LedgerClient::new(&urls).unwrap();
    let stop_follow = Arc::new(AtomicBool::new(false));
    let stop2 = stop_follow.clone();
    let follower = tokio::spawn(async move {
        let mut seen: Vec<EventRecord> = Vec::new();
        let mut stream = follower_client.subscribe_events(0).await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            match next {
                Ok(Some(Ok(e))) => seen.push(e),
                Ok(Some(Err(e))) => panic!("event stream failed: {e}"),
                Ok(None) => panic!("event stream ended"),
                Err(_) if stop2.load(Ordering::Relaxed) => return seen,
                Err(_) => {}
            }
        }
    });

    // The clients go on until the chaos is over (and send `per_client` each at least): a fixed
    // number could all be acknowledged before the last kill (it was, once signing got fast),
    // and a producer killed on an idle cluster tests nothing in flight and leaves its
    // successor no transaction to append, which the failover check below waits for.
    let done = Arc::new(AtomicUsize::new(0));
    let chaos_over = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in keys.clone() {
        let c = LedgerClient::new(&urls).unwrap();
        let sink = sink.clone();
        let done = done.clone();
        let chaos_over = chaos_over.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut latencies = Vec::new();
            let mut nonce = 0u64;
            while nonce < per_client as u64 || !chaos_over.load(Ordering::Relaxed) {
                let tx = sign(&k, &gh, nonce, &sink);
                nonce += 1;
                let t = Instant::now();
                let r = submit_until_acked(&c, &tx).await;
                latencies.push(t.elapsed());
                assert_eq!(r.tx_hash, hex::encode(tx.hash(&gh)));
                acked.push(r);
                done.fetch_add(1, Ordering::Relaxed);
            }
            (acked, latencies)
        }));
    }

    // Chaos: kill the producer at 1/4, stop and restart an etcd member at 1/2, kill the
    // producer again at 3/4 (of the planned transfers); killed servers are started again (they
    // catch up from etcd).
    let total = CLIENTS * per_client;
    let wait_for = |frac: usize| {
        let done = done.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            while done.load(Ordering::Relaxed) < total * frac / 4 {
                assert!(
                    Instant::now() < deadline,
                    "transfers stalled at {} of {total}",
                    done.load(Ordering::Relaxed)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut failovers = Vec::new();
    for (step, frac) in [(0, 1), (1, 2), (2, 3)] {
        wait_for(frac).await;
        if step == 1 {
            eprintln!("stopping etcd member m1");
            etcd.stop(1);
            tokio::time::sleep(Duration::from_secs(1)).await;
            etcd.restart(1);
            eprintln!("etcd member m1 restarted");
            continue;
        }
        let mut s = servers.lock().await;
        let p = s.producer(None).await;
        let head_before = s.client((p + 1) % 3).head().await.unwrap_or(0);
        eprintln!(
            "killing the producer ledger{p} (-9) at head {head_before}, {} transfers acknowledged",
            done.load(Ordering::Relaxed)
        );
        let killed = Instant::now();
        s.procs[p].kill("-9");
        let q = s.producer(Some(p)).await;
        // Failover: until the new producer has appended a block.
        let c = s.client(q);
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.head().await.unwrap_or(0) <= head_before {
            assert!(
                Instant::now() < deadline,
                "ledger{q} produced no block in 60 s after ledger{p} was killed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed.elapsed();
        eprintln!("ledger{q} took over in {took:?}");
        failovers.push(took);
        let etcd_urls = s.etcd.clone();
        s.procs[p] = s.spawn(p, &etcd_urls);
        s.wait_up(p).await;
    }
    chaos_over.store(true, Ordering::Relaxed);

    let mut acked: Vec<Receipt> = Vec::new();
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        let (a, l) = t.await.unwrap();
        acked.extend(a);
        lat.extend(l);
    }
    let elapsed = started.elapsed();
    lat.sort();
    eprintln!(
        "{} transfers acknowledged in {elapsed:?} ({:.0} tx/s), submit->receipt p50 {:?} p99 {:?}, \
         failovers {failovers:?}",
        acked.len(),
        acked.len() as f64 / elapsed.as_secs_f64(),
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100],
    );
    assert!(acked.len() >= total);
    let transfers = acked.len();

    // The etcd chain verifies; every server reaches its head (the server restarted last may
    // still be catching up: the chain is read only once all have), has the same block there
    // and proves the same balance from its own state tree.
    let s = servers.lock().await;
    let mut ec = EtcdConfig::new(&etcd.urls(), "verify").unwrap();
    ec.lease_ttl = Duration::from_secs(TTL_SECS);
    let store = tokio::task::spawn_blocking(move || EtcdStore::open(ec, false))
        .await
        .unwrap()
        .unwrap();
    let report = tokio::task::spawn_blocking(move || zos_ledger::verify(store))
        .await
        .unwrap()
        .unwrap();
    for i in 0..3 {
        let c = s.client(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.head().await.unwrap() < report.head {
            assert!(Instant::now() < deadline, "ledger{i} does not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b = c.block(report.head).await.unwrap().unwrap();
        assert_eq!(b.hash, report.head_hash, "ledger{i} has another chain");
        // Its own state tree (kept from the entries it applied) proves the sink's balance
        // against a head signed by the producer.
        let proven = c
            .verified_raw(&zos_ledger::state::keys::account(&sink.public()))
            .await
            .unwrap();
        let acct: zos_ledger::Account = serde_json::from_slice(&proven.value.unwrap()).unwrap();
        assert_eq!(
            acct.balance, transfers as u64,
            "ledger{i} proves another balance"
        );
    }
    assert_eq!(report.transactions as usize, transfers + CLIENTS);

    // Every acknowledged transaction is in the chain exactly once, where its receipt says.
    let head = report.head;
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut blocks = BTreeMap::new();
    for h in 0..=head {
        let b = client.block(h).await.unwrap().expect("block");
        for th in &b.header.tx_hashes {
            *count.entry(th.clone()).or_default() += 1;
        }
        blocks.insert(h, b);
    }
    assert!(
        count.values().all(|n| *n == 1),
        "a transaction appears twice"
    );
    for r in &acked {
        let b = &blocks[&r.height];
        assert_eq!(b.header.tx_hashes[r.index as usize], r.tx_hash);
    }
    // Funding (16) + transfers: nothing else, nothing lost.
    assert_eq!(count.len(), transfers + CLIENTS);

    // The follower saw every event of the chain exactly once, in order.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_follow.store(true, Ordering::Relaxed);
    let seen = follower.await.unwrap();
    let mut expected = Vec::new();
    for h in 0..=report.head {
        expected.extend(client.events(h).await.unwrap());
    }
    let positions: Vec<(u64, u32)> = seen.iter().map(|e| (e.height, e.index)).collect();
    let unique: HashSet<_> = positions.iter().collect();
    assert_eq!(
        unique.len(),
        positions.len(),
        "an event was delivered twice"
    );
    assert_eq!(seen.len(), expected.len(), "events missed");
    assert_eq!(seen, expected);
    eprintln!(
        "verify: head {} with {} transactions, {} events; follower saw {} events once each",
        report.head,
        report.transactions,
        report.events,
        seen.len()
    );
    drop(s);
}

/// A TCP proxy that can be severed: open connections are cut and new ones refused.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::Relaxed) {
                    continue;
                }
                let cut3 = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut out);
                    let watch = async {
                        while !cut3.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = watch => {}
                    }
                });
            }
        });
        Proxy { port, cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_producer_steps_down_before_its_lease_ends() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _logs = LogsOnPanic(dir.path().to_path_buf());
    let etcd = EtcdCluster::start(dir.path(), 1);
    let target: SocketAddr = format!("127.0.0.1:{}", etcd.members[0].1).parse().unwrap();
    let proxy = Proxy::start(target).await;
    let mut servers = Servers {
        dir: dir.path().to_path_buf(),
        etcd: etcd.urls(),
        ports: vec![free_port(), free_port()],
        procs: Vec::new(),
    };
    // Server 0 talks to etcd through the proxy and starts first: it is the producer.
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let p0 = servers.spawn(0, &via_proxy);
    servers.procs.push(p0);
    servers.wait_up(0).await;
    assert_eq!(servers.producer(None).await, 0);
    let p1 = servers.spawn(1, &etcd.urls());
    servers.procs.push(p1);
    servers.wait_up(1).await;

    let c0 = servers.client(0);
    let gh = c0.genesis_hash().await.unwrap();
    let key = KeyPair::from_seed(KeyType::Ed25519, [1; 32]);
    let sink = KeyPair::from_seed(KeyType::Ed25519, [2; 32]);
    c0.dev_fund(&key.public(), 1000).await.unwrap();
    for n in 0..5 {
        c0.submit(sign(&key, &gh, n, &sink)).await.unwrap();
    }
    let before = servers.status(0).await.unwrap();
    let head_at_cut = c0.head().await.unwrap();

    let cut_at = unix_ms();
    proxy.cut.store(true, Ordering::Relaxed);
    // Server 0 keeps serving reads but must stop producing before its lease can expire.
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 3);
    let stepped = loop {
        let s = servers.status(0).await.unwrap();
        if s["producer"] == json!(false) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the partitioned producer kept its role"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Its step-down is recorded when its producer loop notices (up to a tick later).
    let deadline = Instant::now() + Duration::from_secs(3);
    let stepped = if stepped["stepdowns"].as_u64() == Some(0) {
        loop {
            let s = servers.status(0).await.unwrap();
            if s["stepdowns"].as_u64() > Some(0) {
                break s;
            }
            assert!(Instant::now() < deadline, "no step-down recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    } else {
        stepped
    };
    let down = stepped["last_stepdown_unix_ms"].as_u64().unwrap();
    let expiry = stepped["last_lease_expiry_unix_ms"].as_u64().unwrap();
    eprintln!(
        "cut at {cut_at}, stepped down {} ms later, {} ms before its lease could expire",
        down.saturating_sub(cut_at),
        expiry as i64 - down as i64
    );
    assert!(
        down < expiry,
        "stepped down at {down}, after the lease could expire at {expiry}"
    );
    assert_eq!(
        stepped["appended"], before["appended"],
        "appended while partitioned"
    );

    // Server 1 takes over once etcd has expired server 0's lease, and accepts writes.
    assert_eq!(servers.producer(Some(0)).await, 1);
    let c1 = servers.client(1);
    for n in 5..10 {
        c1.submit(sign(&key, &gh, n, &sink)).await.unwrap();
    }
    // Heal: server 0 follows (and does not append anything of its own).
    proxy.cut.store(false, Ordering::Relaxed);
    let head = c1.head().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while c0.head().await.unwrap() < head {
        assert!(Instant::now() < deadline, "server 0 does not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c0.block(head).await.unwrap().unwrap().hash,
        c1.block(head).await.unwrap().unwrap().hash
    );
    let after = servers.status(0).await.unwrap();
    assert_eq!(after["appended"], before["appended"]);

    let mut ec = EtcdConfig::new(&etcd.urls(), "verify").unwrap();
    ec.lease_ttl = Duration::from_secs(TTL_SECS);
    let store = tokio::task::spawn_blocking(move || EtcdStore::open(ec, false))
        .await
        .unwrap()
        .unwrap();
    let leaders = store.entry_leaders().unwrap();
    let after_cut: Vec<_> = leaders.iter().filter(|(h, _)| *h > head_at_cut).collect();
    assert!(!after_cut.is_empty());
    assert!(
        after_cut.iter().all(|(_, id)| id == "ledger1"),
        "blocks after the cut by another producer: {after_cut:?}"
    );
    let report = tokio::task::spawn_blocking(move || zos_ledger::verify(store))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.transactions, 11);
}

/// Not a test: `scripts/bench-ledger-etcd.sh` runs it (release) with `ZOS_BENCH_STORE=etcd|redb`
/// and `ZOS_BENCH_TXS` (10,000 by default): signed transfers from 16 clients, submit→receipt
/// latency percentiles and throughput; on etcd 3 servers, client `i` starting at server `i % 3`
/// (two thirds of the submissions are forwarded to the producer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: scripts/bench-ledger-etcd.sh"]
async fn bench_submit_latency() {
    if skip() {
        return;
    }
    let store = std::env::var("ZOS_BENCH_STORE").unwrap_or_else(|_| "etcd".into());
    let total: usize = std::env::var("ZOS_BENCH_TXS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const CLIENTS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, servers, n) = if store == "etcd" {
        let etcd = EtcdCluster::start(dir.path(), 3);
        let s = Servers::start(dir.path(), &etcd.urls(), 3);
        (Some(etcd), s, 3)
    } else {
        (None, Servers::start(dir.path(), "", 1), 1)
    };
    for i in 0..n {
        servers.wait_up(i).await;
    }
    let client = LedgerClient::new(&servers.urls()).unwrap();
    let gh = client.genesis_hash().await.unwrap();
    let sink = KeyPair::from_seed(KeyType::Ed25519, [200; 32]);
    let keys: Vec<KeyPair> = (0..CLIENTS)
        .map(|i| KeyPair::from_seed(KeyType::Ed25519, [i as u8 + 1; 32]))
        .collect();
    for k in &keys {
        client.dev_fund(&k.public(), 1_000_000_000).await.unwrap();
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        let urls: Vec<String> = (0..n).map(|j| servers.url((i + j) % n)).collect();
        let c = LedgerClient::new(&urls.join(",")).unwrap();
        let sink = sink.clone();
        let per = total / CLIENTS + usize::from(i < total % CLIENTS);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for nonce in 0..per as u64 {
                let tx = sign(&k, &gh, nonce, &sink);
                let t = Instant::now();
                submit_until_acked(&c, &tx).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    lat.sort();
    let head = client.head().await.unwrap();
    println!(
        "BENCH store={store} servers={n} clients={CLIENTS} txs={} blocks={head} elapsed={:.2}s \
         tx/s={:.0} p50={:.1}ms p99={:.1}ms",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e3,
    );
}

/// A CA and a certificate it signed for `names` (client and server use): `(ca, cert, key)` PEMs.
fn pki(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "zos test etcd CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let issue = |names: &[&str]| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (cert, key) = issue(names);
    (ca_pem, cert, key)
}

/// etcd reached over TLS with client certificates (`--client-cert-auth`): the store opens and
/// commits with the cluster's CA and its client certificate; without a client certificate,
/// with another CA, or with http:// while TLS is configured, it refuses to open.
#[test]
fn etcd_over_tls_with_client_certificates() {
    if !etcd_installed() {
        eprintln!("SKIP: etcd_over_tls_with_client_certificates: etcd not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(&["127.0.0.1", "localhost"]);
    let w = |n: &str, s: &str| {
        let p = dir.path().join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    let (ca_f, cert_f, key_f) = (w("ca.pem", &ca), w("cert.pem", &cert), w("key.pem", &key));
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let _etcd = Proc(Some(
        Command::new("etcd")
            .args(["--name", "tls0", "--data-dir"])
            .arg(dir.path().join("tls0"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("tls0=http://127.0.0.1:{peer}"),
            ])
            .arg("--cert-file")
            .arg(&cert_f)
            .arg("--key-file")
            .arg(&key_f)
            .arg("--trusted-ca-file")
            .arg(&ca_f)
            .args(["--client-cert-auth", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd"),
    ));
    let tls = |client_cert: bool, ca_pem: &str| zos_ledger::store::EtcdTls {
        ca_pem: ca_pem.as_bytes().to_vec(),
        client: client_cert.then(|| (cert.as_bytes().to_vec(), key.as_bytes().to_vec())),
    };
    let open = |tls: Option<zos_ledger::store::EtcdTls>, url: &str| {
        let mut ec = EtcdConfig::new(url, "tls-test").unwrap();
        ec.lease_ttl = Duration::from_secs(TTL_SECS);
        ec.tls = tls;
        EtcdStore::open(ec, false)
    };
    // The member comes up within a few seconds; until then opening fails like any refusal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = loop {
        match open(Some(tls(true, &ca)), &url) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "etcd over TLS never answered: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(
        store.campaign("https://ledger.example").unwrap(),
        "the only server becomes the producer over TLS"
    );
    drop(store);
    let Err(e) = open(Some(tls(false, &ca)), &url) else {
        panic!("opened without a client certificate")
    };
    eprintln!("without a client certificate: {e}");
    assert!(e.to_string().contains("BadCertificate"), "{e}");
    let (other_ca, _, _) = pki(&["127.0.0.1"]);
    let Err(e) = open(Some(tls(true, &other_ca)), &url) else {
        panic!("trusted members' certificate from another CA")
    };
    eprintln!("another CA: {e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    let plain = format!("http://127.0.0.1:{client}");
    let Err(e) = open(Some(tls(true, &ca)), &plain) else {
        panic!("opened http with TLS configured")
    };
    assert!(e.to_string().contains("use https://"), "{e}");
    let Err(e) = open(None, &url) else {
        panic!("opened https without a CA")
    };
    assert!(e.to_string().contains("--etcd-cacert"), "{e}");
}
