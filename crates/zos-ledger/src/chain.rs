//! The chain: genesis, block production (billing + transactions, one atomic commit), reads, and
//! the audit replay behind `zos ledger verify`.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use zos_types::crypto::{KeyPair, PublicKey};

use crate::billing;
use crate::error::LedgerError;
use crate::proof::{self, StateTree, TreeSnapshot};
use crate::runtime::{self, Params, TxError};
use crate::state::{Overlay, StateError, decode, keys, trailing_id};
use crate::store::migrate::{self, LEGACY_FORMAT, META_UPGRADE, Upgrade};
use crate::store::{Batch, LedgerStore, MemStore, Table};
use crate::tx::{
    Block, BlockHeader, Event, EventRecord, Receipt, SignedTransaction, TxLocation, events_hash,
};
use crate::types::{Account, Contract, Farm, Genesis, Node, PricingPolicy, Twin, ZosVersion};

const META_GENESIS: &[u8] = b"genesis";
const META_HEAD: &[u8] = b"head";
const META_DEV_OFFSET: &[u8] = b"dev_offset";

/// Largest step of one dev time advance: 10 years of 365.25 days.
pub const MAX_ADVANCE_SECS: u64 = 315_576_000;

/// Latest ledger time a dev advance may reach (9999-12-31T23:59:59Z): far beyond any real
/// deadline, far below where `u64` arithmetic on times could overflow.
pub const MAX_LEDGER_TIME: u64 = 253_402_300_799;
const META_FORMAT: &[u8] = b"format";
/// Version of the on-disk layout (keys and JSON records). A store written with another version
/// is refused rather than misread; a change of layout comes with a migration.
/// Version 2: headers carry a state root, blocks a producer signature, genesis a nonce.
/// A version 1 store is migrated when opened with the producer key (`store::migrate`).
pub const FORMAT_VERSION: u32 = 2;

fn height_key(h: u64) -> Vec<u8> {
    h.to_be_bytes().to_vec()
}

/// The writer side of a ledger: owned by the single block producer.
pub struct Chain {
    store: Arc<dyn LedgerStore>,
    genesis: Genesis,
    genesis_hash: [u8; 32],
    params: Params,
    head: Block,
    dev_offset: u64,
    /// Every level of the state tree at the head, for the state root and proofs; updated in
    /// place with each block's writes (copied first only while a reader still holds it).
    snapshot: Arc<TreeSnapshot>,
    /// Signs block headers (the key named `producer` in genesis).
    producer: Option<KeyPair>,
    /// Set on a ledger migrated from format 1: its legacy blocks end at `height`, and its
    /// producer key is recorded there rather than in genesis.
    upgrade: Option<Upgrade>,
}

/// The outcome of [`Chain::produce`].
#[derive(Debug)]
pub struct Produced {
    /// The committed block (`None` if there was nothing to commit).
    pub block: Option<Block>,
    /// Its events.
    pub events: Vec<EventRecord>,
    /// One entry per submitted transaction, in order: receipt or rejection text.
    pub results: Vec<Result<Receipt, String>>,
}

impl Chain {
    /// Opens a ledger in `store`, writing genesis (block 0) if the store is empty. A given
    /// `genesis` must match the stored one.
    pub fn open(
        store: Arc<dyn LedgerStore>,
        genesis: Option<Genesis>,
    ) -> Result<Chain, LedgerError> {
        Self::open_with_producer(store, genesis, None)
    }

