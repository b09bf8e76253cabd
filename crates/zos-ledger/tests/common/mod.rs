//! Shared test helpers: an in-memory chain driven block by block, and an in-process server.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use zos_ledger::store::LedgerStore;
use zos_ledger::{
    Call, Chain, Event, LedgerClient, LedgerConfig, LedgerServer, MemStore, Reader,
    SignedTransaction, dev,
};
use zos_types::crypto::{KeyPair, KeyType};

/// Ledger time of the test genesis.
pub const T0: u64 = 1_700_000_000;

pub fn key(n: u8) -> KeyPair {
    KeyPair::from_seed(KeyType::Ed25519, [n; 32])
}

pub fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(16)
}

/// A chain on a `MemStore`; each submission is its own block at ledger time `now`.
pub struct Harness {
    pub store: Arc<dyn LedgerStore>,
    pub chain: Chain,
    pub reader: Reader,
    pub now: u64,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_store(Arc::new(MemStore::new()))
    }

    pub fn with_store(store: Arc<dyn LedgerStore>) -> Self {
        Self::with_genesis(store, dev::genesis(T0))
    }

    pub fn with_genesis(store: Arc<dyn LedgerStore>, genesis: zos_ledger::Genesis) -> Self {
        let chain = Chain::open(store.clone(), Some(genesis)).unwrap();
        Harness {
            reader: Reader::new(store.clone()),
            store,
            chain,
            now: T0,
        }
    }

    pub fn sign(&self, key: &KeyPair, call: Call) -> SignedTransaction {
        let nonce = self.reader.account(&key.public()).unwrap().nonce;
        SignedTransaction::sign(key, &self.chain.genesis_hash(), nonce, call)
    }

    pub fn submit(&mut self, tx: SignedTransaction) -> Result<Vec<Event>, String> {
        let out = self.chain.produce(&[tx], self.now, false).unwrap();
        out.results
            .into_iter()
            .next()
            .unwrap()
            .map(|r| r.events.into_iter().map(|e| e.event).collect())
    }

    pub fn send(&mut self, key: &KeyPair, call: Call) -> Result<Vec<Event>, String> {
        let tx = self.sign(key, call);
        self.submit(tx)
    }

    pub fn ok(&mut self, key: &KeyPair, call: Call) -> Vec<Event> {
        match self.send(key, call.clone()) {
            Ok(e) => e,
            Err(reason) => panic!("{call:?} rejected: {reason}"),
        }
    }

    /// Asserts the call is rejected with a reason containing `needle`, and leaves no trace.
    pub fn rejects(&mut self, key: &KeyPair, call: Call, needle: &str) {
        let before = self.snapshot();
        let head = self.chain.head().clone();
        match self.send(key, call.clone()) {
            Ok(e) => panic!("{call:?} accepted ({e:?}), expected {needle:?}"),
            Err(reason) => assert!(
                reason.contains(needle),
                "{call:?}: reason {reason:?} does not contain {needle:?}"
            ),
        }
        assert_eq!(self.snapshot(), before, "rejected {call:?} changed state");
        assert_eq!(self.chain.head(), &head, "rejected {call:?} made a block");
    }

    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.store
            .range(zos_ledger::store::Table::State, &[], None)
            .unwrap()
    }

    pub fn fund(&mut self, to: &KeyPair, amount: u64) {
        self.ok(
            &dev::faucet_key(),
            Call::Transfer {
                to: to.public(),
                amount,
            },
        );
    }

    /// A twin for `k`, returning its id.
    pub fn twin(&mut self, k: &KeyPair) -> u32 {
        self.ok(
            k,
            Call::CreateTwin {
                relays: vec!["relay.example".into()],
                e2e_key: None,
            },
        );
        self.reader
            .twin_by_account(&k.public())
            .unwrap()
            .unwrap()
            .id
    }
}

pub fn create_node(farm_id: u32) -> Call {
    Call::CreateNode {
        farm_id,
        resources: zos_ledger::Resources {
            cru: 8,
            sru: 1 << 40,
            hru: 4 << 40,
            mru: 32 << 30,
        },
        location: zos_ledger::Location {
            city: "Ghent".into(),
            country: "Belgium".into(),
            latitude: "51.05".into(),
            longitude: "3.72".into(),
        },
        interfaces: vec![zos_ledger::Interface {
            name: "zos".into(),
            mac: "52:54:00:12:34:56".into(),
            ips: vec!["10.0.0.5".into()],
        }],
        public_config: None,
        features: vec!["zmount".into(), "network".into()],
        version: "0.1.0".into(),
        virtualized: true,
        secure_boot: false,
        serial_number: "SN-1".into(),
    }
}

/// An in-process dev ledger on a free loopback port; the server stops when the returned sender
/// is dropped or fired.
pub async fn spawn_dev_server(
    dir: &std::path::Path,
) -> (
    LedgerClient,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let server = LedgerServer::bind(LedgerConfig::dev(dir.to_path_buf()))
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        server
            .run(async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (LedgerClient::new(&url).unwrap(), tx, handle)
}

/// A ledger server with chosen limits, stopped by `shutdown`.
pub struct Server {
    pub _dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    pub url: String,
    pub client: LedgerClient,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub handle: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(limits: zos_ledger::Limits, dev_mode: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = zos_ledger::LedgerConfig::dev(dir.path().to_path_buf());
        cfg.limits = limits;
        if !dev_mode {
            cfg.dev = false;
            cfg.genesis = Some(dev::genesis(wall()));
            cfg.block_interval = std::time::Duration::from_millis(10);
        }
        let server = zos_ledger::LedgerServer::bind(cfg).await.unwrap();
        let addr = server.local_addr();
        let url = format!("http://{addr}");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server {
            _dir: dir,
            addr,
            client: LedgerClient::new(&url).unwrap(),
            url,
            stop,
            handle,
        }
    }

    pub async fn shutdown(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(15), self.handle)
            .await
            .expect("ledger stops within 15 s")
            .unwrap();
    }
}

pub fn wall() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Resident memory of this process in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The soft limit on open files of this process.
pub fn nofile_soft() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}
