#![allow(clippy::unwrap_used, missing_docs)]
//! Directory pools (no root, no btrfs): ZeroDB namespaces reachable with a redis client,
//! volumes as plain directories (size reserved, not enforced), snapshot calls refused with what
//! to run, zmount disks, allocation against the declared size, restart = recovery from the
//! directories alone, and a foreign directory refused. Runs as any user.

use std::path::Path;
use std::sync::Arc;

use zos_storage::{
    AllocError, DirPoolSpec, DiskError, InProcessZdb, NamespaceMode, NamespaceSpec, PoolBackend,
    PoolConfig, PoolError, PoolKind, Storage, StorageConfig, VolumeError, ZdbError,
};

const MIB: u64 = 1 << 20;
const SEED: [u8; 32] = [7; 32];

fn config(dir: &Path) -> PoolConfig {
    PoolConfig {
        runtime_dir: dir.join("run"),
        dir_pools: vec![
            DirPoolSpec {
                dir: dir.join("ssd"),
                size: 64 * MIB,
                kind: PoolKind::Ssd,
            },
            DirPoolSpec {
                dir: dir.join("hdd"),
                size: 64 * MIB,
                kind: PoolKind::Hdd,
            },
        ],
        ..Default::default()
    }
}

async fn start(dir: &Path) -> Storage {
    let cfg = config(dir);
    let mgr = Storage::start_pools(&cfg).await.unwrap();
    let st = Storage::new(mgr, SEED, StorageConfig::new(cfg));
    st.start_zdb(Arc::new(InProcessZdb)).await.unwrap();
    st
}

fn redis_select(port: u16, ns: &str, password: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection()?;
    redis::cmd("SELECT")
        .arg(ns)
        .arg(password)
        .query::<()>(&mut con)?;
    Ok(con)
}

fn reserved(caps: &[zos_storage::PoolCapacity], name: &str) -> u64 {
    caps.iter().find(|c| c.name == name).unwrap().reserved
}

