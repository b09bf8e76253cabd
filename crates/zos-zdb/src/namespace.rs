//! One namespace: its descriptor, its in-memory index (user: hash map of keys; seq: vector of
//! ids) and its [`Store`]. Every operation runs under the namespace's mutex; permission
//! checks that depend on the connection are done by the caller (`session`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::Mode;
use crate::cache::{CacheBudget, NsCache};
use crate::crypto::Cipher;
use crate::descriptor::Descriptor;
use crate::format::{
    DATA_HDR_LEN, FLAG_DELETED, FLAG_ENCRYPTED, IndexEntry, Loc, data_entry_valid,
};
use crate::index::{KeyIndex, Loader, Meta};
use crate::key::Key;
use crate::store::{SEAL_OVERHEAD, Store, StoreError};

/// Longest key, as upstream (`uint8_t idlength`).
pub const MAX_KEY: usize = 255;
/// Most live entries returned by one SCAN/RSCAN.
const SCAN_BATCH: usize = 128;
/// Time after which a SCAN returns what it has, so that the namespace lock is not held long.
const SCAN_SLICE: Duration = Duration::from_millis(10);
/// How far past the next seq id a replicated write may create one (bounds the index's growth
/// from a bad feed).
const MAX_ID_SKIP: u64 = 1 << 20;
/// Index bytes a mirror feed reads at once.
const FEED_INDEX_READ: usize = 256 << 10;
/// Most keys returned by one KSCAN.
const KSCAN_MAX: usize = 10_000;

/// A failed operation: a client error with upstream's text, or a storage failure.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Sent as `-<text>`.
    #[error("{0}")]
    Client(&'static str),
    /// Logged with its context; the client gets `-Internal Error`.
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
}

fn client(msg: &'static str) -> OpError {
    OpError::Client(msg)
}

/// Mutable state of a namespace, reached through [`Namespace::lock`].
pub struct NsState {
    /// Persistent settings.
    pub desc: Descriptor,
    /// The namespace's files.
    pub store: Store,
    index: KeyIndex,
    live_bytes: u64,
    next_id: u64,
    cipher: Option<Arc<Cipher>>,
    /// The server's at-rest cipher for this namespace (`ServerConfig::at_rest_key`): seals new
    /// values of a namespace without a user's key, opens the ones it sealed.
    at_rest: Option<Arc<Cipher>>,
    cache: NsCache,
    /// Bumped by `FLUSH`, after which locations are reused: a read planned before it must not
    /// cache its value for the new entry at the same place.
    generation: u64,
    /// Entries (versions and tombstones) in the files: a mirror's replication position.
    appended: u64,
    /// Bumped by `FLUSH` (a mirror feed then starts the namespace again).
    wipes: u64,
}

/// Outcome of [`NsState::get_plan`].
pub enum ValueRead {
    /// Answered under the lock (missing key, cached value, or value still in the write buffer).
    Done(Option<Bytes>),
    /// A positioned read to do without the lock.
    Disk(DiskRead),
}

/// A value to read from an immutable region of a data file.
pub struct DiskRead {
    file: Arc<std::fs::File>,
    at: Loc,
    off: u32,
    head: usize,
    len: usize,
    key: Vec<u8>,
    cipher: Option<Arc<Cipher>>,
    /// Where to cache the value once read (set by [`DiskRead::cache_in`]).
    ns: Option<Arc<Namespace>>,
    generation: u64,
}

impl DiskRead {
    /// Bytes the read will fetch (header, key and stored value).
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Caches the value in `ns` (the namespace it was planned in) once read.
    pub fn cache_in(mut self, ns: Arc<Namespace>) -> DiskRead {
        self.ns = Some(ns);
        self
    }