    /// [`open`](Self::open) with the producer's key, which signs every new block. It must be
    /// the key genesis names; without one, blocks are unsigned (only where genesis names no
    /// producer: tests and the audit replay, which does not sign).
    pub fn open_with_producer(
        store: Arc<dyn LedgerStore>,
        genesis: Option<Genesis>,
        producer: Option<KeyPair>,
    ) -> Result<Chain, LedgerError> {
        let format: Option<u32> = read_json(&*store, Table::Meta, META_FORMAT)?;
        if format == Some(LEGACY_FORMAT) {
            let Some(key) = &producer else {
                return Err(LedgerError::Corrupt {
                    what: format!(
                        "store format {LEGACY_FORMAT} must be migrated first: open it with its \
                         producer key (`zos ledger serve` and `zos up` do)"
                    ),
                });
            };
            migrate_v1(&store, key)?;
        } else if let Some(found) = format.filter(|f| *f != FORMAT_VERSION) {
            return Err(LedgerError::Corrupt {
                what: format!("store format {found}, this build reads {FORMAT_VERSION}"),
            });
        }
        let upgrade: Option<Upgrade> = read_json(&*store, Table::Meta, META_UPGRADE)?;
        let stored: Option<Genesis> = read_json(&*store, Table::Meta, META_GENESIS)?;
        // A genesis file without nonce or producer is the one this ledger was started from if
        // everything else matches (serve fills both in when it creates the ledger).
        let genesis = genesis.map(|mut g| {
            if let Some(s) = &stored {
                if g.nonce.is_none() {
                    g.nonce.clone_from(&s.nonce);
                }
                if g.producer.is_none() {
                    g.producer = s.producer;
                }
                // A migrated ledger's genesis names no producer (its hash is signed into every
                // transaction); its producer is the upgrade's.
                if let Some(u) = &upgrade {
                    if s.producer.is_none() && g.producer == Some(u.producer) {
                        g.producer = None;
                    }
                }
            }
            g
        });
        // The key must be the one genesis (or the upgrade record) names, checked before
        // anything is written.
        let named = match (&upgrade, stored.as_ref().or(genesis.as_ref())) {
            (Some(u), _) => Some(Some(u.producer)),
            (None, g) => g.map(|g| g.producer),
        };
        if let (Some(k), Some(named)) = (&producer, named) {
            if named != Some(k.public()) {
                return Err(LedgerError::Config(format!(
                    "producer key {} is not the one genesis names ({})",
                    k.public().to_hex(),
                    named.map(|p| p.to_hex()).unwrap_or("none".into())
                )));
            }
        }
        let genesis = match (stored, genesis) {
            (Some(s), Some(g)) if s != g => {
                return Err(LedgerError::GenesisMismatch {
                    stored: hex::encode(s.hash()),
                    given: hex::encode(g.hash()),
                });
            }
            (Some(s), _) => s,
            (None, Some(g)) => {
                write_genesis(&*store, &g, producer.as_ref())?;
                g
            }
            (None, None) => return Err(LedgerError::NoGenesis),
        };
        let height: u64 =
            read_json(&*store, Table::Meta, META_HEAD)?.ok_or(LedgerError::Corrupt {
                what: "meta head missing".into(),
            })?;
        let head: Block = read_json(&*store, Table::Blocks, &height_key(height))?.ok_or(
            LedgerError::Corrupt {
                what: format!("head block {height} missing"),
            },
        )?;
        let dev_offset = read_json(&*store, Table::Meta, META_DEV_OFFSET)?.unwrap_or(0);
        let pairs = store.range(Table::State, &[], None)?;
        let snapshot = Arc::new(TreeSnapshot::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ));
        if hex::encode(snapshot.root()) != head.header.state_root {
            return Err(LedgerError::Corrupt {
                what: format!("state does not match the state root of head block {height}"),
            });
        }
        Ok(Chain {
            snapshot,
            producer,
            upgrade,
            params: params(&genesis),
            genesis_hash: genesis.hash(),
            genesis,
            store,
            head,
            dev_offset,
        })
    }

    /// The genesis config.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The key that signs this ledger's blocks: genesis names it, or, on a ledger migrated
    /// from format 1, the upgrade record.
    pub fn producer_key(&self) -> Option<PublicKey> {
        self.genesis
            .producer
            .or(self.upgrade.as_ref().map(|u| u.producer))
    }

    /// Where the legacy (format 1) blocks of a migrated ledger end.
    pub fn upgrade(&self) -> Option<&Upgrade> {
        self.upgrade.as_ref()
    }

    /// The genesis hash (part of every signed transaction).
    pub fn genesis_hash(&self) -> [u8; 32] {
        self.genesis_hash
    }

    /// The store this chain writes to.
    pub fn store(&self) -> Arc<dyn LedgerStore> {
        self.store.clone()
    }

    /// The current head block.
    pub fn head(&self) -> &Block {
        &self.head
    }

    /// The state tree at the head (for proofs).
    pub fn snapshot(&self) -> Arc<TreeSnapshot> {
        self.snapshot.clone()
    }

    /// Ledger time now: wall clock plus the dev offset, never before the head's time.
    pub fn now(&self) -> u64 {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        wall.saturating_add(self.dev_offset)
            .max(self.head.header.timestamp)
    }

    /// Moves ledger time forward by `seconds` (dev mode; persisted with the next block). At most
    /// [`MAX_ADVANCE_SECS`] per call, and ledger time may not pass [`MAX_LEDGER_TIME`]: a huge
    /// jump would leave every deadline (billing, grace periods) at the end of time for good.
    pub fn advance_time(&mut self, seconds: u64) -> Result<(), String> {
        if seconds > MAX_ADVANCE_SECS {
            return Err(format!(
                "dev_advanceTime: at most {MAX_ADVANCE_SECS} s (10 years) per call, got {seconds}"
            ));
        }
        let offset = self
            .dev_offset
            .checked_add(seconds)
            .ok_or_else(|| "dev_advanceTime: the time offset would overflow".to_string())?;
        let after = self.now().checked_add(seconds);
        match after {
            Some(t) if t <= MAX_LEDGER_TIME => {
                self.dev_offset = offset;
                Ok(())
            }
            _ => Err(format!(
                "dev_advanceTime: ledger time {} + {seconds} s would pass {MAX_LEDGER_TIME} \
                 (9999-12-31T23:59:59Z)",
                self.now()
            )),
        }
    }

    /// Builds the next block at ledger time `now`: billing first, then each transaction that
    /// passes its checks; rejected ones leave no trace. Commits it in one store batch unless
    /// there is nothing to commit and `force` is false.
    pub fn produce(
        &mut self,
        txs: &[SignedTransaction],
        now: u64,
        force: bool,
    ) -> Result<Produced, LedgerError> {
        self.produce_with(txs, now, force, Batch::default())
    }

    /// [`produce`](Self::produce), committing `extra` writes in the block's batch (the format
    /// migration's).
    fn produce_with(
        &mut self,
        txs: &[SignedTransaction],
        now: u64,
        force: bool,
        extra: Batch,
    ) -> Result<Produced, LedgerError> {
        let ts = now.max(self.head.header.timestamp);
        let height = self.head.header.height + 1;
        let mut st = Overlay::new(&*self.store);
        let mut events: Vec<Event> = Vec::new();
        billing::run(&mut st, &self.params, ts, &mut events).map_err(internal)?;
        st.commit_tx();

        let mut results = Vec::with_capacity(txs.len());
        let mut included = Vec::new();
        let mut tx_events = Vec::new();
        for tx in txs {
            let hash = tx.hash(&self.genesis_hash);
            match self.apply_one(&mut st, ts, tx) {
                Ok(evs) => {
                    st.commit_tx();
                    let first = events.len();
                    events.extend(evs);
                    tx_events.push((first, events.len()));
                    results.push(Ok(included.len()));
                    included.push((tx.clone(), hash));
                }
                Err(TxError::State(e)) => return Err(e.into()),
                Err(e) => {
                    st.rollback_tx();
                    results.push(Err(e.to_string()));
                }
            }
        }
        let writes = st.into_writes();
        if included.is_empty() && writes.is_empty() && !force {
            let results = results
                .into_iter()
                .map(|r| r.map(|_| unreachable_receipt()))
                .collect::<Vec<_>>();
            return Ok(Produced {
                block: None,
                events: Vec::new(),
                results,
            });
        }

        // The tree follows the block's writes (incrementally: cached leaves, only the changed
        // paths and, after an insertion or removal, the nodes after it); undone if the commit
        // fails. Published copies held by readers are not touched (copy on write).
        let changes = writes
            .iter()
            .map(|(k, v)| (k.clone(), v.as_deref().map(proof::value_hash)))
            .collect();
        let undo = Arc::make_mut(&mut self.snapshot).update(changes);
        let snapshot = &self.snapshot;
        let header = BlockHeader {
            height,
            parent_hash: self.head.hash.clone(),
            timestamp: ts,
            tx_hashes: included.iter().map(|(_, h)| hex::encode(h)).collect(),
            events_hash: hex::encode(events_hash(&events)),
            state_root: hex::encode(snapshot.root()),
        };
        let legacy = self.upgrade.as_ref().is_some_and(|u| height <= u.height);
        let block = if legacy {
            // Only the audit replay of a migrated ledger builds these again.
            let header = BlockHeader {
                state_root: String::new(),
                ..header
            };
            let hash = migrate::legacy_hash(&header).expect("headers we build have valid hex");
            Block {
                header,
                hash: hex::encode(hash),
                signature: None,
                transactions: included.iter().map(|(t, _)| t.clone()).collect(),
            }
        } else {
            let hash = header.hash().expect("headers we build have valid hex");
            Block {
                header,
                hash: hex::encode(hash),
                signature: self
                    .producer
                    .as_ref()
                    .map(|k| proof::sign_head(k, &self.genesis_hash, &hash)),
                transactions: included.iter().map(|(t, _)| t.clone()).collect(),
            }
        };
        let records: Vec<EventRecord> = events
            .iter()
            .enumerate()
            .map(|(i, e)| EventRecord {
                height,
                index: i as u32,
                event: e.clone(),
            })
            .collect();

        let mut batch = extra;
        for (k, v) in writes {
            match v {
                Some(v) => batch.put(Table::State, k, v),
                None => batch.delete(Table::State, k),
            }
        }
        for (i, (_, h)) in included.iter().enumerate() {
            let (first, end) = tx_events[i];
            let loc = TxLocation {
                height,
                index: i as u32,
                events: Some([first as u32, end as u32]),
            };
            batch.put(Table::TxIndex, h.to_vec(), to_json(&loc));
        }
        batch.put(Table::Blocks, height_key(height), to_json(&block));
        batch.put(Table::Events, height_key(height), to_json(&events));
        batch.put(Table::Meta, META_HEAD.to_vec(), to_json(&height));
        batch.put(
            Table::Meta,
            META_DEV_OFFSET.to_vec(),
            to_json(&self.dev_offset),
        );
        if let Err(e) = self.store.commit(batch) {
            Arc::make_mut(&mut self.snapshot).update(undo);
            return Err(e.into());
        }
        self.head = block.clone();

        let results = results
            .into_iter()
            .map(|r| {
                r.map(|idx| {
                    let (first, end) = tx_events[idx];
                    Receipt {
                        tx_hash: hex::encode(included[idx].1),
                        height,
                        index: idx as u32,
                        events: records[first..end].to_vec(),
                    }
                })
            })
            .collect();
        Ok(Produced {
            block: Some(block),
            events: records,
            results,
        })
    }

    fn apply_one(
        &self,
        st: &mut Overlay<'_>,
        now: u64,
        tx: &SignedTransaction,
    ) -> Result<Vec<Event>, TxError> {
        if !tx.verify(&self.genesis_hash) {
            return Err(TxError::BadSignature);
        }
        let mut acct = runtime::account(st, &tx.account)?;
        if tx.nonce < acct.nonce {
            return Err(TxError::StaleNonce {
                expected: acct.nonce,
                got: tx.nonce,
            });
        }
        if tx.nonce > acct.nonce {
            return Err(TxError::FutureNonce {
                expected: acct.nonce,
                got: tx.nonce,
            });
        }
        let events = runtime::apply(st, &self.params, now, &tx.account, &tx.call)?;
        // Re-read: the call may have changed this account's balance.
        acct = runtime::account(st, &tx.account)?;
        acct.nonce += 1;
        st.put(keys::account(&tx.account), &acct);
        Ok(events)
    }
}