fn assert_no_snapshots(e: VolumeError) {
    let msg = e.to_string();
    assert!(matches!(e, VolumeError::NoSnapshots { .. }), "{msg}");
    assert!(
        msg.contains("plain directory") && msg.contains("`zos up` as root"),
        "the error says why and what to run: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_pools_hold_workloads_and_survive_restart() {
    let tmp = tempfile::Builder::new()
        .prefix("zos-storage-dirpool-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let st = start(dir).await;

    // Pools, the node's cache and the ZeroDB server live in plain directories.
    assert!(
        st.pools()
            .iter()
            .all(|p| p.backend == PoolBackend::Directory)
    );
    let names: Vec<_> = st.pools().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ssd", "hdd"]);
    assert_eq!(st.cache_dir().unwrap(), dir.join("ssd/cache"));
    assert!(dir.join("ssd/cache").is_dir());
    let infos = st.pool_infos().await.unwrap();
    assert_eq!(infos[0].size, 64 * MIB, "the declared size");
    assert!(infos[0].used > 0 && infos[0].used < 64 * MIB, "{infos:?}");
    let servers = st.zdb_servers();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].pool, "hdd", "ZeroDB on the HDD pool");
    assert!(dir.join("hdd/zdb/data").is_dir() && dir.join("hdd/zdb/index").is_dir());

    // A namespace, reached with a redis client.
    let ns = NamespaceSpec {
        size: 16 * MIB,
        mode: NamespaceMode::User,
        password: "pw".into(),
        public: false,
    };
    let r = st.zdb_create("1-1-kv", &ns).await.unwrap();
    let port = r.port;
    let mut con = redis_select(port, "1-1-kv", "pw").unwrap();
    let _: Vec<u8> = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    assert!(redis_select(port, "1-1-kv", "wrong").is_err());

    // A volume is a directory; its size is reserved but not enforced (no quota without btrfs).
    let vol = st.volume_create("1-1-data", 16 * MIB).await.unwrap();
    assert_eq!(vol.path, dir.join("ssd/1-1-data"));
    assert!(vol.path.is_dir());
    assert_eq!(st.volume_create("1-1-data", 16 * MIB).await.unwrap(), vol);
    std::fs::write(vol.path.join("big"), vec![1u8; (17 * MIB) as usize]).unwrap();
    let grown = st.volume_update("1-1-data", 24 * MIB).await.unwrap();
    assert_eq!(grown.size, 24 * MIB, "an update grows the reservation");
    let e = st.volume_update("1-1-data", 8 * MIB).await.unwrap_err();
    assert!(e.is_unchanged(), "{e}");
    assert_eq!(
        st.volume_get("1-1-data").await.unwrap().unwrap().size,
        24 * MIB
    );

    // Snapshots: refused, saying why and what to run.
    assert_no_snapshots(st.volume_snapshot("1-1-data").await.unwrap_err());
    assert_no_snapshots(st.volume_snapshots("1-1-data").await.unwrap_err());
    assert_no_snapshots(st.volume_restore("1-1-data", "1-1").await.unwrap_err());
    assert!(matches!(
        st.volume_snapshots("1-1-none").await.unwrap_err(),
        VolumeError::NotFound(_)
    ));

    // Allocation is against the declared size: 64 MiB, 24 reserved.
    let e = st.volume_create("1-1-big", 48 * MIB).await.unwrap_err();
    assert!(
        matches!(
            e,
            VolumeError::Alloc {
                source: AllocError::NoSpace {
                    largest_free: 0x280_0000,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
    assert!(!dir.join("ssd/1-1-big").exists(), "nothing made on refusal");
    let e = st
        .zdb_create(
            "1-1-huge",
            &NamespaceSpec {
                size: 60 * MIB,
                ..ns.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ZdbError::Alloc { .. }), "{e}");
    let caps = st.capacity().await.unwrap();
    assert_eq!(reserved(&caps, "ssd"), 24 * MIB);
    assert_eq!(reserved(&caps, "hdd"), 16 * MIB);
    // Free is size - reserved, or less when the filesystem under the directory has less.
    assert!(caps.iter().all(|c| c.free <= c.size - c.reserved));

    // zmount: qemu-img works without root; the disk is reserved on the SSD pool.
    let have_qemu = zos_storage::exec::have("qemu-img");
    if have_qemu {
        let d = st.disk_create("1-1-disk", 8 * MIB).await.unwrap();
        assert_eq!(d.path, dir.join("ssd/vdisks/1-1-disk"));
        assert!(d.encrypted);
        assert_eq!(reserved(&st.capacity().await.unwrap(), "ssd"), 32 * MIB);
        let e = st.disk_update("1-1-disk", 48 * MIB).await.unwrap_err();
        assert!(matches!(e, DiskError::Alloc { .. }), "{e}");
        assert_eq!(
            st.disk_update("1-1-disk", 16 * MIB).await.unwrap().size,
            16 * MIB
        );
    } else {
        eprintln!("SKIP (part): zmount on a directory pool needs qemu-img");
    }

    // Restart: everything is found again from the directories, ZeroDB on the same port.
    st.shutdown().await;
    drop(st);
    assert!(dir.join("ssd").is_dir(), "shutdown leaves the pools alone");
    let st = start(dir).await;
    let vol = st.volume_get("1-1-data").await.unwrap().unwrap();
    assert_eq!(vol.size, 24 * MIB);
    assert!(vol.path.join("big").is_file());
    if have_qemu {
        assert_eq!(
            st.disk_get("1-1-disk").unwrap().unwrap().size,
            16 * MIB,
            "disk kept"
        );
    }
    assert_eq!(st.zdb_servers()[0].addr.port(), port);
    let mut con = redis_select(port, "1-1-kv", "pw").unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    drop(con);

    // Delete: the directories and the recorded sizes go, the reservations with them.
    st.volume_delete("1-1-data").await.unwrap();
    st.volume_delete("1-1-data").await.unwrap();
    assert!(!dir.join("ssd/1-1-data").exists());
    assert!(!dir.join("ssd/.volume-sizes/1-1-data").exists());
    st.disk_delete("1-1-disk").await.unwrap();
    assert!(!dir.join("ssd/vdisks/1-1-disk").exists());
    st.zdb_delete("1-1-kv").await.unwrap();
    assert!(redis_select(port, "1-1-kv", "pw").is_err());
    let caps = st.capacity().await.unwrap();
    assert!(caps.iter().all(|c| c.reserved == 0), "{caps:?}");
    st.shutdown().await;

    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*dir.to_string_lossy()),
        "nothing was mounted"
    );
}

#[tokio::test]
async fn a_directory_with_foreign_files_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("ssd");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(home.join("notes.txt"), "mine").unwrap();
    let cfg = PoolConfig {
        dir_pools: vec![format!("dir:{}:1G:ssd", home.display()).parse().unwrap()],
        ..Default::default()
    };
    let e = Storage::start_pools(&cfg).await.unwrap_err();
    assert!(matches!(e, PoolError::ForeignDirectory { .. }), "{e}");
    assert!(e.to_string().contains("not empty"), "{e}");
    assert_eq!(std::fs::read_dir(&home).unwrap().count(), 1, "untouched");
}