    /// Reads, verifies the entry CRC (and the key), caches the stored value, and decrypts.
    pub fn run(self) -> Result<Bytes, OpError> {
        use std::os::unix::fs::FileExt;
        let bad = || {
            OpError::Store(StoreError::BadLoc {
                file: self.at.file,
                off: self.off,
            })
        };
        let mut entry = vec![0u8; self.len];
        self.file
            .read_exact_at(&mut entry, u64::from(self.off))
            .map_err(|source| {
                OpError::Store(StoreError::Io {
                    op: "read",
                    path: PathBuf::from(format!("d{}", self.at.file)),
                    source,
                })
            })?;
        if !data_entry_valid(&entry) || entry[DATA_HDR_LEN..self.head] != self.key[..] {
            return Err(bad());
        }
        if let Some(ns) = &self.ns {
            let mut st = ns.lock();
            if st.generation == self.generation {
                st.cache_put(&self.key, self.at, &entry[self.head..]);
            }
        }
        let stored = Bytes::from(entry).slice(self.head..);
        match &self.cipher {
            None => Ok(stored),
            Some(c) => c
                .unseal_record(&self.key, (self.at.file, self.off), &stored)
                .map(Bytes::from)
                .ok_or_else(bad),
        }
    }
}

/// A namespace shared by connections.
pub struct Namespace {
    /// Name (directory name under data and index dirs).
    pub name: String,
    /// Data directory of this namespace.
    pub data_dir: PathBuf,
    /// Index directory of this namespace.
    pub index_dir: PathBuf,
    state: Mutex<NsState>,
    deleted: AtomicBool,
    events: broadcast::Sender<&'static str>,
    /// Connections in `WAIT` here; checked without locking on every command.
    waiters: AtomicUsize,
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// A namespace as read from disk.
struct Loaded {
    desc: Descriptor,
    store: Store,
    index: KeyIndex,
    live_bytes: u64,
    next_id: u64,
    appended: u64,
}

fn load(
    name: &str,
    data_dir: &std::path::Path,
    index_dir: &std::path::Path,
    datasize: u64,
    strict: bool,
    new_desc: Descriptor,
) -> Result<Loaded, StoreError> {
    std::fs::create_dir_all(index_dir).map_err(|source| StoreError::Io {
        op: "mkdir",
        path: index_dir.to_path_buf(),
        source,
    })?;
    let desc = match Descriptor::load(index_dir)? {
        Some(d) => d,
        None => {
            new_desc.save(index_dir)?;
            new_desc
        }
    };
    let mut index = KeyIndex::new(desc.mode);
    let (mut live_bytes, mut next_id, mut appended) = (0, 0, 0);
    let mut loader = Loader {
        index: &mut index,
        live_bytes: &mut live_bytes,
        next_id: &mut next_id,
        entries: &mut appended,
    };
    let store = Store::open(
        data_dir,
        index_dir,
        datasize,
        desc.mode as u8,
        strict,
        &mut loader,
    )?;
    tracing::info!(ns = name, entries = index.len(), "namespace loaded");
    Ok(Loaded {
        desc,
        store,
        index,
        live_bytes,
        next_id,
        appended,
    })
}

/// One SCAN result line: key, plaintext length, timestamp.
pub type ScanItem = (Bytes, u32, u32);

impl Namespace {
    /// Opens (or creates with `desc`) a namespace and loads its index.
    pub fn open(
        name: &str,
        data_dir: PathBuf,
        index_dir: PathBuf,
        datasize: u64,
        strict: bool,
        new_desc: Descriptor,
        cache: Arc<CacheBudget>,
    ) -> Result<Namespace, StoreError> {
        let l = load(name, &data_dir, &index_dir, datasize, strict, new_desc)?;
        let (events, _) = broadcast::channel(64);
        let st = NsState {
            desc: l.desc,
            store: l.store,
            index: l.index,
            live_bytes: l.live_bytes,
            next_id: l.next_id,
            cipher: None,
            at_rest: None,
            cache: NsCache::new(cache),
            generation: 0,
            appended: l.appended,
            wipes: 0,
        };
        Ok(Namespace {
            name: name.to_string(),
            data_dir,
            index_dir,
            state: Mutex::new(st),
            deleted: AtomicBool::new(false),
            events,
            waiters: AtomicUsize::new(0),
        })
    }

