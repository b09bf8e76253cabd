#![allow(clippy::unwrap_used, missing_docs)]
//! A zmount disk image copied off a pool cannot be decrypted with what is on that pool.
//!
//! The node is composed as `zos node run --pool dir:…` composes it: directory pools, the seed
//! mirrored on every pool, state in the SSD pool's `cache`, and the key root from a file in
//! `--data` (outside the pools), all through `zos_node::identity::load_node_keys`. The thief
//! copies every pool's whole tree, finds the seed mirrors there, and tries every 32-byte
//! secret found in it as the seed (legacy derivation), as a key root (new derivation) and as
//! the passphrase itself: qemu-io refuses them all, while the node (with its key root) reads
//! the disk. Controls: the seed is found in the copy, and a disk made the legacy way on the
//! same pool *is* opened by the same search, so the search can succeed.
//!
//! Needs qemu-img and qemu-io (no root): prints `SKIP:` without them.
//!
//! Likewise for ZeroDB (`zdb_namespace_copied_off_a_pool_…`, no qemu needed): a known value
//! written through a namespace of the node's own zdb server is nowhere in the copied pools in
//! clear, and the copied zdb files give it to no key a thief can make from the copy (each
//! candidate as a key root, and as the at-rest key itself), nor to a server without a key;
//! control: the same files opened with the key the node derives from its key root give it back.

#[path = "../../zos-storage/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_node::identity::{self, KeyRootSource};
use zos_primitive::NodeSecret;
use zos_storage::{
    DirPoolSpec, DiskKey, InProcessZdb, NamespaceMode, NamespaceSpec, PoolConfig, PoolKind,
    Storage, StorageConfig,
};