fn params(g: &Genesis) -> Params {
    Params {
        council: g.council,
        billing_interval: g.billing_interval_secs.max(1),
        grace_period: g.grace_period_secs,
        offline_cutoff: g.offline_cutoff_secs,
    }
}

/// Migrates a format 1 store to format 2 in one store batch (see `store::migrate`): legacy
/// blocks re-encoded, the upgrade record naming `key`, and block `head + 1` produced (empty
/// but for what billing does at the head's time, as the audit replay derives it) and signed.
fn migrate_v1(store: &Arc<dyn LedgerStore>, key: &KeyPair) -> Result<(), LedgerError> {
    let corrupt = |what: &str| LedgerError::Corrupt {
        what: format!("migrating from format {LEGACY_FORMAT}: {what}"),
    };
    let genesis: Genesis =
        read_json(&**store, Table::Meta, META_GENESIS)?.ok_or_else(|| corrupt("no genesis"))?;
    if genesis.producer.is_some() || genesis.nonce.is_some() {
        return Err(corrupt("genesis has format 2 fields"));
    }
    let height: u64 =
        read_json(&**store, Table::Meta, META_HEAD)?.ok_or_else(|| corrupt("meta head missing"))?;
    let mut extra = Batch::default();
    let head =
        migrate::rewrite_legacy_blocks(&**store, height, &mut extra).map_err(|e| match e {
            migrate::MigrationError::Store(e) => LedgerError::from(e),
            other => corrupt(&other.to_string()),
        })?;
    let upgrade = Upgrade {
        from_format: LEGACY_FORMAT,
        height,
        producer: key.public(),
    };
    extra.put(Table::Meta, META_FORMAT.to_vec(), to_json(&FORMAT_VERSION));
    extra.put(Table::Meta, META_UPGRADE.to_vec(), to_json(&upgrade));
    let pairs = store.range(Table::State, &[], None)?;
    let snapshot = Arc::new(TreeSnapshot::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
    ));
    let ts = head.header.timestamp;
    let mut chain = Chain {
        store: store.clone(),
        params: params(&genesis),
        genesis_hash: genesis.hash(),
        genesis,
        head,
        dev_offset: read_json(&**store, Table::Meta, META_DEV_OFFSET)?.unwrap_or(0),
        snapshot,
        producer: Some(key.clone()),
        upgrade: Some(upgrade),
    };
    chain.produce_with(&[], ts, true, extra)?;
    tracing::info!(
        legacy_head = height,
        producer = %key.public().to_hex(),
        "migrated the ledger store from format {LEGACY_FORMAT} to {FORMAT_VERSION}"
    );
    Ok(())
}

