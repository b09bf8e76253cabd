//! Durable engine state: one redb file (`<data>/engine.redb`).
//!
//! Tables (all values JSON, keys big-endian tuples):
//! - `deployments` `(twin u32, contract u64)` → [`Record`]: the **current** view of a deployment
//!   (header + the current definition and result of every active workload, in submission
//!   order) and the next transaction sequence number;
//! - `txlog` `(twin, contract, seq u64)` → `Workload` with its result: the append-only
//!   per-deployment transaction log (`zos.deployment.changes`);
//! - `jobs` `seq u64` → [`Job`]: the FIFO job queue (peek → process → ack, so a crash retries);
//! - `sharable` `(twin, name)` → contract: names of sharable workloads (networks) per twin;
//! - `meta` `name` → u64: counters (`job_seq`, `event_height`, `schema_version`);
//! - `history` `(twin, contract, seq)` → [`HistoryEntry`]: every result change of every
//!   workload with its stable error code and the deployment version; unlike `txlog` it
//!   **outlives the deployment** (deleted, failed and rolled back ones keep their evidence)
//!   and is bounded by [`HISTORY_MAX_PER_DEPLOYMENT`] entries and [`HISTORY_MAX_AGE_SECS`].
//!
//! Schema versions (`meta.schema_version`, absent = 1): 2 adds `history`, filled at
//! migration from the `txlog` of the deployments stored then.
//!
//! Every state change (a new deployment with its init results and its job; a result with its
//! view update) is **one** write transaction, committed with redb's default durability
//! (fsync), so a crash leaves either the old or the new state, never half of it. Two writes
//! are deliberately not fsynced on their own, because losing them is harmless: a job's ack
//! (the job runs again and converges) and the watcher's event height (events are replayed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::{Deployment, Workload};

const DEPLOYMENTS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("deployments");
const TXLOG: TableDefinition<(u32, u64, u64), &[u8]> = TableDefinition::new("txlog");
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const SHARABLE: TableDefinition<(u32, &str), u64> = TableDefinition::new("sharable");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const HISTORY: TableDefinition<(u32, u64, u64), &[u8]> = TableDefinition::new("history");

/// The store schema this code writes (see the module docs).
pub const SCHEMA_VERSION: u64 = 2;
/// At most this many history entries are kept per deployment (the oldest go first).
pub const HISTORY_MAX_PER_DEPLOYMENT: u64 = 512;
/// History entries older than this (30 days) are dropped.
pub const HISTORY_MAX_AGE_SECS: u64 = 30 * 24 * 3600;

/// One result change of one workload, as `zos.deployment.history` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in this deployment's history (from 1, never reused).
    pub seq: u64,
    /// Workload name.
    pub name: String,
    /// Workload type.
    #[serde(rename = "type")]
    pub workload_type: String,
    /// The workload's version.
    pub version: u32,
    /// The deployment's version when the result was recorded.
    pub deployment_version: u32,
    /// Result state.
    pub state: crate::model::ResultState,
    /// Stable error code (`error` and refused updates), `null` otherwise.
    pub code: Option<zos_types::ErrorCode>,
    /// Result message (the cause for an error).
    pub message: String,
    /// Unix seconds of the result.
    pub created: i64,
}

impl HistoryEntry {
    fn of(seq: u64, deployment_version: u32, wl: &Workload) -> Self {
        let r = &wl.result;
        // A result restored from an old log has no code: an error then is at least `backend`.
        let code = r.code.or(match r.state {
            crate::model::ResultState::Error => Some(zos_types::ErrorCode::Backend),
            _ => None,
        });
        HistoryEntry {
            seq,
            name: wl.name.clone(),
            workload_type: wl.workload_type.as_str().to_string(),
            version: wl.version,
            deployment_version,
            state: r.state,
            code,
            message: r.error.clone(),
            created: r.created.0,
        }
    }
}

