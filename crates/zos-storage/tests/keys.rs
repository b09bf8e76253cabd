#![allow(clippy::unwrap_used, missing_docs)]
//! Disk keys and secrets on disk: a disk made before the key root (seed-derived passphrase, no
//! key record) still opens and grows; new disks use the key root and name it in their key
//! record; a disk of another key root is refused, not reused; a stale image under a recycled
//! workload id is replaced for a new workload and kept for re-provisioning; ZeroDB keeps
//! namespace descriptors (which hold passwords) owner-only.
//!
//! Memory and directory pools only: no root. The encrypted-disk tests need `qemu-img` and
//! `qemu-io` and print `SKIP:` without them.

#[path = "common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use zos_primitive::{NodeSecret, Primitive, WorkloadCtx};
use zos_storage::primitives::ZmountPrimitive;
use zos_storage::{
    DiskError, DiskKey, InProcessZdb, KeyGeneration, MemoryBackend, NamespaceMode, NamespaceSpec,
    Pool, PoolConfig, PoolKind, PoolManager, Storage, StorageConfig,
};
use zos_types::{Deployment, ResultState, Workload, WorkloadType};

const MIB: u64 = 1 << 20;
const ROOT: [u8; 32] = [0x11; 32];
const SEED: [u8; 32] = [0x22; 32];

fn qemu() -> bool {
    let ok = zos_storage::exec::have("qemu-img") && zos_storage::exec::have("qemu-io");
    if !ok {
        eprintln!(
            "SKIP: encrypted disk test needs qemu-img and qemu-io (apt-get install qemu-utils)"
        );
    }
    ok
}

/// One memory SSD pool in `dir/ssd`, with `secret` and encrypted or raw disks.
async fn storage(dir: &Path, secret: NodeSecret, encrypt: bool) -> Arc<Storage> {
    let (p, _b): (Pool, Arc<MemoryBackend>) =
        Pool::memory("ssd", PoolKind::Ssd, &dir.join("ssd"), 256 * MIB).unwrap();
    let mgr = PoolManager::adopt(vec![p]).await.unwrap();
    let mut cfg = StorageConfig::new(PoolConfig::default());
    cfg.encrypt_disks = encrypt;
    Arc::new(Storage::new(mgr, secret, cfg))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The workload `name` in a deployment of twin 1, contract 1, with stored state `state`
/// (`None`: the stored deployment does not hold it yet, as for one added by an update).
fn ctx(name: &str, state: Option<ResultState>) -> (WorkloadCtx, Workload) {
    let mut wl = Workload {
        name: name.into(),
        workload_type: WorkloadType::Zmount,
        data: json!({"size": 8 * MIB}),
        ..Workload::default()
    };
    let mut d = Deployment {
        twin_id: 1,
        contract_id: 1,
        ..Deployment::default()
    };
    if let Some(s) = state {
        wl.result.state = s;
        d.workloads.push(wl.clone());
    }
    (
        WorkloadCtx::new(9, Arc::new(d), name, NodeSecret::new(ROOT)),
        wl,
    )
}

/// A raw disk's content stands for "the previous workload's data" (no qemu needed).
#[tokio::test]
async fn stale_image_of_a_recycled_id_is_replaced_for_a_new_workload_only() {
    let dir = tempfile::tempdir().unwrap();
    let st = storage(dir.path(), NodeSecret::new(ROOT), false).await;
    let d = st.disk_create("1-1-disk", 8 * MIB).await.unwrap();
    std::fs::write(&d.path, b"previous owner's data").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&d.path)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let starts_with_old = |p: &Path| std::fs::read(p).unwrap().starts_with(b"previous");

    // Re-provisioning (stored ok, or error after a failed re-provision): kept as it is.
    let prim = ZmountPrimitive(st.clone());
    for state in [ResultState::Ok, ResultState::Error, ResultState::Paused] {
        let (c, wl) = ctx("disk", Some(state));
        prim.provision(&c, &wl).await.unwrap();
        assert!(
            starts_with_old(&d.path),
            "{state:?}: the workload's own disk is kept"
        );
    }
    assert!(starts_with_old(&d.path));
    assert_eq!(st.disk_create("1-1-disk", 8 * MIB).await.unwrap(), d);

    // A new deployment (`init`) with that id: the image is stale, replaced by an empty one.
    let (c, wl) = ctx("disk", Some(ResultState::Init));
    prim.provision(&c, &wl).await.unwrap();
    let now = std::fs::read(&d.path).unwrap();
    assert_eq!(now.len() as u64, 8 * MIB);
    assert!(
        now.iter().all(|b| *b == 0),
        "the new workload sees none of the old data"
    );

    // A workload added by an update (absent from the stored deployment): the same.
    std::fs::write(&d.path, b"previous owner's data").unwrap();
    let (c, wl) = ctx("disk", None);
    prim.provision(&c, &wl).await.unwrap();
    assert!(!starts_with_old(&d.path));
    assert_eq!(st.disk_get("1-1-disk").unwrap().unwrap().size, 8 * MIB);
    // The storage call itself.
    std::fs::write(&d.path, b"previous owner's data").unwrap();
    st.disk_create_new("1-1-disk", 16 * MIB).await.unwrap();
    assert!(!starts_with_old(&d.path));
    assert_eq!(st.disk_get("1-1-disk").unwrap().unwrap().size, 16 * MIB);
}