/// Never observed: a result is only `Ok` when its transaction was included, which forces a block.
fn unreachable_receipt() -> Receipt {
    Receipt {
        tx_hash: String::new(),
        height: 0,
        index: 0,
        events: Vec::new(),
    }
}

fn internal(e: TxError) -> LedgerError {
    match e {
        TxError::State(s) => s.into(),
        other => LedgerError::Corrupt {
            what: format!("billing failed: {other}"),
        },
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("ledger records always serialise")
}

fn read_json<T: DeserializeOwned>(
    store: &dyn LedgerStore,
    table: Table,
    key: &[u8],
) -> Result<Option<T>, StateError> {
    match store.get(table, key)? {
        None => Ok(None),
        Some(b) => decode(table, key, &b).map(Some),
    }
}

fn write_genesis(
    store: &dyn LedgerStore,
    g: &Genesis,
    producer: Option<&KeyPair>,
) -> Result<(), LedgerError> {
    let mut st = Overlay::new(store);
    for a in &g.accounts {
        let mut acct: Account = st.get(&keys::account(&a.account))?.unwrap_or_default();
        acct.balance = acct.balance.saturating_add(a.balance);
        st.put(keys::account(&a.account), &acct);
    }
    st.put(keys::PRICING.to_vec(), &g.pricing);
    st.commit_tx();
    let writes = st.into_writes();
    let tree = StateTree::from_pairs(
        writes
            .iter()
            .filter_map(|(k, v)| Some((k.as_slice(), v.as_deref()?))),
    );
    let header = BlockHeader {
        height: 0,
        parent_hash: hex::encode([0u8; 32]),
        timestamp: g.timestamp,
        tx_hashes: Vec::new(),
        events_hash: hex::encode(g.hash()),
        state_root: hex::encode(tree.snapshot().root()),
    };
    let hash = header.hash().expect("genesis header has valid hex");
    let block = Block {
        hash: hex::encode(hash),
        signature: producer.map(|k| proof::sign_head(k, &g.hash(), &hash)),
        header,
        transactions: Vec::new(),
    };
    let mut batch = Batch::default();
    for (k, v) in writes {
        if let Some(v) = v {
            batch.put(Table::State, k, v);
        }
    }
    batch.put(Table::Meta, META_FORMAT.to_vec(), to_json(&FORMAT_VERSION));
    batch.put(Table::Meta, META_GENESIS.to_vec(), to_json(g));
    batch.put(Table::Meta, META_HEAD.to_vec(), to_json(&0u64));
    batch.put(Table::Blocks, height_key(0), to_json(&block));
    batch.put(Table::Events, height_key(0), to_json(&Vec::<Event>::new()));
    store.commit(batch)?;
    Ok(())
}

/// The genesis stored in `store`, if it holds a ledger.
pub fn stored_genesis(store: &dyn LedgerStore) -> Result<Option<Genesis>, LedgerError> {
    Ok(read_json(store, Table::Meta, META_GENESIS)?)
}

/// Read access for RPC handlers and subscriptions (cheap to clone, safe to use concurrently
/// with the producer: every read sees a committed block).
#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn LedgerStore>,
}