/// Errors of the engine store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption detected by redb).
    #[error("engine store {path}: {source}")]
    Db {
        /// Database file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored value does not decode.
    #[error("engine store: corrupt {what}: {reason}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Decoder message.
        reason: String,
    },
    /// `create` of a deployment that is already stored.
    #[error("deployment with contract id {contract} already exists")]
    Exists {
        /// Contract id.
        contract: u64,
    },
    /// The deployment is not stored.
    #[error("deployment not found")]
    NotFound {
        /// Twin.
        twin: u32,
        /// Contract id.
        contract: u64,
    },
    /// The blocking task running the operation was cancelled (runtime shutting down).
    #[error("engine store operation interrupted (runtime shutting down)")]
    Interrupted,
    /// A sharable name is already used by another deployment of the twin.
    #[error("conflict: sharable workload name '{name}' is already used by contract {contract}")]
    Conflict {
        /// Workload name.
        name: String,
        /// The deployment using it.
        contract: u64,
    },
}

/// The current view of one deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Header plus current workloads (with results).
    pub deployment: Deployment,
    /// Next sequence number in this deployment's transaction log.
    pub next_seq: u64,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOp {
    /// New deployment: validate against the ledger, then install.
    Provision,
    /// Reconciliation after a restart: check the contract is still active, install again
    /// idempotently (no node/hash re-check, as upstream's reboot path).
    Reprovision,
    /// Move to `target` (already checked synchronously).
    Update {
        /// The new deployment.
        target: Deployment,
    },
    /// Remove every workload, then the deployment.
    Deprovision {
        /// Recorded as the message of the `deleted` results.
        reason: String,
    },
    /// Pause ok workloads (grace period).
    Pause,
    /// Resume paused workloads.
    Resume,
}

/// One queued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Owner twin.
    pub twin: u32,
    /// Contract id.
    pub contract: u64,
    /// Operation.
    pub op: JobOp,
    /// Unix milliseconds when queued (job latency metric).
    pub queued_ms: u64,
}

/// How a workload result changes the current view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Add the workload or replace its current definition and result.
    Upsert,
    /// Log only (state `unchanged`: the previous definition stays current).
    LogOnly,
    /// Log, then drop the workload from the current view (state `deleted`).
    Remove,
}

/// The engine store (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    /// Unix seconds of the last age pruning of `history` (a full scan: at most hourly).
    last_prune: Arc<std::sync::atomic::AtomicU64>,
}

/// Least time between two age prunings of the history after deletions.
const HISTORY_PRUNE_EVERY_SECS: u64 = 3600;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path.display())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("engine records serialise (no maps with non-string keys)")
}

fn dec<T: for<'de> Deserialize<'de>>(
    what: impl FnOnce() -> String,
    b: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        what: what(),
        reason: e.to_string(),
    })
}

