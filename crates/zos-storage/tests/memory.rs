#![allow(clippy::unwrap_used, missing_docs)]
//! The storage logic on in-memory pools ([`zos_storage::MemoryBackend`]): allocation, volumes
//! (grow-only, snapshots, restore, pruning), raw zmount disks, ZeroDB namespaces and the
//! storage lifecycle. Nothing here needs root, a system tool or a loop device: these tests run
//! the same as any user (see docs/storage.md, "Tests"), and never SKIP.

use std::sync::Arc;

use zos_primitive::PrimitiveRegistry;
use zos_storage::volume::MAX_SNAPSHOTS;
use zos_storage::{
    AllocError, DiskError, MemoryBackend, NamespaceMode, NamespaceSpec, Pool, PoolConfig, PoolKind,
    PoolManager, Storage, StorageConfig, VolumeError, ZdbError,
};

const MIB: u64 = 1 << 20;

struct Fixture {
    storage: Arc<Storage>,
    backends: Vec<Arc<MemoryBackend>>,
    _dir: tempfile::TempDir,
}

/// `pools`: (name, size, kind), each a memory pool in its own temporary directory.
async fn fixture(pools: &[(&str, u64, PoolKind)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut list = Vec::new();
    let mut backends = Vec::new();
    for (name, size, kind) in pools {
        let (p, b) = Pool::memory(name, *kind, &dir.path().join(name), *size).unwrap();
        list.push(p);
        backends.push(b);
    }
    let mgr = PoolManager::adopt(list).await.unwrap();
    let mut cfg = StorageConfig::new(PoolConfig::default());
    cfg.encrypt_disks = false; // qcow2+LUKS needs qemu-img: covered by the btrfs tests
    Fixture {
        storage: Arc::new(Storage::new(mgr, [3u8; 32], cfg)),
        backends,
        _dir: dir,
    }
}

#[tokio::test]
async fn allocation_picks_the_emptiest_pool_and_refuses_what_does_not_fit() {
    let f = fixture(&[
        ("a", 100 * MIB, PoolKind::Ssd),
        ("b", 60 * MIB, PoolKind::Ssd),
    ])
    .await;
    let s = &f.storage;
    assert!(
        s.cache_dir().unwrap().is_dir(),
        "cache made on the first SSD"
    );
    assert_eq!(s.volume_create("1-1-x", 50 * MIB).await.unwrap().pool, "a");
    // a has 50 MiB left, b 60: b wins.
    assert_eq!(s.volume_create("1-1-y", 40 * MIB).await.unwrap().pool, "b");
    let e = s.volume_create("1-1-z", 51 * MIB).await.unwrap_err();
    assert!(
        matches!(&e, VolumeError::Alloc { source: AllocError::NoSpace { largest_free, .. }, .. }
            if *largest_free == 50 * MIB),
        "{e}"
    );
    // A raw disk counts its virtual size.
    s.disk_create("1-1-d", 30 * MIB).await.unwrap();
    let cap = s.capacity().await.unwrap();
    assert_eq!(cap[0].reserved, 80 * MIB);
    assert_eq!(cap[0].free, 20 * MIB);
    // The host filesystem may have less room than the pool's size says.
    f.backends[1].set_available(Some(MIB));
    assert_eq!(s.capacity().await.unwrap()[1].free, MIB);
    let e = s.volume_update("1-1-y", 45 * MIB).await.unwrap_err();
    assert!(matches!(e, VolumeError::Alloc { .. }), "{e}");
    // No HDD pool: ZeroDB would go to an SSD, but no server runs.
    let spec = NamespaceSpec {
        size: MIB,
        mode: NamespaceMode::User,
        password: String::new(),
        public: false,
    };
    assert!(matches!(
        s.zdb_create("1-1-db", &spec).await,
        Err(ZdbError::NoServer)
    ));
}

#[tokio::test]
async fn volumes_grow_snapshot_restore_and_prune() {
    let f = fixture(&[("ssd", 100 * MIB, PoolKind::Ssd)]).await;
    let s = &f.storage;
    for bad in ["", "cache", "zdb-x", "a/b"] {
        assert!(matches!(
            s.volume_create(bad, MIB).await,
            Err(VolumeError::InvalidId(_))
        ));
    }
    let v = s.volume_create("1-1-v", 10 * MIB).await.unwrap();
    assert_eq!(
        s.volume_create("1-1-v", 5 * MIB).await.unwrap().size,
        10 * MIB,
        "converges"
    );
    std::fs::write(v.path.join("f"), "one").unwrap();
    let e = s.volume_update("1-1-v", 5 * MIB).await.unwrap_err();
    assert!(e.is_unchanged(), "{e}");
    // Update: snapshot first, then grow.
    assert_eq!(
        s.volume_update("1-1-v", 20 * MIB).await.unwrap().size,
        20 * MIB
    );
    let snaps = s.volume_snapshots("1-1-v").await.unwrap();
    assert_eq!(snaps.len(), 1);
    std::fs::write(v.path.join("f"), "two").unwrap();
    std::fs::create_dir(v.path.join("d")).unwrap();
    let saved = s.volume_restore("1-1-v", &snaps[0].name).await.unwrap();
    assert_eq!(std::fs::read_to_string(v.path.join("f")).unwrap(), "one");
    assert!(!v.path.join("d").exists());
    assert_eq!(s.volume_get("1-1-v").await.unwrap().unwrap().size, 20 * MIB);
    // The restore is undone by restoring what it saved.
    s.volume_restore("1-1-v", &saved.name).await.unwrap();
    assert_eq!(std::fs::read_to_string(v.path.join("f")).unwrap(), "two");
    assert!(matches!(
        s.volume_restore("1-1-v", "9-9").await,
        Err(VolumeError::SnapshotNotFound { .. })
    ));
    // Old snapshots are pruned, the newest kept.
    for _ in 0..MAX_SNAPSHOTS + 2 {
        s.volume_snapshot("1-1-v").await.unwrap();
    }
    let snaps = s.volume_snapshots("1-1-v").await.unwrap();
    assert_eq!(snaps.len(), MAX_SNAPSHOTS);
    assert!(snaps.windows(2).all(|w| w[0].seq < w[1].seq));
    s.volume_delete("1-1-v").await.unwrap();
    s.volume_delete("1-1-v").await.unwrap();
    assert!(s.volume_get("1-1-v").await.unwrap().is_none());
    assert!(!v.path.exists());
    assert!(matches!(
        s.volume_snapshots("1-1-v").await,
        Err(VolumeError::NotFound(_))
    ));
    assert_eq!(s.capacity().await.unwrap()[0].reserved, 0);
}

#[tokio::test]
async fn raw_disks_grow_only() {
    let f = fixture(&[("ssd", 100 * MIB, PoolKind::Ssd)]).await;
    let s = &f.storage;
    let d = s.disk_create("1-1-d", 10 * MIB + 1).await.unwrap();
    assert_eq!(
        (d.size, d.encrypted),
        (10 * MIB + 512, false),
        "rounded to sectors"
    );
    assert_eq!(
        s.disk_create("1-1-d", 99 * MIB).await.unwrap().size,
        d.size,
        "idempotent"
    );
    assert!(
        s.disk_update("1-1-d", MIB)
            .await
            .unwrap_err()
            .is_unchanged()
    );
    assert_eq!(
        s.disk_update("1-1-d", 20 * MIB).await.unwrap().size,
        20 * MIB
    );
    assert!(matches!(
        s.disk_update("1-1-d", 200 * MIB).await,
        Err(DiskError::Alloc { .. })
    ));
    assert!(d.qemu_image_opts("s").starts_with("driver=raw,"));
    s.disk_delete("1-1-d").await.unwrap();
    assert!(s.disk_get("1-1-d").unwrap().is_none());
}

/// ZeroDB through the storage lifecycle, as the node runs it: started by the registry, its
/// namespaces reserved on the HDD pool, stopped at shutdown.
#[tokio::test]
async fn zdb_namespaces_through_the_lifecycle() {
    let f = fixture(&[
        ("ssd", 100 * MIB, PoolKind::Ssd),
        ("hdd", 50 * MIB, PoolKind::Hdd),
    ])
    .await;
    let s = &f.storage;
    let mut reg = PrimitiveRegistry::new();
    zos_storage::register(&mut reg, s.clone());
    assert!(!reg.health().await[0].1.ok, "not started yet");
    reg.start().await.unwrap();
    let health = reg.health().await;
    assert!(health[0].1.ok, "{health:?}");
    let servers = s.zdb_servers();
    assert_eq!((servers.len(), servers[0].pool.as_str()), (1, "hdd"));
    let spec = NamespaceSpec {
        size: 10 * MIB,
        mode: NamespaceMode::Seq,
        password: "pw".into(),
        public: false,
    };
    let r = s.zdb_create("1-1-db", &spec).await.unwrap();
    assert_eq!(
        (r.namespace.as_str(), r.port),
        ("1-1-db", servers[0].addr.port())
    );
    assert_eq!(s.capacity().await.unwrap()[1].reserved, 10 * MIB);
    let smaller = NamespaceSpec {
        size: MIB,
        ..spec.clone()
    };
    assert!(
        s.zdb_update("1-1-db", &smaller)
            .await
            .unwrap_err()
            .is_unchanged()
    );
    let other_mode = NamespaceSpec {
        mode: NamespaceMode::User,
        ..spec.clone()
    };
    assert!(
        s.zdb_update("1-1-db", &other_mode)
            .await
            .unwrap_err()
            .is_unchanged()
    );
    let too_big = NamespaceSpec {
        size: 60 * MIB,
        ..spec
    };
    assert!(matches!(
        s.zdb_create("1-1-big", &too_big).await,
        Err(ZdbError::Alloc { .. })
    ));
    s.zdb_delete("1-1-db").await.unwrap();
    assert!(s.zdb_get("1-1-db").await.unwrap().is_none());
    reg.shutdown().await;
    assert!(s.zdb_servers().is_empty());
}
