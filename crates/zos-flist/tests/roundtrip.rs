//! Pack → unpack and pack → FUSE mount round trips of a tree with every edge case: 0 B, 1 B,
//! exactly one chunk, one chunk + 1, 50 MiB, symlinks, hard links, modes (setuid, sticky,
//! read-only dir), owners, empty dirs, non-ASCII names.
#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use zos_flist::fs::{FlistFs, MountOptions};
use zos_flist::pack::{PackOptions, pack};
use zos_flist::unpack::{UnpackOptions, unpack};
use zos_flist::{BlockCache, Flist, Router};

const BIG: usize = 50 * 1024 * 1024;

async fn pack_fixture(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let src = tmp.join("src");
    std::fs::create_dir(&src).expect("mkdir");
    build_tree(&src, BIG);
    let fl = tmp.join("tree.fl");
    let specs = [
        format!("00-7f=dir://{}", tmp.join("store0").display()),
        format!("80-ff=dir://{}", tmp.join("store1").display()),
    ];
    let router = Router::from_specs(&specs).expect("router");
    let report = pack(&src, &fl, &router, &PackOptions::default())
        .await
        .expect("pack");
    // 50 MiB = 100 chunks, +1 +2 (+1 per hard link repeat) … at least these many rows.
    assert!(report.blocks >= 100 + 1 + 2 + 2 * 2 + 4, "{report:?}");
    (src, fl)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_unpack_round_trip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, fl) = pack_fixture(tmp.path()).await;
    let flist = Flist::open(&fl).expect("open");
    let stats = flist.reader.stats().expect("stats");
    // 100 + 1 + 2 chunks of random data, 1 of "one", the zeros file dedups to 2 blocks
    // (full zero chunk + tail), small files 1 each.
    assert!(
        stats.unique_blocks < stats.block_rows,
        "dedup expected: {stats:?}"
    );
    let cache = BlockCache::new(tmp.path().join("cache"));
    let out = tmp.path().join("out");
    let opts = UnpackOptions {
        preserve_ownership: is_root(),
        ..Default::default()
    };
    unpack(&flist.reader, &cache, &flist.router, &out, &opts)
        .await
        .expect("unpack");
    diff_r(&src, &out);
    assert_same(
        &snapshot(&src, is_root(), true),
        &snapshot(&out, is_root(), true),
    );
    // Unpacking again into the same place refuses to overwrite.
    assert!(
        unpack(&flist.reader, &cache, &flist.router, &out, &opts)
            .await
            .is_err()
    );
}

/// Unmounts on drop, even when an assertion fails.
struct Mounted(Option<zos_flist::fs::MountHandle>);
impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.unmount();
        }
    }
}

pub fn fuse_usable() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && is_root()
        && std::process::Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP: FUSE test needs root, /dev/fuse and fusermount3 (apt-get install fuse3)");
    }
    ok
}

#[test]
fn pack_mount_round_trip() {
    if !fuse_usable() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let tmp = tempfile::tempdir().expect("tmp");
    let (src, fl) = rt.block_on(pack_fixture(tmp.path()));
    let flist = Flist::open(&fl).expect("open");
    let cache = Arc::new(BlockCache::new(tmp.path().join("cache")));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let opts = MountOptions::default();
    let fs = FlistFs::new(
        flist.reader.clone(),
        flist.router.clone(),
        cache.clone(),
        rt.handle().clone(),
        &opts,
    );
    let _m = Mounted(Some(zos_flist::fs::mount(fs, &mnt, &opts).expect("mount")));
    diff_r(&src, &mnt);
    assert_same(&snapshot(&src, true, true), &snapshot(&mnt, true, true));
    // Hard links are one inode with three names.
    use std::os::unix::fs::MetadataExt as _;
    let a = std::fs::metadata(mnt.join("exact-plus-one")).expect("stat");
    let b = std::fs::metadata(mnt.join("a/b/hardlink2")).expect("stat");
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 3));
    // A read at an odd offset spanning a chunk boundary.
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(mnt.join("big")).expect("open");
    let mut buf = vec![0u8; 1000];
    f.read_exact_at(&mut buf, CHUNK as u64 * 7 - 500)
        .expect("read");
    assert_eq!(buf, bytes(BIG, 3)[CHUNK * 7 - 500..CHUNK * 7 + 500]);
    // Writing is refused.
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("one"))
            .is_err()
    );
    assert!(std::fs::write(mnt.join("new"), b"x").is_err());
}