impl Store {
    /// Opens or creates the store file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Db {
            path: path.to_path_buf(),
            source: Box::new(e.into()),
        })?;
        let s = Store {
            db: Arc::new(db),
            path: path.to_path_buf(),
            last_prune: Arc::default(),
        };
        // Create the tables so that read transactions never see them missing.
        let w = s.write()?;
        {
            w.open_table(DEPLOYMENTS).map_err(|e| s.err(e))?;
            w.open_table(TXLOG).map_err(|e| s.err(e))?;
            w.open_table(JOBS).map_err(|e| s.err(e))?;
            w.open_table(SHARABLE).map_err(|e| s.err(e))?;
            w.open_table(META).map_err(|e| s.err(e))?;
            w.open_table(HISTORY).map_err(|e| s.err(e))?;
        }
        s.migrate(&w)?;
        w.commit().map_err(|e| s.err(e))?;
        s.prune_history(now_secs())?;
        Ok(s)
    }

    /// Brings an older store to [`SCHEMA_VERSION`] inside the opening transaction (a crash
    /// leaves the old schema, and the next start migrates again).
    fn migrate(&self, w: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
        let version = meta
            .get("schema_version")
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(1);
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                what: "schema".into(),
                reason: format!(
                    "store schema {version} is newer than this agent's {SCHEMA_VERSION}"
                ),
            });
        }
        if version < 2 {
            // History starts from the transaction log of what is stored now.
            let deps = w.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
            let log = w.open_table(TXLOG).map_err(|e| self.err(e))?;
            let mut hist = w.open_table(HISTORY).map_err(|e| self.err(e))?;
            let mut n = 0u64;
            for item in deps.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let (twin, contract) = k.value();
                let rec: Record = dec(|| format!("deployment {twin}/{contract}"), v.value())?;
                let dv = rec.deployment.version;
                let mut seq = 0;
                for e in log
                    .range((twin, contract, 0)..=(twin, contract, u64::MAX))
                    .map_err(|e| self.err(e))?
                {
                    let (_, v) = e.map_err(|e| self.err(e))?;
                    let wl: Workload = dec(|| format!("transaction {twin}/{contract}"), v.value())?;
                    seq += 1;
                    let entry = HistoryEntry::of(seq, dv, &wl);
                    hist.insert((twin, contract, seq), enc(&entry).as_slice())
                        .map_err(|e| self.err(e))?;
                    n += 1;
                }
            }
            tracing::info!(
                entries = n,
                "engine store migrated to schema 2 (deployment history)"
            );
        }
        meta.insert("schema_version", SCHEMA_VERSION)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn push_history(
        &self,
        w: &redb::WriteTransaction,
        twin: u32,
        contract: u64,
        deployment_version: u32,
        wls: &[&Workload],
    ) -> Result<(), StoreError> {
        let mut hist = w.open_table(HISTORY).map_err(|e| self.err(e))?;
        let last = hist
            .range((twin, contract, 0)..=(twin, contract, u64::MAX))
            .map_err(|e| self.err(e))?
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value().2)
            .unwrap_or(0);
        let mut seq = last;
        for wl in wls {
            seq += 1;
            let entry = HistoryEntry::of(seq, deployment_version, wl);
            hist.insert((twin, contract, seq), enc(&entry).as_slice())
                .map_err(|e| self.err(e))?;
        }
        if seq > HISTORY_MAX_PER_DEPLOYMENT {
            let keep_from = seq - HISTORY_MAX_PER_DEPLOYMENT + 1;
            hist.retain_in((twin, contract, 0)..(twin, contract, keep_from), |_, _| {
                false
            })
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Drops history entries older than [`HISTORY_MAX_AGE_SECS`] before `now` (unix
    /// seconds). Runs at open and after a deletion at most hourly; returns how many were
    /// dropped.
    pub fn prune_history(&self, now: u64) -> Result<u64, StoreError> {
        self.last_prune
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let cutoff = now.saturating_sub(HISTORY_MAX_AGE_SECS) as i64;
        let w = self.write()?;
        let mut dropped = 0;
        {
            let mut hist = w.open_table(HISTORY).map_err(|e| self.err(e))?;
            hist.retain(|_, v| {
                // An undecodable entry is dropped too: history is evidence, not state.
                let keep = serde_json::from_slice::<HistoryEntry>(v)
                    .map(|e| e.created >= cutoff)
                    .unwrap_or(false);
                if !keep {
                    dropped += 1;
                }
                keep
            })
            .map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))?;
        Ok(dropped)
    }

    /// The kept history of one deployment (also once deleted), oldest first.
    pub fn history(&self, twin: u32, contract: u64) -> Result<Vec<HistoryEntry>, StoreError> {
        let r = self.read()?;
        let hist = r.open_table(HISTORY).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in hist
            .range((twin, contract, 0)..=(twin, contract, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (_, _, seq) = k.value();
            out.push(dec(
                || format!("history {twin}/{contract}/{seq}"),
                v.value(),
            )?);
        }
        Ok(out)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.db.begin_write().map_err(|e| self.err(e))
    }

    fn read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| self.err(e))
    }

    fn push_job(&self, w: &redb::WriteTransaction, job: &Job) -> Result<u64, StoreError> {
        let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
        let seq = meta
            .get("job_seq")
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0)
            + 1;
        meta.insert("job_seq", seq).map_err(|e| self.err(e))?;
        let mut jobs = w.open_table(JOBS).map_err(|e| self.err(e))?;
        jobs.insert(seq, enc(job).as_slice())
            .map_err(|e| self.err(e))?;
        Ok(seq)
    }

    /// Stores a new deployment (every workload in state `init`, logged) and queues `job`, in
    /// one transaction. Fails if the contract is stored or a sharable name is taken.
    pub fn create(&self, dl: &Deployment, job: &Job) -> Result<(), StoreError> {
        let (twin, contract) = (dl.twin_id, dl.contract_id);
        let w = self.write()?;
        {
            let mut deps = w.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
            if deps
                .get((twin, contract))
                .map_err(|e| self.err(e))?
                .is_some()
            {
                return Err(StoreError::Exists { contract });
            }
            let mut shared = w.open_table(SHARABLE).map_err(|e| self.err(e))?;
            for wl in dl
                .workloads
                .iter()
                .filter(|w| w.workload_type.is_sharable())
            {
                if let Some(c) = shared
                    .get((twin, wl.name.as_str()))
                    .map_err(|e| self.err(e))?
                {
                    return Err(StoreError::Conflict {
                        name: wl.name.clone(),
                        contract: c.value(),
                    });
                }
                shared
                    .insert((twin, wl.name.as_str()), contract)
                    .map_err(|e| self.err(e))?;
            }
            let mut log = w.open_table(TXLOG).map_err(|e| self.err(e))?;
            for (seq, wl) in dl.workloads.iter().enumerate() {
                log.insert((twin, contract, seq as u64), enc(wl).as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let rec = Record {
                deployment: dl.clone(),
                next_seq: dl.workloads.len() as u64,
            };
            deps.insert((twin, contract), enc(&rec).as_slice())
                .map_err(|e| self.err(e))?;
        }
        let all: Vec<&Workload> = dl.workloads.iter().collect();
        self.push_history(&w, twin, contract, dl.version, &all)?;
        self.push_job(&w, job)?;
        w.commit().map_err(|e| self.err(e))
    }

    /// Replaces the header of a stored deployment (version, metadata, description, signature
    /// requirement: written at update time, as upstream) and queues `job`, in one transaction.
    pub fn update_header(&self, header: &Deployment, job: &Job) -> Result<(), StoreError> {
        let (twin, contract) = (header.twin_id, header.contract_id);
        let w = self.write()?;
        {
            let mut deps = w.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
            let mut rec: Record = match deps.get((twin, contract)).map_err(|e| self.err(e))? {
                Some(v) => dec(|| format!("deployment {twin}/{contract}"), v.value())?,
                None => return Err(StoreError::NotFound { twin, contract }),
            };
            let workloads = std::mem::take(&mut rec.deployment.workloads);
            rec.deployment = Deployment {
                workloads,
                ..header.clone()
            };
            deps.insert((twin, contract), enc(&rec).as_slice())
                .map_err(|e| self.err(e))?;
        }
        self.push_job(&w, job)?;
        w.commit().map_err(|e| self.err(e))
    }

    /// Appends `wl` (with its result) to the log and applies it to the current view.
    pub fn record(
        &self,
        twin: u32,
        contract: u64,
        wl: &Workload,
        apply: Apply,
    ) -> Result<(), StoreError> {
        let w = self.write()?;
        {
            let mut deps = w.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
            let mut rec: Record = match deps.get((twin, contract)).map_err(|e| self.err(e))? {
                Some(v) => dec(|| format!("deployment {twin}/{contract}"), v.value())?,
                None => return Err(StoreError::NotFound { twin, contract }),
            };
            let mut log = w.open_table(TXLOG).map_err(|e| self.err(e))?;
            log.insert((twin, contract, rec.next_seq), enc(wl).as_slice())
                .map_err(|e| self.err(e))?;
            rec.next_seq += 1;
            let cur = &mut rec.deployment.workloads;
            match apply {
                Apply::Upsert => match cur.iter_mut().find(|c| c.name == wl.name) {
                    Some(c) => *c = wl.clone(),
                    None => cur.push(wl.clone()),
                },
                Apply::LogOnly => {}
                Apply::Remove => {
                    cur.retain(|c| c.name != wl.name);
                    if wl.workload_type.is_sharable() {
                        let mut shared = w.open_table(SHARABLE).map_err(|e| self.err(e))?;
                        shared
                            .remove((twin, wl.name.as_str()))
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            if apply == Apply::Upsert && wl.workload_type.is_sharable() {
                let mut shared = w.open_table(SHARABLE).map_err(|e| self.err(e))?;
                shared
                    .insert((twin, wl.name.as_str()), contract)
                    .map_err(|e| self.err(e))?;
            }
            deps.insert((twin, contract), enc(&rec).as_slice())
                .map_err(|e| self.err(e))?;
            self.push_history(&w, twin, contract, rec.deployment.version, &[wl])?;
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// Removes a deployment, its log and its sharable names; its history stays (bounded by
    /// age), so the owner can still read why it failed or when it was removed.
    pub fn delete(&self, twin: u32, contract: u64) -> Result<(), StoreError> {
        let w = self.write()?;
        {
            let mut deps = w.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
            let rec: Option<Record> =
                match deps.remove((twin, contract)).map_err(|e| self.err(e))? {
                    Some(v) => Some(dec(|| format!("deployment {twin}/{contract}"), v.value())?),
                    None => None,
                };
            let mut shared = w.open_table(SHARABLE).map_err(|e| self.err(e))?;
            if let Some(rec) = rec {
                for wl in &rec.deployment.workloads {
                    let owner = shared
                        .get((twin, wl.name.as_str()))
                        .map_err(|e| self.err(e))?
                        .map(|v| v.value());
                    if owner == Some(contract) {
                        shared
                            .remove((twin, wl.name.as_str()))
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut log = w.open_table(TXLOG).map_err(|e| self.err(e))?;
            log.retain_in((twin, contract, 0)..=(twin, contract, u64::MAX), |_, _| {
                false
            })
            .map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))?;
        let now = now_secs();
        let last = self.last_prune.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) >= HISTORY_PRUNE_EVERY_SECS {
            self.prune_history(now)?;
        }
        Ok(())
    }

    /// The current view of one deployment.
    pub fn get(&self, twin: u32, contract: u64) -> Result<Option<Record>, StoreError> {
        let r = self.read()?;
        let deps = r.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
        match deps.get((twin, contract)).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(dec(
                || format!("deployment {twin}/{contract}"),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// Every stored deployment of `twin` (or of everyone), ordered by (twin, contract).
    pub fn list(&self, twin: Option<u32>) -> Result<Vec<Record>, StoreError> {
        let r = self.read()?;
        let deps = r.open_table(DEPLOYMENTS).map_err(|e| self.err(e))?;
        let range = match twin {
            Some(t) => deps.range((t, 0)..=(t, u64::MAX)),
            None => deps.range((0, 0)..=(u32::MAX, u64::MAX)),
        }
        .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in range {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (t, c) = k.value();
            out.push(dec(|| format!("deployment {t}/{c}"), v.value())?);
        }
        Ok(out)
    }

    /// The transaction log of one deployment, oldest first.
    pub fn changes(&self, twin: u32, contract: u64) -> Result<Vec<Workload>, StoreError> {
        let r = self.read()?;
        let log = r.open_table(TXLOG).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in log
            .range((twin, contract, 0)..=(twin, contract, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (_, _, seq) = k.value();
            out.push(dec(
                || format!("transaction {twin}/{contract}/{seq}"),
                v.value(),
            )?);
        }
        Ok(out)
    }

    /// Queues a job on its own.
    pub fn enqueue(&self, job: &Job) -> Result<u64, StoreError> {
        let w = self.write()?;
        let id = self.push_job(&w, job)?;
        w.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// The oldest queued job, without removing it.
    pub fn peek_job(&self) -> Result<Option<(u64, Job)>, StoreError> {
        let r = self.read()?;
        let jobs = r.open_table(JOBS).map_err(|e| self.err(e))?;
        match jobs.first().map_err(|e| self.err(e))? {
            Some((k, v)) => {
                let id = k.value();
                Ok(Some((id, dec(|| format!("job {id}"), v.value())?)))
            }
            None => Ok(None),
        }
    }

    /// Whether a job for this deployment is queued (or being processed: jobs are removed only
    /// once done). `zos.deployment.wait` uses it to know a version has been applied.
    pub fn has_job_for(&self, twin: u32, contract: u64) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct Owner {
            twin: u32,
            contract: u64,
        }
        let r = self.read()?;
        let jobs = r.open_table(JOBS).map_err(|e| self.err(e))?;
        for entry in jobs.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let o: Owner = dec(|| format!("job {}", k.value()), v.value())?;
            if o.twin == twin && o.contract == contract {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Number of queued jobs.
    pub fn job_count(&self) -> Result<u64, StoreError> {
        let r = self.read()?;
        let jobs = r.open_table(JOBS).map_err(|e| self.err(e))?;
        jobs.len().map_err(|e| self.err(e))
    }

    /// Removes a processed job.
    ///
    /// Not fsynced on its own (it becomes durable with the next durable commit): losing an
    /// ack in a crash only makes the job run again, which converges without new results.
    pub fn ack_job(&self, id: u64) -> Result<(), StoreError> {
        let mut w = self.write()?;
        w.set_durability(redb::Durability::None);
        {
            let mut jobs = w.open_table(JOBS).map_err(|e| self.err(e))?;
            jobs.remove(id).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }

    /// A counter from `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let r = self.read()?;
        let meta = r.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta.get(key).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    /// Sets a counter in `meta`.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.set_meta_with(key, value, redb::Durability::Immediate)
    }

    /// Sets a counter that may be lost in a crash (e.g. the event height: a replay from an
    /// older height is harmless); durable with the next durable commit.
    pub fn set_meta_lazy(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.set_meta_with(key, value, redb::Durability::None)
    }

    fn set_meta_with(&self, key: &str, value: u64, d: redb::Durability) -> Result<(), StoreError> {
        let mut w = self.write()?;
        w.set_durability(d);
        {
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(key, value).map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ResultState, WorkloadType};

    fn wl(name: &str, t: WorkloadType) -> Workload {
        Workload {
            name: name.into(),
            workload_type: t,
            data: serde_json::json!({"size": 1}),
            ..Workload::default()
        }
    }

    fn dl(twin: u32, contract: u64) -> Deployment {
        Deployment {
            twin_id: twin,
            contract_id: contract,
            workloads: vec![
                wl("a", WorkloadType::Volume),
                wl("n", WorkloadType::Network),
            ],
            ..Deployment::default()
        }
    }

    fn job(twin: u32, contract: u64) -> Job {
        Job {
            twin,
            contract,
            op: JobOp::Provision,
            queued_ms: 0,
        }
    }

    #[test]
    fn create_record_remove_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("e.redb")).unwrap();
        s.create(&dl(1, 10), &job(1, 10)).unwrap();
        assert!(matches!(
            s.create(&dl(1, 10), &job(1, 10)),
            Err(StoreError::Exists { contract: 10 })
        ));
        // sharable name "n" is taken for twin 1 by contract 10, free for twin 2
        assert!(matches!(
            s.create(&dl(1, 11), &job(1, 11)),
            Err(StoreError::Conflict { contract: 10, .. })
        ));
        s.create(&dl(2, 11), &job(2, 11)).unwrap();

        let mut ok = wl("a", WorkloadType::Volume);
        ok.result.state = ResultState::Ok;
        s.record(1, 10, &ok, Apply::Upsert).unwrap();
        let mut un = ok.clone();
        un.version = 1;
        un.result.state = ResultState::Unchanged;
        s.record(1, 10, &un, Apply::LogOnly).unwrap();
        let mut del = wl("n", WorkloadType::Network);
        del.result.state = ResultState::Deleted;
        s.record(1, 10, &del, Apply::Remove).unwrap();

        let rec = s.get(1, 10).unwrap().unwrap();
        assert_eq!(rec.deployment.workloads.len(), 1);
        assert_eq!(rec.deployment.workloads[0].version, 0);
        assert_eq!(rec.deployment.workloads[0].result.state, ResultState::Ok);
        assert_eq!(s.changes(1, 10).unwrap().len(), 5);
        // "n" is free again for twin 1
        s.create(&dl(1, 12), &job(1, 12)).unwrap();

        assert_eq!(s.list(Some(1)).unwrap().len(), 2);
        assert_eq!(s.list(None).unwrap().len(), 3);
        s.delete(1, 10).unwrap();
        assert!(s.get(1, 10).unwrap().is_none());
        assert!(s.changes(1, 10).unwrap().is_empty());
        assert_eq!(s.changes(1, 12).unwrap().len(), 2);
    }

    #[test]
    fn history_outlives_delete_and_is_bounded_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("e.redb")).unwrap();
        let mut d = dl(1, 10);
        d.version = 4;
        let now = crate::model::Timestamp(now_secs() as i64);
        d.workloads[0].result.created = now;
        s.create(&d, &job(1, 10)).unwrap();
        let mut bad = wl("a", WorkloadType::Volume);
        bad.result.state = ResultState::Error;
        bad.result.error = "no space".into();
        bad.result.created = crate::model::Timestamp(now_secs() as i64);
        bad.result.code = Some(zos_types::ErrorCode::Capacity);
        s.record(1, 10, &bad, Apply::Upsert).unwrap();
        s.delete(1, 10).unwrap();
        assert!(s.get(1, 10).unwrap().is_none());
        let h = s.history(1, 10).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].seq, 3);
        assert_eq!(h[2].code, Some(zos_types::ErrorCode::Capacity));
        assert_eq!(
            (h[2].message.as_str(), h[2].deployment_version),
            ("no space", 4)
        );
        // "n"'s init entry (created 0) is older than the age bound
        assert_eq!(s.prune_history(now_secs()).unwrap(), 1);
        assert_eq!(s.history(1, 10).unwrap()[1].seq, 3);
        assert_eq!(
            s.prune_history(now_secs() + HISTORY_MAX_AGE_SECS + 1)
                .unwrap(),
            2
        );
        assert!(s.history(1, 10).unwrap().is_empty());
        // count bound: the oldest go first, sequence numbers are never reused
        s.create(&dl(2, 20), &job(2, 20)).unwrap();
        let mut ok = wl("a", WorkloadType::Volume);
        ok.result.created = crate::model::Timestamp(now_secs() as i64);
        for v in 0..HISTORY_MAX_PER_DEPLOYMENT as u32 + 5 {
            ok.version = v;
            s.record(2, 20, &ok, Apply::Upsert).unwrap();
        }
        let h = s.history(2, 20).unwrap();
        assert_eq!(h.len() as u64, HISTORY_MAX_PER_DEPLOYMENT);
        assert_eq!(h.last().unwrap().seq, HISTORY_MAX_PER_DEPLOYMENT + 7);
        assert_eq!(h[0].seq, 8);
    }

    #[test]
    fn schema_1_store_is_migrated_with_history_from_the_txlog() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.redb");
        {
            let s = Store::open(&p).unwrap();
            s.create(&dl(1, 10), &job(1, 10)).unwrap();
            let mut bad = wl("a", WorkloadType::Volume);
            bad.result.state = ResultState::Error;
            bad.result.created = crate::model::Timestamp(now_secs() as i64);
            s.record(1, 10, &bad, Apply::Upsert).unwrap();
            // make it a schema 1 store: no history table, no version
            let w = s.write().unwrap();
            w.delete_table(HISTORY).unwrap();
            w.open_table(META)
                .unwrap()
                .remove("schema_version")
                .unwrap();
            w.commit().unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.meta("schema_version").unwrap(), Some(SCHEMA_VERSION));
        let h = s.history(1, 10).unwrap();
        // the two init entries are older than the retention and go at open
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[0].seq, 3);
        // an error from a log without codes is at least `backend`
        assert_eq!(h[0].code, Some(zos_types::ErrorCode::Backend));
        // a newer schema is refused rather than misread
        s.set_meta("schema_version", SCHEMA_VERSION + 1).unwrap();
        drop(s);
        assert!(matches!(Store::open(&p), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn jobs_are_fifo_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.redb");
        {
            let s = Store::open(&p).unwrap();
            s.create(&dl(1, 1), &job(1, 1)).unwrap();
            s.enqueue(&job(1, 2)).unwrap();
            s.set_meta("event_height", 42).unwrap();
        }
        let s = Store::open(&p).unwrap();
        assert_eq!(s.meta("event_height").unwrap(), Some(42));
        let (id, j) = s.peek_job().unwrap().unwrap();
        assert_eq!(j.contract, 1);
        // peek does not consume: a crash before ack retries the job
        assert_eq!(s.peek_job().unwrap().unwrap().0, id);
        s.ack_job(id).unwrap();
        assert_eq!(s.peek_job().unwrap().unwrap().1.contract, 2);
        assert_eq!(s.job_count().unwrap(), 1);
    }
}