/// A disk the previous version made (qemu-img with the seed-derived passphrase, no key record)
/// opens, reads and grows with the legacy key; a new disk on the same node uses the key root,
/// which the seed does not give.
#[tokio::test]
async fn legacy_disk_still_opens_and_new_disks_use_the_key_root() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret = NodeSecret::new(ROOT).with_legacy_seed(SEED);
    let st = storage(dir.path(), secret.clone(), true).await;
    // What the previous version did for disk 1-1-old.
    let vdisks = dir.path().join("ssd/vdisks");
    std::fs::create_dir_all(&vdisks).unwrap();
    let old = vdisks.join("1-1-old");
    let legacy = DiskKey::legacy(&NodeSecret::new([0; 32]).with_legacy_seed(SEED), "1-1-old")
        .unwrap()
        .passphrase();
    common::qemu_img_create_luks(&old, &legacy, "16M");
    let (ok, out) = common::qemu_io(&old, &legacy, "write -P 0x6c 0 1M");
    assert!(ok, "{out}");

    assert_eq!(
        st.disk_key_generation("1-1-old").unwrap(),
        KeyGeneration::LegacySeed
    );
    let d = st.disk_create("1-1-old", 16 * MIB).await.unwrap();
    assert!(d.encrypted);
    assert_eq!(st.disk_key("1-1-old").unwrap().passphrase(), legacy);
    let grown = st.disk_update("1-1-old", 32 * MIB).await.unwrap();
    assert_eq!(grown.size, 32 * MIB, "grown with the legacy key");
    let (ok, out) = common::qemu_io(&old, &legacy, "read -P 0x6c 0 1M");
    assert!(ok, "legacy disk still reads: {out}");

    // A new disk: key-root generation, recorded, and not the seed's key.
    let n = st.disk_create("1-1-new", 16 * MIB).await.unwrap();
    let generation = st.disk_key_generation("1-1-new").unwrap();
    assert_eq!(
        generation,
        KeyGeneration::KeyRoot {
            root_id: secret.root_id()
        }
    );
    let record = vdisks.join(".1-1-new.key");
    assert_eq!(mode(&record), 0o600);
    let key = st.disk_key("1-1-new").unwrap().passphrase();
    assert_eq!(
        key,
        DiskKey::derive(&NodeSecret::new(ROOT), "1-1-new").passphrase()
    );
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(!text.contains(&key), "the record holds no secret");
    let (ok, out) = common::qemu_io(&n.path, &key, "write -P 0x4e 0 1M");
    assert!(ok, "{out}");
    let seeds_key = DiskKey::legacy(&secret, "1-1-new").unwrap().passphrase();
    let (ok, _) = common::qemu_io(&n.path, &seeds_key, "read -P 0x4e 0 1M");
    assert!(!ok, "the seed's key does not open a new disk");

    // Delete removes the record with the image.
    st.disk_delete("1-1-new").await.unwrap();
    assert!(!record.exists() && !n.path.exists());

    // Without the legacy seed, a legacy disk is refused with the reason.
    let no_seed = storage(dir.path(), NodeSecret::new(ROOT), true).await;
    let e = no_seed.disk_key("1-1-old").err().unwrap();
    assert!(matches!(e, DiskError::NoLegacyKey { .. }), "{e}");
}

/// A disk keyed by another key root (the key root file was lost and re-made, or the pool
/// came from another node) is refused by name, never handed to a workload as its own.
#[tokio::test]
async fn disk_of_another_key_root_is_refused() {
    if !qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let st = storage(dir.path(), NodeSecret::new(ROOT), true).await;
    st.disk_create("1-1-disk", 8 * MIB).await.unwrap();
    drop(st);
    let other = storage(dir.path(), NodeSecret::new([0x33; 32]), true).await;
    for e in [
        other.disk_create("1-1-disk", 8 * MIB).await.unwrap_err(),
        other.disk_update("1-1-disk", 16 * MIB).await.unwrap_err(),
        other.disk_key("1-1-disk").err().unwrap(),
    ] {
        assert!(matches!(e, DiskError::OtherKeyRoot { .. }), "{e}");
        assert!(e.to_string().contains("key root"), "{e}");
    }
    // A damaged record: refused, nothing guessed.
    std::fs::write(dir.path().join("ssd/vdisks/.1-1-disk.key"), "garbage").unwrap();
    let e = other.disk_key("1-1-disk").err().unwrap();
    assert!(matches!(e, DiskError::KeyRecord { .. }), "{e}");
    // A new workload with that id gets a fresh disk under this node's root.
    let d = other.disk_create_new("1-1-disk", 8 * MIB).await.unwrap();
    let key = other.disk_key("1-1-disk").unwrap().passphrase();
    let (ok, out) = common::qemu_io(&d.path, &key, "write -P 1 0 64k");
    assert!(ok, "{out}");
}

/// Namespace descriptors hold namespace passwords: 0600, under a 0700 `zdb` directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zdb_namespace_files_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PoolConfig {
        runtime_dir: tmp.path().join("run"),
        dir_pools: vec![zos_storage::DirPoolSpec {
            dir: tmp.path().join("hdd"),
            size: 64 * MIB,
            kind: PoolKind::Hdd,
        }],
        ..Default::default()
    };
    let mgr = Storage::start_pools(&cfg).await.unwrap();
    let st = Storage::new(mgr, ROOT, StorageConfig::new(cfg));
    st.start_zdb(Arc::new(InProcessZdb)).await.unwrap();
    let spec = NamespaceSpec {
        size: MIB,
        mode: NamespaceMode::User,
        password: "s3cret".into(),
        public: false,
    };
    st.zdb_create("1-1-ns", &spec).await.unwrap();
    let zdb = tmp.path().join("hdd/zdb");
    assert_eq!(mode(&zdb), 0o700);
    let desc = zdb.join("index/1-1-ns/zdb-namespace");
    let text = std::fs::read_to_string(&desc).unwrap();
    assert!(
        text.contains(&hex::encode("s3cret")),
        "the file does hold the password"
    );
    assert_eq!(mode(&desc), 0o600);
    st.shutdown().await;
}
