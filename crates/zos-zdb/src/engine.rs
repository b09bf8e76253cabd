//! The engine: all namespaces of one server, their directories, and group commit.
//!
//! Group commit (`--sync`): every connection flushes its appends to the kernel, reads the
//! flush epoch, and waits for [`Engine::sync_upto`] that epoch before replying. One task at
//! a time runs the fsyncs for *all* data files written since the previous round, so the
//! writes of many connections and whole pipelines share one fsync.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::cache::{CacheBudget, CacheStats};
use crate::descriptor::Descriptor;
use crate::hooks::Hooks;
use crate::namespace::Namespace;
use crate::store::StoreError;
use crate::{Mode, ZdbError};

/// The namespace every connection starts in.
pub const DEFAULT_NS: &str = "default";

/// Storage settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Root of the data files.
    pub data_dir: PathBuf,
    /// Root of the index files and descriptors.
    pub index_dir: PathBuf,
    /// Fixed mode for every namespace, or `None` for per-namespace mode (default user).
    pub mode: Option<Mode>,
    /// fsync before acknowledging writes.
    pub sync: bool,
    /// Data file rotation size in bytes.
    pub datasize: u64,
    /// Read cache budget in bytes, shared by all namespaces (0: no cache).
    pub cache_bytes: u64,
    /// Refuse a damaged index instead of rebuilding it from the data files.
    pub strict_index: bool,
    /// The server's at-rest key ([`crate::ServerConfig::at_rest_key`]).
    pub at_rest_key: Option<crate::crypto::AtRestKey>,
}

#[derive(Default)]
struct Syncer {
    /// Bumped after each flush that wrote bytes (after registering the files).
    flushed: AtomicU64,
    /// Highest epoch known to be on disk.
    synced: AtomicU64,
    /// Data files written since the last fsync round.
    dirty: Mutex<Vec<Arc<File>>>,
    /// Serialises fsync rounds.
    round: tokio::sync::Mutex<()>,
}

/// All namespaces and the storage policy.
pub struct Engine {
    cfg: EngineConfig,
    namespaces: RwLock<BTreeMap<String, Arc<Namespace>>>,
    syncer: Syncer,
    cache: Arc<CacheBudget>,
    hooks: Option<Arc<Hooks>>,
    /// Mirror feeds connected: writers wake them only when there is one.
    mirrors: Arc<std::sync::atomic::AtomicUsize>,
    mirror_signal: tokio::sync::Notify,
}

/// Counts a connected mirror feed while alive.
pub struct MirrorGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for MirrorGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Namespace names that map safely to one directory.
pub fn valid_ns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::command::MAX_NS_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
}

impl Engine {
    /// Opens every namespace found under the index directory (creating `default`).
    pub fn open(cfg: EngineConfig) -> Result<Engine, ZdbError> {
        Engine::open_with_hooks(cfg, None)
    }