const MIB: u64 = 1 << 20;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// Every 32-byte value a thief can find in `tree`: decoded seed files, 32-byte files, 64-hex
/// tokens in any file, and 32-byte files' contents; plus the seeds on their own.
fn loot(tree: &Path) -> (BTreeSet<[u8; 32]>, BTreeSet<[u8; 32]>) {
    let mut all = Vec::new();
    files(tree, &mut all);
    let (mut seeds, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    for f in all {
        if f.parent().is_some_and(|p| p.ends_with("vdisks")) {
            continue; // images and key records are what we attack, not loot
        }
        let bytes = std::fs::read(&f).unwrap();
        if let Ok(seed) = identity::decode(&f, &bytes) {
            seeds.insert(seed);
        }
        if let Ok(b) = <[u8; 32]>::try_from(bytes.as_slice()) {
            secrets.insert(b);
        }
        let text = String::from_utf8_lossy(&bytes);
        for tok in text.split(|c: char| !c.is_ascii_hexdigit()) {
            if tok.len() == 64 {
                secrets.insert(hex::decode(tok).unwrap().try_into().unwrap());
            }
        }
    }
    secrets.extend(seeds.iter().copied());
    (seeds, secrets)
}

/// Whether any passphrase a thief can make from `secrets` opens `image` (disk id `id`).
fn thief_opens(image: &Path, id: &str, secrets: &BTreeSet<[u8; 32]>) -> Option<String> {
    for s in secrets {
        let as_seed = NodeSecret::new([0; 32]).with_legacy_seed(*s);
        let tries = [
            (
                "legacy derivation from it as the seed",
                DiskKey::legacy(&as_seed, id).unwrap().passphrase(),
            ),
            (
                "new derivation from it as a key root",
                DiskKey::derive(&NodeSecret::new(*s), id).passphrase(),
            ),
            ("it as the passphrase", hex::encode(s)),
        ];
        for (how, pass) in tries {
            if common::qemu_io(image, &pass, "read 0 4k").0 {
                return Some(how.to_string());
            }
        }
    }
    None
}

async fn start_node(data: &Path, pools: &PoolConfig) -> (Arc<Storage>, NodeSecret) {
    let mgr = Storage::start_pools(pools).await.unwrap();
    // As crates/zos/src/cmd/node.rs: mirrors = pools, state in the cache, key root in --data.
    let mirrors: Vec<PathBuf> = mgr.pools().iter().map(|p| p.mountpoint.clone()).collect();
    let cache = mgr.cache_dir().unwrap();
    let root = KeyRootSource::File(data.join(identity::KEY_ROOT_FILE));
    let keys = identity::load_node_keys(&cache, &mirrors, &root).unwrap();
    let st = Storage::new(mgr, keys.secret.clone(), StorageConfig::new(pools.clone()));
    (Arc::new(st), keys.secret)
}

fn dir_pools(tmp: &Path, data: &Path) -> PoolConfig {
    PoolConfig {
        runtime_dir: data.join("run"),
        dir_pools: ["ssd", "hdd"]
            .into_iter()
            .map(|k| DirPoolSpec {
                dir: tmp.join("pools").join(k),
                size: 256 * MIB,
                kind: if k == "ssd" {
                    PoolKind::Ssd
                } else {
                    PoolKind::Hdd
                },
            })
            .collect(),
        ..Default::default()
    }
}

/// Whether `needle` occurs in any file under `tree`.
fn found_in(tree: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files(tree, &mut all);
    all.into_iter()
        .filter(|f| {
            std::fs::read(f)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .collect()
}

/// What a zdb engine opened on `zdb_dir` with `key` answers for `ns`/`key_name`.
fn zdb_read(
    zdb_dir: &Path,
    key: Option<[u8; 32]>,
    ns: &str,
    key_name: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    let engine = zos_zdb::engine::Engine::open(zos_zdb::engine::EngineConfig {
        data_dir: zdb_dir.join("data"),
        index_dir: zdb_dir.join("index"),
        mode: None,
        sync: false,
        datasize: zos_zdb::DEFAULT_DATASIZE,
        cache_bytes: 0,
        strict_index: false,
        at_rest_key: key.map(zos_zdb::crypto::AtRestKey),
    })
    .map_err(|e| e.to_string())?;
    let n = engine.get(ns).ok_or("namespace not found")?;
    let got = n.lock().get(key_name);
    got.map(|v| v.map(|b| b.to_vec()))
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zdb_namespace_copied_off_a_pool_cannot_be_read_with_what_is_on_it() {
    const MARK: &[u8] = b"zos-stolen-zdb-MARKER-3f9a1c-value";
    let tmp = tempfile::Builder::new()
        .prefix("zos-stolen-zdb-")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("node");
    let pools = dir_pools(tmp.path(), &data);
    let (st, secret) = start_node(&data, &pools).await;
    st.start_zdb(Arc::new(InProcessZdb)).await.unwrap();
    let spec = NamespaceSpec {
        size: 16 * MIB,
        mode: NamespaceMode::User,
        password: "pw".into(),
        public: false,
    };
    let r = st.zdb_create("3-1-ns", &spec).await.unwrap();
    let servers = st.zdb_servers();
    assert_eq!(servers.len(), 1, "one zdb server (on the HDD pool)");
    let pool = servers[0].pool.clone();
    {
        let url = format!("redis://{}:{}/", r.ips[0], r.port);
        let mut c = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("SELECT")
            .arg("3-1-ns")
            .arg("pw")
            .query_async::<()>(&mut c)
            .await
            .unwrap();
        for v in [&b"first version, replaced"[..], MARK] {
            redis::cmd("SET")
                .arg("k")
                .arg(v)
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        }
        let got: Vec<u8> = redis::cmd("GET")
            .arg("k")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(got, MARK, "clients see plain 0-db");
    }
    st.shutdown().await;
    drop(st);

    let stolen = tmp.path().join("stolen");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(tmp.path().join("pools"))
        .arg(&stolen)
        .status()
        .unwrap();
    assert!(cp.success());
    assert_eq!(
        found_in(&stolen, MARK),
        Vec::<PathBuf>::new(),
        "the value is on no pool in clear"
    );
    let zdb_dirs: Vec<PathBuf> = ["ssd", "hdd"]
        .iter()
        .map(|k| stolen.join(k).join("zdb"))
        .filter(|d| d.join("data").join("3-1-ns").is_dir())
        .collect();
    assert_eq!(zdb_dirs.len(), 1, "{zdb_dirs:?}");
    let zdb_dir = &zdb_dirs[0];

    let (seeds, secrets) = loot(&stolen);
    assert!(!seeds.is_empty(), "the seed is on the pools");
    let mut tries = vec![None];
    for s in &secrets {
        tries.push(Some(*s));
        tries.push(Some(NodeSecret::new(*s).derive("zdb-at-rest", &pool)));
    }
    eprintln!(
        "thief: {} candidate secrets, {} keys tried",
        secrets.len(),
        tries.len()
    );
    for key in &tries {
        let got = zdb_read(zdb_dir, *key, "3-1-ns", b"k");
        assert!(
            !matches!(&got, Ok(Some(v)) if v == MARK),
            "a key made from the copy reads the value"
        );
        assert!(got.is_err(), "no value without the key root: {got:?}");
    }
    // Control: the node's own key (from its key root, which is not on the pools).
    let real = secret.derive("zdb-at-rest", &pool);
    assert!(!tries.contains(&Some(real)));
    assert_eq!(
        zdb_read(zdb_dir, Some(real), "3-1-ns", b"k").unwrap(),
        Some(MARK.to_vec())
    );
}

#[tokio::test]
async fn disk_copied_off_a_pool_cannot_be_decrypted_with_what_is_on_it() {
    if !zos_storage::exec::have("qemu-img") || !zos_storage::exec::have("qemu-io") {
        eprintln!("SKIP: stolen disk test needs qemu-img and qemu-io (apt-get install qemu-utils)");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("zos-stolen-disk-")
        .tempdir()
        .unwrap();
    let data = tmp.path().join("node");
    let pools = dir_pools(tmp.path(), &data);
    let (st, secret) = start_node(&data, &pools).await;
    let disk = st.disk_create("3-1-disk", 16 * MIB).await.unwrap();
    let key = st.disk_key("3-1-disk").unwrap().passphrase();
    let (ok, out) = common::qemu_io(&disk.path, &key, "write -P 0x5a 0 1M");
    assert!(ok, "{out}");

    // Control disk, made the way the previous version made every disk (seed-derived
    // passphrase, no key record): what the search below must be able to open.
    let legacy_key = DiskKey::legacy(&secret, "3-1-legacy").unwrap().passphrase();
    let legacy = disk.path.with_file_name("3-1-legacy");
    common::qemu_img_create_luks(&legacy, &legacy_key, "8M");
    st.shutdown().await;
    drop(st);

    // The theft: every pool's whole tree, seed mirrors and node state included.
    let stolen = tmp.path().join("stolen");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(tmp.path().join("pools"))
        .arg(&stolen)
        .status()
        .unwrap();
    assert!(cp.success());
    let (seeds, secrets) = loot(&stolen);
    assert!(
        !seeds.is_empty(),
        "the seed is mirrored on the pools, so the thief has it"
    );
    let key_root = std::fs::read(data.join(identity::KEY_ROOT_FILE)).unwrap();
    let root = identity::decode_key_root(&data, &key_root).unwrap();
    assert!(!secrets.contains(&root), "the key root is not on any pool");

    eprintln!(
        "thief: {} seed(s), {} candidate secrets, 3 passphrases each",
        seeds.len(),
        secrets.len()
    );
    let image = stolen.join("ssd/vdisks/3-1-disk");
    assert!(image.is_file());
    assert_eq!(
        thief_opens(&image, "3-1-disk", &secrets),
        None,
        "{} candidate secrets tried",
        secrets.len()
    );
    assert!(
        thief_opens(
            &stolen.join("ssd/vdisks/3-1-legacy"),
            "3-1-legacy",
            &secrets
        )
        .is_some(),
        "control: the same search opens a legacy disk (it is as exposed as before)"
    );

    // The node, restarted with its key root, still opens the disk and reads the data.
    let (st, _) = start_node(&data, &pools).await;
    let key = st.disk_key("3-1-disk").unwrap().passphrase();
    let (ok, out) = common::qemu_io(&disk.path, &key, "read -P 0x5a 0 1M");
    assert!(ok, "the node opens its disk: {out}");
    st.shutdown().await;
}
