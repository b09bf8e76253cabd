#![allow(clippy::unwrap_used, missing_docs)]
//! Pools, volumes and zmount disks on real loop devices (root only; skipped loudly otherwise).

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use common::{Env, capable, has_run, loops_of, mounted, qemu_io};
use zos_storage::{AllocError, DiskError, PoolKind, VolumeError};

const MIB: u64 = 1 << 20;
const SEED: [u8; 32] = [42; 32];

#[tokio::test]
async fn pools_from_loop_files_survive_restart() {
    if !capable("pools_from_loop_files_survive_restart") {
        return;
    }
    let env = Env::new(
        "pools",
        &[("ssd", 300, PoolKind::Ssd), ("hdd", 300, PoolKind::Hdd)],
    )
    .await;
    let st = env.storage(SEED).await;
    let infos = st.pool_infos().await.unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].kind, PoolKind::Ssd);
    assert_eq!(infos[1].kind, PoolKind::Hdd);
    assert_eq!(infos[0].size, 300 * MIB);
    assert!(infos[0].used > 0 && infos[0].used < infos[0].size);
    let json = serde_json::to_value(&infos[1]).unwrap();
    assert_eq!(json["type"], "hdd");
    let cache = st.cache_dir().unwrap();
    assert!(
        cache.starts_with(&st.pools()[0].mountpoint),
        "cache on the first SSD pool"
    );
    assert_eq!(
        std::fs::metadata(&cache).unwrap().ino(),
        256,
        "cache is a subvolume"
    );
    std::fs::write(cache.join("identity"), b"node-seed").unwrap();
    let mnts: Vec<_> = st.pools().iter().map(|p| p.mountpoint.clone()).collect();
    assert!(mnts.iter().all(|m| mounted(m)));

    // A crash (no shutdown: pools stay mounted, loops attached): the next start adopts them.
    drop(st);
    let st = env.storage(SEED).await;
    assert_eq!(
        std::fs::read(st.cache_dir().unwrap().join("identity")).unwrap(),
        b"node-seed"
    );
    assert!(
        env.specs.iter().all(|s| loops_of(&s.file).len() == 1),
        "no second attachment"
    );

    st.shutdown().await;
    assert!(mnts.iter().all(|m| !mounted(m)), "unmounted at shutdown");
    assert!(
        env.specs.iter().all(|s| loops_of(&s.file).is_empty()),
        "loops detached at shutdown"
    );

    let st = env.storage(SEED).await;
    let names: Vec<_> = st
        .pool_infos()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(
        names,
        infos.iter().map(|i| i.name.clone()).collect::<Vec<_>>(),
        "same pools again"
    );
    assert_eq!(
        std::fs::read(st.cache_dir().unwrap().join("identity")).unwrap(),
        b"node-seed"
    );
    st.shutdown().await;
}

#[tokio::test]
async fn bad_pool_input_is_refused_and_loses_nothing() {
    if !capable("bad_pool_input_is_refused_and_loses_nothing") {
        return;
    }
    let env = Env::new("foreign", &[("ext", 64, PoolKind::Ssd)]).await;
    // A file that already holds another filesystem must not be formatted.
    let f = &env.specs[0].file;
    std::fs::File::create(f).unwrap().set_len(64 * MIB).unwrap();
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(f)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = zos_storage::Storage::start_pools(&env.pool_config())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ext4"), "{err}");
    assert!(
        loops_of(f).is_empty(),
        "failed start detaches its loop devices"
    );
    let out = std::process::Command::new("blkid")
        .args(["-o", "value", "-s", "TYPE"])
        .arg(f)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ext4",
        "still ext4"
    );
}

/// Write `mib` MiB to `path` in 1 MiB chunks; returns bytes written and the error that stopped it.
fn fill(path: &std::path::Path, mib: u64) -> (u64, Option<std::io::Error>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0xabu8; MIB as usize];
    let mut written = 0;
    for _ in 0..mib {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
            return (written, Some(e));
        }
        written += MIB;
    }
    (written, None)
}