impl Reader {
    /// A reader over `store`.
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Reader { store }
    }

    fn state<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StateError> {
        read_json(&*self.store, Table::State, key)
    }

    /// Head height.
    pub fn head(&self) -> Result<u64, StateError> {
        Ok(read_json(&*self.store, Table::Meta, META_HEAD)?.unwrap_or(0))
    }
    /// Block by height.
    pub fn block(&self, h: u64) -> Result<Option<Block>, StateError> {
        read_json(&*self.store, Table::Blocks, &height_key(h))
    }
    /// Events of a block.
    pub fn events(&self, h: u64) -> Result<Vec<EventRecord>, StateError> {
        let evs: Vec<Event> =
            read_json(&*self.store, Table::Events, &height_key(h))?.unwrap_or_default();
        Ok(evs
            .into_iter()
            .enumerate()
            .map(|(i, event)| EventRecord {
                height: h,
                index: i as u32,
                event,
            })
            .collect())
    }
    /// Where a transaction landed.
    pub fn tx(&self, hash: &[u8; 32]) -> Result<Option<TxLocation>, StateError> {
        read_json(&*self.store, Table::TxIndex, hash)
    }
    /// The raw stored value of a state key (JSON bytes).
    pub fn raw_state(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.store.get(Table::State, key)?)
    }
    /// Account balance and nonce.
    pub fn account(&self, a: &PublicKey) -> Result<Account, StateError> {
        Ok(self.state(&keys::account(a))?.unwrap_or_default())
    }
    /// Twin by id.
    pub fn twin(&self, id: u32) -> Result<Option<Twin>, StateError> {
        self.state(&keys::twin(id))
    }
    /// Twin by account.
    pub fn twin_by_account(&self, a: &PublicKey) -> Result<Option<Twin>, StateError> {
        match self.state::<u32>(&keys::twin_by_account(a))? {
            Some(id) => self.twin(id),
            None => Ok(None),
        }
    }
    /// Farm by id.
    pub fn farm(&self, id: u32) -> Result<Option<Farm>, StateError> {
        self.state(&keys::farm(id))
    }
    /// Farm by name.
    pub fn farm_by_name(&self, name: &str) -> Result<Option<Farm>, StateError> {
        match self.state::<u32>(&keys::farm_by_name(name))? {
            Some(id) => self.farm(id),
            None => Ok(None),
        }
    }
    /// Node by id.
    pub fn node(&self, id: u32) -> Result<Option<Node>, StateError> {
        self.state(&keys::node(id))
    }
    /// Node by its twin.
    pub fn node_by_twin(&self, twin: u32) -> Result<Option<Node>, StateError> {
        match self.state::<u32>(&keys::node_by_twin(twin))? {
            Some(id) => self.node(id),
            None => Ok(None),
        }
    }
    /// Contract by id.
    pub fn contract(&self, id: u64) -> Result<Option<Contract>, StateError> {
        self.state(&keys::contract(id))
    }
    /// Active (created or grace period) contracts of a node, by id.
    pub fn node_contracts(&self, node: u32) -> Result<Vec<Contract>, StateError> {
        self.contracts_under(&keys::node_contracts_prefix(node))
    }
    /// All contracts of a twin (any state), by id.
    pub fn twin_contracts(&self, twin: u32) -> Result<Vec<Contract>, StateError> {
        self.contracts_under(&keys::twin_contracts_prefix(twin))
    }
    fn contracts_under(&self, prefix: &[u8]) -> Result<Vec<Contract>, StateError> {
        let mut out = Vec::new();
        for (k, _) in self.store.scan_prefix(Table::State, prefix)? {
            let id = trailing_id(Table::State, &k)?;
            if let Some(c) = self.contract(id)? {
                out.push(c);
            }
        }
        Ok(out)
    }
    /// Active name contract by name.
    pub fn name_contract(&self, name: &str) -> Result<Option<Contract>, StateError> {
        match self.state::<u64>(&keys::name_contract(name))? {
            Some(id) => self.contract(id),
            None => Ok(None),
        }
    }
    /// Current pricing policy.
    pub fn pricing(&self) -> Result<PricingPolicy, StateError> {
        Ok(self.state(keys::PRICING)?.unwrap_or_default())
    }
    /// Target software version.
    pub fn zos_version(&self) -> Result<ZosVersion, StateError> {
        Ok(self.state(keys::ZOS_VERSION)?.unwrap_or_default())
    }
}