    /// `RELOAD`: writes out what is buffered, then reads the descriptor and every file again,
    /// as a restart would (recovering what changed on disk), in place: connections in this
    /// namespace stay. The encryption secret given since the start is kept if it still fits.
    pub fn reload(&self, datasize: u64, strict: bool) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.store.sync_all()?;
        let l = load(
            &self.name,
            &self.data_dir,
            &self.index_dir,
            datasize,
            strict,
            st.desc.clone(),
        )?;
        st.cache.clear();
        if l.desc.encryption != st.desc.encryption {
            st.cipher = None;
        }
        let on_jump = st.store.on_jump.take();
        st.desc = l.desc;
        st.store = l.store;
        st.store.on_jump = on_jump;
        st.index = l.index;
        st.live_bytes = l.live_bytes;
        st.next_id = l.next_id;
        st.appended = l.appended;
        // Reads planned before must not cache their value into the new index.
        st.generation += 1;
        Ok(())
    }

    /// Locks the namespace state. A panic while holding the lock cannot leave the on-disk
    /// state inconsistent (appends are self-validating), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, NsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state if nobody holds it (cross-namespace cache eviction never waits).
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, NsState>> {
        match self.state.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Marks the namespace deleted: connections using it are disconnected.
    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    /// Whether `NSDEL` removed it.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    /// Notifies `WAIT`ers that a command ran here.
    pub fn notify(&self, command: &'static str) {
        if self.waiters.load(Ordering::Relaxed) > 0 {
            let _ = self.events.send(command);
        }
    }

    /// Subscribes to command notifications (`WAIT`); call [`Namespace::unsubscribe`] after.
    pub fn subscribe(&self) -> broadcast::Receiver<&'static str> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        self.events.subscribe()
    }