#[tokio::test]
async fn volume_quota_grow_snapshot_restore_delete() {
    if !capable("volume_quota_grow_snapshot_restore_delete") {
        return;
    }
    let env = Env::new("vol", &[("ssd", 400, PoolKind::Ssd)]).await;
    let st = env.storage(SEED).await;
    let id = "7-11-data";
    let v = st.volume_create(id, 32 * MIB).await.unwrap();
    assert_eq!(v.size, 32 * MIB);
    assert_eq!(
        st.volume_create(id, 32 * MIB).await.unwrap(),
        v,
        "idempotent"
    );

    // The quota stops writes past the size.
    let (written, err) = fill(&v.path.join("big"), 64);
    let err = err.expect("quota must stop the writer");
    assert_eq!(err.raw_os_error(), Some(122), "EDQUOT, got {err}");
    assert!((16 * MIB..=32 * MIB).contains(&written), "wrote {written}");
    std::fs::remove_file(v.path.join("big")).unwrap();

    // Snapshot on update; grow.
    std::fs::write(v.path.join("a"), b"v1").unwrap();
    let v2 = st.volume_update(id, 64 * MIB).await.unwrap();
    assert_eq!(v2.size, 64 * MIB);
    assert_eq!(st.volume_get(id).await.unwrap().unwrap().size, 64 * MIB);
    let snaps = st.volume_snapshots(id).await.unwrap();
    assert_eq!(snaps.len(), 1);
    let (written, err) = fill(&v.path.join("big"), 48);
    assert!(
        err.is_none(),
        "48 MiB fits after growing to 64: {err:?} after {written}"
    );
    std::fs::remove_file(v.path.join("big")).unwrap();

    // Shrink is refused as "unchanged" and changes nothing.
    let e = st.volume_update(id, 16 * MIB).await.unwrap_err();
    assert!(
        matches!(e, VolumeError::Shrink { .. }) && e.is_unchanged(),
        "{e}"
    );
    assert_eq!(st.volume_get(id).await.unwrap().unwrap().size, 64 * MIB);

    // Change, then restore the pre-update snapshot.
    std::fs::write(v.path.join("a"), b"v2").unwrap();
    std::fs::write(v.path.join("b"), b"new").unwrap();
    let saved = st.volume_restore(id, &snaps[0].name).await.unwrap();
    assert_eq!(std::fs::read(v.path.join("a")).unwrap(), b"v1");
    assert!(!v.path.join("b").exists());
    assert_eq!(
        st.volume_get(id).await.unwrap().unwrap().size,
        64 * MIB,
        "quota kept across restore"
    );
    let (_, err) = fill(&v.path.join("big"), 80);
    assert_eq!(
        err.expect("quota still enforced after restore")
            .raw_os_error(),
        Some(122)
    );
    std::fs::remove_file(v.path.join("big")).unwrap();
    // The restore itself is undoable.
    st.volume_restore(id, &saved.name).await.unwrap();
    assert_eq!(std::fs::read(v.path.join("a")).unwrap(), b"v2");
    assert!(matches!(
        st.volume_restore(id, "99-0").await.unwrap_err(),
        VolumeError::SnapshotNotFound { .. }
    ));
    assert!(matches!(
        st.volume_create("../x", MIB).await.unwrap_err(),
        VolumeError::InvalidId(_)
    ));
    assert!(matches!(
        st.volume_create("cache", MIB).await.unwrap_err(),
        VolumeError::InvalidId(_)
    ));

    // A crash between the two renames of a restore: the next access puts the volume back.
    let pool = st.pools()[0].mountpoint.clone();
    std::fs::rename(pool.join(id), pool.join(format!(".trash-{id}"))).unwrap();
    let back = st.volume_get(id).await.unwrap().expect("repaired");
    assert_eq!(std::fs::read(back.path.join("a")).unwrap(), b"v2");

    // Snapshots are capped: the oldest go first.
    for _ in 0..zos_storage::volume::MAX_SNAPSHOTS {
        st.volume_snapshot(id).await.unwrap();
    }
    let snaps = st.volume_snapshots(id).await.unwrap();
    assert_eq!(snaps.len(), zos_storage::volume::MAX_SNAPSHOTS);
    assert!(
        snaps[0].seq > 3,
        "the first snapshots were pruned: {:?}",
        snaps[0]
    );
    assert_eq!(
        std::fs::read_dir(pool.join(".snapshots").join(id))
            .unwrap()
            .count(),
        zos_storage::volume::MAX_SNAPSHOTS
    );

    // Deleting deletes the snapshots too.
    st.volume_delete(id).await.unwrap();
    assert!(st.volume_get(id).await.unwrap().is_none());
    assert!(
        !st.pools()[0]
            .mountpoint
            .join(".snapshots")
            .join(id)
            .exists()
    );
    st.volume_delete(id).await.unwrap();
    st.shutdown().await;
}

#[tokio::test]
async fn allocation_refuses_what_does_not_fit() {
    if !capable("allocation_refuses_what_does_not_fit") {
        return;
    }
    let env = Env::new("alloc", &[("ssd", 256, PoolKind::Ssd)]).await;
    let st = env.storage(SEED).await;
    let e = st.volume_create("1-1-huge", 300 * MIB).await.unwrap_err();
    assert!(
        matches!(
            e,
            VolumeError::Alloc {
                source: AllocError::NoSpace { .. },
                ..
            }
        ),
        "{e}"
    );
    st.volume_create("1-1-a", 150 * MIB).await.unwrap();
    let e = st.disk_create("1-1-d", 150 * MIB).await.unwrap_err();
    assert!(matches!(e, DiskError::Alloc { .. }), "{e}");
    assert!(e.to_string().contains("not enough storage"), "{e}");
    let e = st.volume_update("1-1-a", 300 * MIB).await.unwrap_err();
    assert!(matches!(e, VolumeError::Alloc { .. }), "{e}");
    st.disk_create("1-1-d", 100 * MIB).await.unwrap();
    let cap = st.capacity().await.unwrap();
    assert_eq!(cap[0].reserved, 250 * MIB);
    assert_eq!(cap[0].free, 6 * MIB);
    st.shutdown().await;
}