/// What `verify` checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Head height.
    pub head: u64,
    /// Hex head hash.
    pub head_hash: String,
    /// Transactions replayed.
    pub transactions: u64,
    /// Events re-derived.
    pub events: u64,
}

/// Audits a ledger: block hashes and links, transaction hashes and signatures, and a full
/// replay from genesis in memory that must re-derive every block hash (hence every event list)
/// and end in exactly the stored state.
pub fn verify(store: Arc<dyn LedgerStore>) -> Result<VerifyReport, LedgerError> {
    let original = Chain::open(store.clone(), None)?;
    let genesis = original.genesis().clone();
    let gh = genesis.hash();
    let genesis_producer = original.producer_key();
    // Blocks up to here are legacy (format 1): unsigned, no state root, v1 hash.
    let legacy_until = original.upgrade().map(|u| u.height);
    let is_legacy = |h: u64| legacy_until.is_some_and(|l| h <= l);
    let head = original.head().header.height;
    let reader = Reader::new(store.clone());
    let mut replay = Chain::open(Arc::new(MemStore::new()), Some(genesis))?;
    if legacy_until.is_some() {
        // The replay builds the legacy prefix the way format 1 did, from its genesis block on.
        replay.upgrade = original.upgrade.clone();
        let header = BlockHeader {
            state_root: String::new(),
            ..replay.head.header.clone()
        };
        let hash = migrate::legacy_hash(&header).expect("genesis header has valid hex");
        replay.head = Block {
            header,
            hash: hex::encode(hash),
            signature: None,
            transactions: Vec::new(),
        };
    }
    let fail = |height: u64, reason: String| LedgerError::Verify { height, reason };

    let b0 = reader.block(0)?.ok_or_else(|| fail(0, "missing".into()))?;
    // The replay does not sign: compare block 0 without its signature, checked below.
    let check_sig = |b: &Block| -> Result<(), LedgerError> {
        if is_legacy(b.header.height) {
            if b.signature.is_some() || !migrate::is_legacy(&b.header) {
                return Err(fail(
                    b.header.height,
                    "a legacy block carries format 2 fields".into(),
                ));
            }
            return Ok(());
        }
        let Some(producer) = &genesis_producer else {
            return Ok(());
        };
        let head = proof::SignedHead {
            header: b.header.clone(),
            hash: b.hash.clone(),
            signature: b.signature.clone().unwrap_or_default(),
        };
        head.verify(producer, &gh)
            .map(|_| ())
            .map_err(|e| fail(b.header.height, e.to_string()))
    };
    check_sig(&b0)?;
    let unsigned_b0 = Block {
        signature: None,
        ..b0.clone()
    };
    if unsigned_b0 != *replay.head() {
        return Err(fail(
            0,
            "genesis block does not match the genesis config".into(),
        ));
    }
    let (mut prev, mut txs, mut evs) = (b0, 0u64, 0u64);
    for h in 1..=head {
        let b = reader.block(h)?.ok_or_else(|| fail(h, "missing".into()))?;
        if b.header.height != h {
            return Err(fail(h, format!("stored with height {}", b.header.height)));
        }
        if b.header.parent_hash != prev.hash {
            return Err(fail(
                h,
                "parent hash does not link to the previous block".into(),
            ));
        }
        let hash = if is_legacy(h) {
            migrate::legacy_hash(&b.header)
        } else {
            b.header.hash()
        };
        if hash.map(hex::encode) != Some(b.hash.clone()) {
            return Err(fail(h, "block hash does not match its header".into()));
        }
        check_sig(&b)?;
        if b.header.timestamp < prev.header.timestamp {
            return Err(fail(h, "timestamp goes backwards".into()));
        }
        if b.transactions.len() != b.header.tx_hashes.len() {
            return Err(fail(h, "transaction count differs from the header".into()));
        }
        for (i, (tx, th)) in b.transactions.iter().zip(&b.header.tx_hashes).enumerate() {
            if hex::encode(tx.hash(&gh)) != *th {
                return Err(fail(h, format!("transaction {i} hash mismatch")));
            }
            if !tx.verify(&gh) {
                return Err(fail(h, format!("transaction {i} has a bad signature")));
            }
        }
        let out = replay.produce(&b.transactions, b.header.timestamp, true)?;
        if let Some((i, Err(reason))) = out.results.iter().enumerate().find(|(_, r)| r.is_err()) {
            return Err(fail(
                h,
                format!("transaction {i} does not apply on replay: {reason}"),
            ));
        }
        let rb = out
            .block
            .ok_or_else(|| fail(h, "replay produced no block".into()))?;
        if rb.hash != b.hash {
            return Err(fail(
                h,
                "replay derives different events or transactions".into(),
            ));
        }
        if reader.events(h)? != out.events {
            return Err(fail(
                h,
                "stored events differ from the replayed ones".into(),
            ));
        }
        txs += b.transactions.len() as u64;
        evs += out.events.len() as u64;
        prev = b;
    }
    let stored = store.range(Table::State, &[], None)?;
    let derived = replay.store.range(Table::State, &[], None)?;
    if stored != derived {
        let diff = stored
            .iter()
            .zip(&derived)
            .find(|(a, b)| a != b)
            .map(|(a, _)| String::from_utf8_lossy(&a.0).into_owned())
            .unwrap_or_else(|| "entry count".into());
        return Err(fail(
            head,
            format!("final state differs from the replay (first at {diff})"),
        ));
    }
    Ok(VerifyReport {
        head,
        head_hash: prev.hash,
        transactions: txs,
        events: evs,
    })
}
