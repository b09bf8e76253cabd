//! A corrupted block in the store: the read fails (EIO through FUSE, an error through the
//! API), a log line names the block, other files still read, and nothing panics.
#![allow(missing_docs)]

mod common;

use std::io::Read as _;
use std::sync::{Arc, Mutex};

use common::*;
use zos_flist::fs::{FlistFs, MountOptions};
use zos_flist::pack::{PackOptions, pack};
use zos_flist::{BlockCache, Flist, Router};

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

#[test]
fn corrupted_block_is_eio_and_logged() {
    let logs = Logs::default();
    let w = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let tmp = tempfile::tempdir().expect("tmp");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("victim"), bytes(3 * CHUNK, 9)).expect("write");
    std::fs::write(src.join("fine"), bytes(1000, 10)).expect("write");
    let store = tmp.path().join("store");
    let router = Router::from_specs(&[format!("dir://{}", store.display())]).expect("router");
    let fl = tmp.path().join("x.fl");
    rt.block_on(pack(&src, &fl, &router, &PackOptions::default()))
        .expect("pack");
    let flist = Flist::open(&fl).expect("open");
    let victim = flist.reader.lookup(1, "victim").expect("q").expect("found");
    let blocks = flist.reader.blocks(victim.ino).expect("blocks");
    // Flip one byte of the second chunk's stored ciphertext.
    let bad = blocks[1].id;
    let path = store.join(&bad.hex()[..2]).join(bad.hex());
    let mut enc = std::fs::read(&path).expect("read");
    enc[100] ^= 0x40;
    std::fs::write(&path, &enc).expect("write");

    // API: the read of chunk 0 works, the read of chunk 1 errors naming the block.
    let cache = BlockCache::new(tmp.path().join("cache"));
    let ok = rt
        .block_on(zos_flist::cache::read_file_range(
            &cache,
            &flist.router,
            &blocks,
            victim.size,
            0,
            4096,
        ))
        .expect("chunk 0 is fine");
    assert_eq!(ok, bytes(3 * CHUNK, 9)[..4096]);
    let err = rt
        .block_on(zos_flist::cache::read_file_range(
            &cache,
            &flist.router,
            &blocks,
            victim.size,
            CHUNK as u64,
            10,
        ))
        .expect_err("corrupt");
    assert!(err.to_string().contains(&bad.hex()), "{err}");
    // The corrupt bytes never reached the cache.
    assert!(!cache.path_of(&bad).exists());
    // Deep verify names it too.
    let report = rt
        .block_on(zos_flist::verify(&flist, true, 4))
        .expect("verify");
    assert_eq!(report.bad.len(), 1, "{report:?}");
    assert!(report.bad[0].contains(&bad.hex()));
    // A corrupt plaintext in the cache is detected and refetched (here: the good chunk 0).
    let c0 = cache.path_of(&blocks[0].id);
    std::fs::write(&c0, b"garbage").expect("write");
    cache.forget_verified();
    let again = rt
        .block_on(zos_flist::cache::read_file_range(
            &cache,
            &flist.router,
            &blocks,
            victim.size,
            0,
            4096,
        ))
        .expect("refetched");
    assert_eq!(again, ok);

    // FUSE: EIO for the bad range, good data elsewhere.
    if !(std::path::Path::new("/dev/fuse").exists() && is_root()) {
        eprintln!("SKIP: FUSE part needs root and /dev/fuse");
        return;
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let opts = MountOptions {
        readahead: 0,
        ..Default::default()
    };
    let fs = FlistFs::new(
        flist.reader.clone(),
        flist.router.clone(),
        Arc::new(BlockCache::new(tmp.path().join("cache2"))),
        rt.handle().clone(),
        &opts,
    );
    let handle = zos_flist::fs::mount(fs, &mnt, &opts).expect("mount");
    struct Unmount(Option<zos_flist::fs::MountHandle>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Some(h) = self.0.take() {
                h.unmount();
            }
        }
    }
    let _guard = Unmount(Some(handle));
    assert_eq!(
        std::fs::read(mnt.join("fine")).expect("fine"),
        bytes(1000, 10)
    );
    let mut f = std::fs::File::open(mnt.join("victim")).expect("open");
    let mut buf = Vec::new();
    let e = f.read_to_end(&mut buf).expect_err("EIO");
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    // Whatever was returned before the error is the true prefix.
    assert_eq!(buf[..], bytes(3 * CHUNK, 9)[..buf.len()]);
    assert!(buf.len() <= CHUNK);
    let text = logs.text();
    assert!(
        text.contains(&bad.hex()) && text.contains("EIO"),
        "log must name the block:\n{text}"
    );
}