#[tokio::test]
async fn zmount_is_encrypted_sparse_nocow_and_grows() {
    if !capable("zmount_is_encrypted_sparse_nocow_and_grows") {
        return;
    }
    let env = Env::new("zmount", &[("ssd", 400, PoolKind::Ssd)]).await;
    let st = env.storage(SEED).await;
    let id = "3-5-disk";
    let d = st.disk_create(id, 64 * MIB).await.unwrap();
    assert!(d.encrypted);
    assert_eq!(d.size, 64 * MIB);
    assert_eq!(st.disk_create(id, 64 * MIB).await.unwrap(), d, "idempotent");
    let meta = std::fs::metadata(&d.path).unwrap();
    assert!(
        meta.blocks() * 512 < 16 * MIB,
        "sparse: {} blocks",
        meta.blocks()
    );
    let attrs = std::process::Command::new("lsattr")
        .arg(&d.path)
        .output()
        .unwrap();
    let attrs = String::from_utf8_lossy(&attrs.stdout);
    assert!(
        attrs.split_whitespace().next().unwrap().contains('C'),
        "NOCOW: {attrs}"
    );

    // Write a plaintext pattern through the LUKS layer; the file must not contain it.
    let key = st.disk_key(id).unwrap().passphrase();
    let (ok, out) = qemu_io(&d.path, &key, "write -P 0x5a 0 4M");
    assert!(ok, "{out}");
    let raw = std::fs::read(&d.path).unwrap();
    assert!(
        !has_run(&raw, 0x5a, 512),
        "plaintext pattern found in the image file"
    );
    let (ok, out) = qemu_io(&d.path, &key, "read -P 0x5a 0 4M");
    assert!(ok, "data reads back with the key: {out}");
    let (ok, _) = qemu_io(&d.path, &"0".repeat(64), "read -P 0x5a 0 4M");
    assert!(!ok, "a wrong key cannot open the disk");
    // Control: the same check does find the pattern in an unencrypted image, so it can fail.
    let plain = env.dir.join("plain.raw");
    std::fs::File::create(&plain)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let st_out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x5a 0 4M"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(st_out.status.success());
    assert!(has_run(&std::fs::read(&plain).unwrap(), 0x5a, 512));

    // Grow; shrink refused; data kept.
    let d2 = st.disk_update(id, 128 * MIB).await.unwrap();
    assert_eq!(d2.size, 128 * MIB);
    let e = st.disk_update(id, 32 * MIB).await.unwrap_err();
    assert!(e.is_unchanged(), "{e}");
    let (ok, out) = qemu_io(&d.path, &key, "read -P 0x5a 0 4M");
    assert!(ok, "{out}");
    let (ok, out) = qemu_io(&d.path, &key, "write -P 0x33 100M 1M");
    assert!(ok, "grown space is usable: {out}");

    st.disk_delete(id).await.unwrap();
    assert!(st.disk_get(id).unwrap().is_none());
    st.disk_delete(id).await.unwrap();
    st.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_volumes_and_disks() {
    if !capable("restart_keeps_volumes_and_disks") {
        return;
    }
    let env = Env::new("restart", &[("ssd", 400, PoolKind::Ssd)]).await;
    let st = env.storage(SEED).await;
    let v = st.volume_create("9-9-vol", 40 * MIB).await.unwrap();
    std::fs::write(v.path.join("kept"), b"still here").unwrap();
    st.volume_update("9-9-vol", 48 * MIB).await.unwrap();
    let d = st.disk_create("9-9-disk", 32 * MIB).await.unwrap();
    let (ok, out) = qemu_io(
        &d.path,
        &st.disk_key("9-9-disk").unwrap().passphrase(),
        "write -P 0x77 1M 1M",
    );
    assert!(ok, "{out}");
    st.shutdown().await;

    let st = env.storage(SEED).await;
    let v2 = st.volume_get("9-9-vol").await.unwrap().unwrap();
    assert_eq!(v2.size, 48 * MIB);
    assert_eq!(std::fs::read(v2.path.join("kept")).unwrap(), b"still here");
    assert_eq!(st.volume_snapshots("9-9-vol").await.unwrap().len(), 1);
    let d2 = st.disk_get("9-9-disk").unwrap().unwrap();
    assert_eq!(d2, d);
    let (ok, out) = qemu_io(
        &d2.path,
        &st.disk_key("9-9-disk").unwrap().passphrase(),
        "read -P 0x77 1M 1M",
    );
    assert!(ok, "same key after restart: {out}");
    st.shutdown().await;
}