    /// [`Engine::open`], telling `hooks` about namespace events and file rotations.
    pub fn open_with_hooks(
        cfg: EngineConfig,
        hooks: Option<Arc<Hooks>>,
    ) -> Result<Engine, ZdbError> {
        for dir in [&cfg.data_dir, &cfg.index_dir] {
            std::fs::create_dir_all(dir).map_err(|source| {
                ZdbError::Store(StoreError::Io {
                    op: "mkdir",
                    path: dir.clone(),
                    source,
                })
            })?;
        }
        let mut names = vec![DEFAULT_NS.to_string()];
        let entries = std::fs::read_dir(&cfg.index_dir).map_err(|source| {
            ZdbError::Store(StoreError::Io {
                op: "read dir",
                path: cfg.index_dir.clone(),
                source,
            })
        })?;
        for ent in entries.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name != DEFAULT_NS
                && valid_ns_name(&name)
                && ent.path().join(crate::descriptor::DESCRIPTOR_FILE).exists()
            {
                names.push(name);
            }
        }
        let engine = Engine {
            cache: CacheBudget::new(cfg.cache_bytes),
            cfg,
            namespaces: RwLock::new(BTreeMap::new()),
            syncer: Syncer::default(),
            hooks,
            mirrors: Default::default(),
            mirror_signal: tokio::sync::Notify::new(),
        };
        for name in names {
            let ns = Arc::new(engine.open_ns(&name)?);
            engine.cache.register(&ns);
            engine.write_map().insert(name, ns);
        }
        Ok(engine)
    }

    fn open_ns(&self, name: &str) -> Result<Namespace, ZdbError> {
        let desc = Descriptor {
            mode: self.cfg.mode.unwrap_or_default(),
            ..Descriptor::default()
        };
        let ns = Namespace::open(
            name,
            self.cfg.data_dir.join(name),
            self.cfg.index_dir.join(name),
            self.cfg.datasize,
            self.cfg.strict_index,
            desc,
            self.cache.clone(),
        )
        .map_err(|source| ZdbError::Namespace {
            name: name.to_string(),
            source,
        })?;
        if let Some(k) = &self.cfg.at_rest_key {
            ns.lock().set_at_rest_key(name, &k.0);
        }
        if let Some(h) = &self.hooks {
            let h = h.clone();
            ns.lock().store.on_jump = Some(Arc::new(move |ci, ni, cd, nd| {
                let p = |p: &Path| p.display().to_string();
                h.fire("jump-index", vec![p(ci), p(ni)]);
                h.fire("jump-data", vec![p(cd), p(nd)]);
            }));
        }
        self.enforce_mode(&ns)?;
        Ok(ns)
    }

    /// With `--mode`, a namespace holding the other mode's data is refused; an empty one is
    /// switched.
    fn enforce_mode(&self, ns: &Namespace) -> Result<(), ZdbError> {
        let name = &ns.name;
        if let Some(mode) = self.cfg.mode {
            let mut st = ns.lock();
            if st.desc.mode != mode {
                if !st.is_pristine() {
                    return Err(ZdbError::Config(format!(
                        "namespace {name} holds {} data but the server runs in --mode {}",
                        st.desc.mode.name(),
                        mode.name()
                    )));
                }
                st.set_mode(mode);
            }
        }
        Ok(())
    }

    /// Registers a mirror feed (writers start waking [`Engine::mirror_signal`]).
    pub fn mirror_attached(&self) -> MirrorGuard {
        self.mirrors.fetch_add(1, Ordering::SeqCst);
        MirrorGuard(self.mirrors.clone())
    }

    /// Woken after writes while a mirror feed is connected.
    pub fn mirror_signal(&self) -> &tokio::sync::Notify {
        &self.mirror_signal
    }

    /// Mirror feeds connected.
    pub fn mirrors(&self) -> usize {
        self.mirrors.load(Ordering::Relaxed)
    }

    /// Queues a hook event (no-op without `--hook`).
    pub fn fire(&self, event: &str, args: Vec<String>) {
        if let Some(h) = &self.hooks {
            h.fire(event, args);
        }
    }

    /// The hook runner, if `--hook` was given.
    pub fn hooks(&self) -> Option<&Arc<Hooks>> {
        self.hooks.as_ref()
    }

    /// `RELOAD`: reopens a namespace from its files. `Ok(false)` if it does not exist.
    pub fn reload(&self, name: &str) -> Result<bool, ZdbError> {
        let Some(ns) = self.get(name) else {
            return Ok(false);
        };
        ns.reload(self.cfg.datasize, self.cfg.strict_index)
            .map_err(|source| ZdbError::Namespace {
                name: name.to_string(),
                source,
            })?;
        self.enforce_mode(&ns)?;
        self.fire("namespace-reloaded", vec![name.to_string()]);
        Ok(true)
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Namespace>>> {
        self.namespaces.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Namespace>>> {
        self.namespaces.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Read cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// A namespace by name.
    pub fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.read_map().get(name).cloned()
    }

    /// The `default` namespace.
    pub fn default_ns(&self) -> Arc<Namespace> {
        self.get(DEFAULT_NS)
            .expect("the default namespace is created at open and cannot be deleted")
    }

    /// Names, sorted.
    pub fn list(&self) -> Vec<String> {
        self.read_map().keys().cloned().collect()
    }

    /// Creates a namespace (`NSNEW`). `Ok(false)` if it exists.
    pub fn create(&self, name: &str) -> Result<bool, ZdbError> {
        if self.get(name).is_some() {
            return Ok(false);
        }
        let ns = self.open_ns(name)?;
        let mut map = self.write_map();
        if map.contains_key(name) {
            return Ok(false);
        }
        let ns = Arc::new(ns);
        self.cache.register(&ns);
        map.insert(name.to_string(), ns);
        drop(map);
        self.fire("namespace-created", vec![name.to_string()]);
        Ok(true)
    }

    /// Deletes a namespace and its files (`NSDEL`). `Ok(false)` if it does not exist.
    pub fn delete(&self, name: &str) -> Result<bool, ZdbError> {
        let Some(ns) = self.write_map().remove(name) else {
            return Ok(false);
        };
        ns.mark_deleted();
        self.fire("namespace-closing", vec![name.to_string()]);
        // Hold the state lock so that no command is half-way through while files go away.
        let st = ns.lock();
        for dir in [&ns.data_dir, &ns.index_dir] {
            remove_dir(dir).map_err(|source| ZdbError::Namespace {
                name: name.to_string(),
                source,
            })?;
        }
        drop(st);
        self.fire("namespace-deleted", vec![name.to_string()]);
        Ok(true)
    }

    /// Flushes a namespace's buffered appends and registers its files for the next fsync
    /// round. Returns the epoch to wait for with [`Engine::sync_upto`].
    pub fn flush(&self, ns: &Namespace) -> Result<u64, StoreError> {
        let mut st = ns.lock();
        let wrote = st.store.flush()?;
        // Always drained, so that rotated files are not kept open when not syncing.
        let files = st.store.take_written();
        // One relaxed load when no mirror is connected.
        if wrote && self.mirrors.load(Ordering::Relaxed) > 0 {
            self.mirror_signal.notify_waiters();
        }
        // The namespace lock stays held until the epoch is bumped: a connection whose
        // appends this flush wrote must not read an older epoch.
        if wrote && self.cfg.sync {
            let mut dirty = self.syncer.dirty.lock().unwrap_or_else(|p| p.into_inner());
            for f in files {
                if !dirty.iter().any(|d| Arc::ptr_eq(d, &f)) {
                    dirty.push(f);
                }
            }
            drop(dirty);
            return Ok(self.syncer.flushed.fetch_add(1, Ordering::SeqCst) + 1);
        }
        Ok(self.syncer.flushed.load(Ordering::SeqCst))
    }

    /// Waits until everything flushed up to `epoch` is on disk (no-op without `--sync`).
    pub async fn sync_upto(&self, epoch: u64) -> Result<(), StoreError> {
        if !self.cfg.sync || self.syncer.synced.load(Ordering::SeqCst) >= epoch {
            return Ok(());
        }
        let _round = self.syncer.round.lock().await;
        if self.syncer.synced.load(Ordering::SeqCst) >= epoch {
            return Ok(());
        }
        let target = self.syncer.flushed.load(Ordering::SeqCst);
        let files =
            std::mem::take(&mut *self.syncer.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        let res = tokio::task::spawn_blocking(move || {
            for f in &files {
                f.sync_data()?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        res.map_err(|source| StoreError::Io {
            op: "fsync",
            path: PathBuf::from("<group commit>"),
            source,
        })?;
        self.syncer.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Flushes and fsyncs every namespace (shutdown).
    pub fn close(&self) -> Result<(), ZdbError> {
        for ns in self.read_map().values() {
            ns.lock()
                .store
                .sync_all()
                .map_err(|source| ZdbError::Namespace {
                    name: ns.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
            op: "remove",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}