    /// Ends a [`Namespace::subscribe`].
    pub fn unsubscribe(&self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NsState {
    /// Entries (live keys).
    pub fn entries(&self) -> u64 {
        self.index.len()
    }

    /// Whether no entry was ever written (mode and encryption may change only then).
    pub fn is_pristine(&self) -> bool {
        self.store.first().is_none()
    }

    /// Sum of the live values' lengths (what `maxsize` limits).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Next seq id.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Gives the namespace the server's at-rest key: from now on values of a namespace without
    /// a user's key are stored sealed under it (older plaintext values stay readable).
    pub fn set_at_rest_key(&mut self, ns: &str, server_key: &[u8; 32]) {
        self.at_rest = Some(Arc::new(Cipher::at_rest(server_key, ns)));
    }

    /// The cipher that opens an entry with these flags: none for plaintext, the user's when
    /// the namespace has a user key, else the server's at-rest cipher.
    fn cipher_for(&self, flags: u8) -> Result<Option<Arc<Cipher>>, OpError> {
        if flags & FLAG_ENCRYPTED == 0 {
            return Ok(None);
        }
        if self.desc.encryption.is_some() {
            return self
                .cipher
                .clone()
                .map(Some)
                .ok_or(client("Namespace is sealed, give its encryption key"));
        }
        self.at_rest.clone().map(Some).ok_or(client(
            "Namespace is encrypted at rest and this server has no key for it",
        ))
    }

    /// The cipher new values are sealed with (`None`: stored as given).
    fn write_cipher(&self) -> Result<Option<Arc<Cipher>>, OpError> {
        match (&self.cipher, self.desc.encryption.is_some()) {
            (Some(c), _) => Ok(Some(c.clone())),
            (None, true) => Err(client("Namespace is sealed, give its encryption key")),
            (None, false) => Ok(self.at_rest.clone()),
        }
    }

    /// Values are encrypted but the secret was not given since the start.
    pub fn is_sealed(&self) -> bool {
        self.desc.encryption.is_some() && self.cipher.is_none()
    }

    /// Switches the index mode (caller checked that the namespace is pristine).
    pub fn set_mode(&mut self, mode: Mode) {
        self.desc.mode = mode;
        self.cache.clear();
        self.index = KeyIndex::new(mode);
    }

    /// Caches the stored value of the version of `key` at `loc` (if still current).
    fn cache_put(&mut self, key: &[u8], loc: Loc, stored: &[u8]) {
        self.cache.put(&mut self.index, key, loc, stored);
    }

    /// Evicts up to `want` bytes of this namespace's cached values in at most `passes` turns
    /// of its clock hand (for another namespace over budget).
    pub(crate) fn evict_cached(&mut self, want: u64, passes: usize) -> u64 {
        self.cache.evict(&mut self.index, want, passes)
    }

    /// This namespace's id in the cache budget.
    pub(crate) fn cache_id(&self) -> u64 {
        self.cache.id()
    }

    /// Values of this namespace in the read cache.
    pub fn cached_entries(&self) -> u64 {
        self.cache.entries()
    }

    /// Enables encryption (pristine namespace) or unseals it after a restart.
    pub fn set_encryption_key(&mut self, ns: &str, secret: &[u8]) -> Result<bool, OpError> {
        match self.desc.encryption {
            Some((salt, check)) => {
                let c = Cipher::open(secret, ns, &salt, &check)
                    .ok_or(client("Invalid encryption key"))?;
                self.cipher = Some(Arc::new(c));
                Ok(false)
            }
            None if self.is_pristine() => {
                let (c, salt, check) = Cipher::create(secret, ns);
                self.desc.encryption = Some((salt, check));
                self.cipher = Some(Arc::new(c));
                Ok(true)
            }
            None => Err(client(
                "Encryption can only be enabled on an empty namespace",
            )),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), OpError> {
        if key.len() > MAX_KEY {
            return Err(client("Key too large"));
        }
        if self.desc.mode == Mode::Seq && !key.is_empty() && key.len() != 8 {
            return Err(client("Invalid key"));
        }
        Ok(())
    }

    /// The value of a live version, from the cache or the files (`fresh`: always the files,
    /// for `CHECK`, which must see what is on disk).
    fn value_of(&mut self, key: &[u8], m: &Meta, fresh: bool) -> Result<Bytes, OpError> {
        let cached = if fresh {
            None
        } else {
            self.index
                .get_for_read(key)
                .and_then(|(cur, v)| v.filter(|_| cur.idx == m.idx))
        };
        if !fresh {
            self.cache.budget().count_read(cached.is_some());
        }
        let payload = match cached {
            Some(p) => Bytes::from_owner(p),
            None => {
                let enc = m.flags & FLAG_ENCRYPTED != 0;
                let stored = m.length as usize + if enc { SEAL_OVERHEAD as usize } else { 0 };
                let p = Bytes::from(self.store.read_payload_at(
                    m.idx.file,
                    m.data_off,
                    key.len(),
                    stored,
                )?);
                if !fresh {
                    self.cache_put(key, m.idx, &p);
                }
                p
            }
        };
        self.open_payload(key, m.flags, payload, m.idx, m.data_off)
    }

    fn open_payload(
        &self,
        key: &[u8],
        flags: u8,
        payload: Bytes,
        at: Loc,
        data_off: u32,
    ) -> Result<Bytes, OpError> {
        let Some(c) = self.cipher_for(flags)? else {
            return Ok(payload);
        };
        c.unseal_record(key, (at.file, data_off), &payload)
            .map(Bytes::from)
            .ok_or(OpError::Store(StoreError::BadLoc {
                file: at.file,
                off: at.off,
            }))
    }

    /// `GET` in two steps: under the lock, find where the value is; the returned
    /// [`ValueRead::Disk`] is then read without the lock (possibly on another thread), so a
    /// page-cache miss does not hold up other clients of the namespace.
    pub fn get_plan(&mut self, key: &[u8]) -> Result<ValueRead, OpError> {
        let Some((m, cached)) = (key.len() <= MAX_KEY)
            .then(|| self.index.get_for_read(key))
            .flatten()
        else {
            return Ok(ValueRead::Done(None));
        };
        let enc = m.flags & FLAG_ENCRYPTED != 0;
        let stored = m.length as usize + if enc { SEAL_OVERHEAD as usize } else { 0 };
        let head = DATA_HDR_LEN + key.len();
        let cipher = self.cipher_for(m.flags)?;
        if let Some(stored) = cached {
            self.cache.budget().count_read(true);
            return self
                .open_payload(key, m.flags, Bytes::from_owner(stored), m.idx, m.data_off)
                .map(|v| ValueRead::Done(Some(v)));
        }
        match self
            .store
            .data_file_for(m.idx.file, m.data_off, head + stored)?
        {
            None => Ok(ValueRead::Done(Some(self.value_of(key, &m, false)?))),
            Some(file) => {
                self.cache.budget().count_read(false);
                Ok(ValueRead::Disk(DiskRead {
                    file,
                    at: m.idx,
                    off: m.data_off,
                    head,
                    len: head + stored,
                    key: key.to_vec(),
                    cipher,
                    ns: None,
                    generation: self.generation,
                }))
            }
        }
    }

    /// `GET`: the value, `None` if missing or deleted.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Bytes>, OpError> {
        if key.len() > MAX_KEY {
            return Ok(None);
        }
        match self.index.get(key) {
            Some(m) => self.value_of(key, &m, false).map(Some),
            None => Ok(None),
        }
    }

    /// `SET`: returns the key written (the new id in seq mode), `None` if the value was unchanged.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        timestamp: Option<u32>,
    ) -> Result<Option<Bytes>, OpError> {
        self.set_at(key, value, timestamp, false)
    }

    /// [`NsState::set`]; with `keep_id` (a replica applying its master's writes) a seq-mode
    /// id at or past the next one is created as given, so that ids match the master's.
    pub fn set_at(
        &mut self,
        key: &[u8],
        value: &[u8],
        timestamp: Option<u32>,
        keep_id: bool,
    ) -> Result<Option<Bytes>, OpError> {
        self.check_key(key)?;
        let seq = self.desc.mode == Mode::Seq;
        if !seq && key.is_empty() {
            return Err(client("Invalid argument, key needed"));
        }
        let existing = if key.is_empty() {
            None
        } else {
            self.index.get(key)
        };
        let new_id = match (seq && !key.is_empty() && existing.is_none(), keep_id) {
            (false, _) => None,
            (true, true) => Some(
                KeyIndex::seq_id(key)
                    .filter(|&id| id >= self.next_id && id - self.next_id < MAX_ID_SKIP)
                    .ok_or(client("Invalid key, only update authorized"))?,
            ),
            (true, false) => return Err(client("Invalid key, only update authorized")),
        };
        let value_crc = crc32fast::hash(value);
        if let Some(m) = existing {
            if self.desc.worm {
                return Err(client("Namespace is in WORM mode, overwrite denied"));
            }
            // Upstream compares CRCs only; comparing bytes too never drops a real change.
            if m.length as usize == value.len()
                && m.value_crc == value_crc
                && self.value_of(key, &m, false)? == value
            {
                return Ok(None);
            }
        }
        let old_len = existing.map_or(0, |m| u64::from(m.length));
        if self.desc.maxsize > 0
            && self.live_bytes - old_len + value.len() as u64 > self.desc.maxsize
        {
            return Err(client("No space left on this namespace"));
        }
        let key: Bytes = if seq && key.is_empty() {
            Bytes::copy_from_slice(&self.next_id.to_le_bytes())
        } else {
            Bytes::copy_from_slice(key)
        };
        let sealed;
        let (flags, payload) = match self.write_cipher()? {
            Some(c) => {
                // The at-rest seal binds the record to where it will be written.
                let entry = DATA_HDR_LEN + key.len() + value.len() + SEAL_OVERHEAD as usize;
                let at = self.store.reserve(entry as u64)?;
                sealed = c.seal_record(&key, at, value);
                (FLAG_ENCRYPTED, &sealed[..])
            }
            None => (0, value),
        };
        let ts = timestamp.unwrap_or_else(now);
        let parent = existing.map_or(Loc::NONE, |m| m.idx);
        let a = self.store.append(
            &key,
            flags,
            payload,
            value.len() as u32,
            ts,
            value_crc,
            parent,
        )?;
        let meta = Meta {
            idx: a.idx,
            data_off: a.data_off,
            length: value.len() as u32,
            timestamp: ts,
            value_crc,
            flags,
        };
        if let Some(old) = self.index.put(&key, Some(meta)).and_then(|s| s.cached) {
            self.cache.dropped(old.as_slice());
        }
        self.appended += 1;
        // The newest version is the likeliest to be read next.
        self.cache_put(&key, a.idx, payload);
        self.live_bytes = self.live_bytes - old_len + value.len() as u64;
        // Upstream's seq ids are positions in the index: an update takes one too, so the next
        // append skips it (SET "" a → 0, SET 0 b, then SET "" c → 2 and id 1 stays empty).
        if seq {
            self.next_id = (self.next_id + 1).max(new_id.map_or(0, |i| i + 1));
        }
        Ok(Some(key))
    }

    /// `DEL`: appends a tombstone (at `timestamp`, or now). It takes no seq id.
    pub fn del(&mut self, key: &[u8], timestamp: Option<u32>) -> Result<(), OpError> {
        self.check_key(key)?;
        let m = self.index.get(key).ok_or(client("Key not found"))?;
        if self.desc.worm {
            return Err(client("Namespace is in WORM mode, delete denied"));
        }
        self.store.append(
            key,
            FLAG_DELETED,
            &[],
            0,
            timestamp.unwrap_or_else(now),
            0,
            m.idx,
        )?;
        self.appended += 1;
        if let Some(old) = self.index.put(key, None).and_then(|s| s.cached) {
            self.cache.dropped(old.as_slice());
        }
        self.live_bytes -= u64::from(m.length);
        Ok(())
    }

    /// Metadata of a live key: (length, timestamp, cursor).
    pub fn meta(&self, key: &[u8]) -> Option<(u32, u32, Loc)> {
        if key.len() > MAX_KEY {
            return None;
        }
        self.index.get(key).map(|m| (m.length, m.timestamp, m.idx))
    }

    /// `CHECK`: re-reads the entry and verifies both checksums. `None` if missing.
    pub fn check(&mut self, key: &[u8]) -> Result<Option<bool>, OpError> {
        let Some(m) = (key.len() <= MAX_KEY)
            .then(|| self.index.get(key))
            .flatten()
        else {
            return Ok(None);
        };
        Ok(Some(match self.value_of(key, &m, true) {
            Ok(v) => crc32fast::hash(&v) == m.value_crc,
            Err(OpError::Store(e)) => {
                tracing::warn!(error = %e, "CHECK found a damaged entry");
                false
            }
            Err(e) => return Err(e),
        }))
    }

    fn is_live(&self, loc: Loc, e: &IndexEntry) -> bool {
        self.index.get(&e.key).is_some_and(|m| m.idx == loc)
    }

    /// `SCAN`/`RSCAN`: live entries after (or before) `cursor`, and the next cursor.
    /// `Ok(None)` at the end.
    pub fn scan(
        &mut self,
        cursor: Option<&[u8]>,
        forward: bool,
    ) -> Result<Option<(Loc, Vec<ScanItem>)>, OpError> {
        let mut pos = match cursor {
            None => {
                if forward {
                    self.store.first()
                } else {
                    self.store.last()
                }
            }
            Some(c) => {
                let loc = Loc::from_bytes(c).ok_or(client("Invalid key format"))?;
                let e = self
                    .store
                    .read_index(loc)
                    .map_err(|_| client("Invalid key format"))?;
                if forward {
                    self.store.next(loc, &e)
                } else {
                    self.store.prev(loc, &e)
                }
            }
        };
        let start = Instant::now();
        let mut items = Vec::new();
        let mut last = None;
        while let Some(loc) = pos {
            if items.len() >= SCAN_BATCH || (!items.is_empty() && start.elapsed() > SCAN_SLICE) {
                break;
            }
            let e = self.store.read_index(loc)?;
            if self.is_live(loc, &e) {
                items.push((Bytes::from(e.key.clone()), e.length, e.timestamp));
            }
            last = Some(loc);
            pos = if forward {
                self.store.next(loc, &e)
            } else {
                self.store.prev(loc, &e)
            };
        }
        Ok(match (items.is_empty(), last) {
            (false, Some(l)) => Some((l, items)),
            _ => None,
        })
    }

    /// `KSCAN`: live keys starting with `prefix` (user mode).
    pub fn kscan(&self, prefix: &[u8]) -> Result<Vec<Bytes>, OpError> {
        let KeyIndex::User(m) = &self.index else {
            return Err(client("Index running mode doesn't support this feature"));
        };
        Ok(m.keys()
            .map(Key::as_bytes)
            .filter(|k| k.starts_with(prefix))
            .take(KSCAN_MAX)
            .map(Bytes::copy_from_slice)
            .collect())
    }

    /// `HISTORY`: (parent cursor, timestamp, value) of the current version or of the version at `cursor`.
    pub fn history(
        &mut self,
        key: &[u8],
        cursor: Option<&[u8]>,
    ) -> Result<(Loc, u32, Bytes), OpError> {
        let loc = match cursor {
            None => self.meta(key).ok_or(client("Key not found"))?.2,
            Some(c) => {
                let loc = Loc::from_bytes(c).ok_or(client("Invalid arguments"))?;
                if !loc.is_some() {
                    return Err(client("No more history"));
                }
                loc
            }
        };
        let e = self
            .store
            .read_index(loc)
            .map_err(|_| client("Invalid arguments (index query)"))?;
        if e.key != key {
            return Err(client("Invalid arguments (invalid key)"));
        }
        let payload = Bytes::from(self.store.read_payload(loc.file, &e)?);
        let value = self.open_payload(key, e.flags, payload, loc, e.data_off)?;
        Ok((e.parent, e.timestamp, value))
    }

    /// `FLUSH`: removes every entry and file.
    pub fn wipe(&mut self) -> Result<(), OpError> {
        // Locations restart at the beginning: no read planned before may cache for them.
        self.generation += 1;
        self.store.wipe()?;
        self.cache.clear();
        self.index = KeyIndex::new(self.desc.mode);
        self.live_bytes = 0;
        self.next_id = 0;
        self.appended = 0;
        self.wipes += 1;
        Ok(())
    }

    /// Entries in the files (versions and tombstones): a mirror's position.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// How many times `FLUSH` wiped the namespace since it was opened.
    pub fn wipes(&self) -> u64 {
        self.wipes
    }

    /// A mirror applies one entry of its master's feed exactly as the master stored it
    /// (`stored` is ciphertext in an encrypted namespace; seq ids are kept).
    pub fn apply_replicated(
        &mut self,
        key: &[u8],
        flags: u8,
        timestamp: u32,
        value_crc: u32,
        length: u32,
        stored: &[u8],
    ) -> Result<(), OpError> {
        if key.len() > MAX_KEY {
            return Err(client("Invalid key"));
        }
        let seq_id = match self.desc.mode {
            Mode::Seq => Some(KeyIndex::seq_id(key).ok_or(client("Invalid key"))?),
            Mode::User => None,
        };
        if seq_id.is_some_and(|id| id > self.next_id.saturating_add(MAX_ID_SKIP)) {
            return Err(client("Invalid key, too far past the next id"));
        }
        let existing = self.index.get(key);
        let deleted = flags & FLAG_DELETED != 0;
        let parent = existing.map_or(Loc::NONE, |m| m.idx);
        // The feed carries plaintext for values the master sealed at rest (its key is its
        // own); this server seals them under its own at-rest key, at their new place.
        let sealed;
        let (flags, stored) = match (&self.at_rest, self.desc.encryption.is_some()) {
            (Some(c), false) if flags & (FLAG_ENCRYPTED | FLAG_DELETED) == 0 => {
                let entry = DATA_HDR_LEN + key.len() + stored.len() + SEAL_OVERHEAD as usize;
                let at = self.store.reserve(entry as u64)?;
                sealed = c.seal_record(key, at, stored);
                (flags | FLAG_ENCRYPTED, &sealed[..])
            }
            _ => (flags, stored),
        };
        let a = self
            .store
            .append(key, flags, stored, length, timestamp, value_crc, parent)?;
        self.appended += 1;
        let meta = (!deleted).then_some(Meta {
            idx: a.idx,
            data_off: a.data_off,
            length,
            timestamp,
            value_crc,
            flags,
        });
        if let Some(old) = self.index.put(key, meta).and_then(|s| s.cached) {
            self.cache.dropped(old.as_slice());
        }
        self.live_bytes = self.live_bytes - existing.map_or(0, |m| u64::from(m.length))
            + meta.map_or(0, |m| u64::from(m.length));
        if let (Some(id), false) = (seq_id, deleted) {
            self.next_id = (self.next_id + 1).max(id + 1);
        }
        Ok(())
    }

    /// For a mirror feed: up to `max_entries` entries (or about `max_bytes`) after `after`
    /// (from the first when `None`), each with its location and stored payload. Per data
    /// file, one read of the index run and one of the data span: the lock is held briefly.
    pub fn read_after(
        &mut self,
        after: Option<Loc>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Loc, IndexEntry, Vec<u8>)>, OpError> {
        let mut pos = match after {
            None => self.store.first(),
            Some(loc) => {
                let e = self.store.read_index(loc)?;
                self.store.next(loc, &e)
            }
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(loc) = pos {
            if out.len() >= max_entries || bytes >= max_bytes {
                break;
            }
            let mut run = self
                .store
                .read_index_run(loc.file, loc.off, FEED_INDEX_READ)?;
            // Keep what fits the limits (at least one entry).
            let mut span = 0usize;
            let mut keep = 0;
            for (_, e) in &run {
                let len = DATA_HDR_LEN + e.key.len() + crate::store::stored_len(e) as usize;
                if keep > 0 && (out.len() + keep >= max_entries || bytes + span + len > max_bytes) {
                    break;
                }
                span += len;
                keep += 1;
            }
            run.truncate(keep);
            let Some((first_loc, first)) = run.first() else {
                return Err(OpError::Store(StoreError::BadLoc {
                    file: loc.file,
                    off: loc.off,
                }));
            };
            let data = self
                .store
                .read_data_span(first_loc.file, first.data_off, span)?;
            let mut at = 0usize;
            for (l, e) in &run {
                let head = DATA_HDR_LEN + e.key.len();
                let len = head + crate::store::stored_len(e) as usize;
                let entry = data
                    .get(at..at + len)
                    .filter(|b| data_entry_valid(b) && b[DATA_HDR_LEN..head] == e.key[..]);
                let Some(entry) = entry else {
                    return Err(OpError::Store(StoreError::BadLoc {
                        file: l.file,
                        off: l.off,
                    }));
                };
                let payload = &entry[head..];
                // Values sealed at rest leave in clear (the mirror seals them under its own
                // key); a user's ciphertext stays ciphertext.
                if e.flags & FLAG_ENCRYPTED != 0 && self.desc.encryption.is_none() {
                    let c = self.cipher_for(e.flags)?.ok_or(client("Invalid key"))?;
                    let plain = c
                        .unseal_record(&e.key, (l.file, e.data_off), payload)
                        .ok_or(OpError::Store(StoreError::BadLoc {
                            file: l.file,
                            off: l.off,
                        }))?;
                    let mut e = e.clone();
                    e.flags &= !FLAG_ENCRYPTED;
                    out.push((*l, e, plain));
                } else {
                    out.push((*l, e.clone(), payload.to_vec()));
                }
                at += len;
            }
            bytes += span;
            let (last_loc, last) = &run[run.len() - 1];
            pos = self.store.next(*last_loc, last);
        }
        Ok(out)
    }

    /// Walks forward from `at` (the location of entry number `done`, `None` before the
    /// first) until entry number `n` or at most `budget` steps; returns where it stopped.
    /// For a mirror's start position, a slice at a time so the lock is not held long.
    pub fn skip_entries(
        &mut self,
        mut at: Option<Loc>,
        mut done: u64,
        n: u64,
        budget: u64,
    ) -> Result<(Option<Loc>, u64), OpError> {
        let stop = n.min(done.saturating_add(budget));
        while done < stop {
            let next = match at {
                None => self.store.first(),
                Some(loc) => {
                    let e = self.store.read_index(loc)?;
                    self.store.next(loc, &e)
                }
            };
            let Some(loc) = next else { break };
            at = Some(loc);
            done += 1;
        }
        Ok((at, done))
    }

    /// The last entry's location.
    pub fn last_entry(&self) -> Option<Loc> {
        self.store.last()
    }

    /// A short fingerprint of the entry at `loc` (`-` for none): a mirror and its master
    /// compare it to tell "same prefix" from "same count after a wipe".
    pub fn signature(&mut self, loc: Option<Loc>) -> Result<String, OpError> {
        let Some(loc) = loc else {
            return Ok("-".into());
        };
        let e = self.store.read_index(loc)?;
        // Without the encrypted bit: a value sealed at rest on one side and not on the other
        // (each server's own key, or none) is the same entry.
        Ok(format!(
            "{:08x}{:08x}{:08x}{:02x}",
            crc32fast::hash(&e.key),
            e.value_crc,
            e.timestamp,
            e.flags & !FLAG_ENCRYPTED
        ))
    }
}
