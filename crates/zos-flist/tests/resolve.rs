//! Node-side resolution: a `zos hub serve` started here; the node resolves the flist URL,
//! verifies the hash (given, in the URL fragment, or the hub's `.md5`), caches the flist and
//! its blocks under one directory, and keeps working from the cache when the hub is gone.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use zos_flist::Router;
use zos_flist::hub::{Hub, HubClient};
use zos_flist::pack::{PackOptions, pack};
use zos_flist::resolve::{FlistCache, FlistHash, ResolveError};
use zos_flist::unpack::{UnpackOptions, unpack};
use zos_types::{KeyPair, KeyType};

async fn unpack_to(r: &zos_flist::resolve::Resolved, cache: &FlistCache, out: &Path) {
    unpack(
        &r.flist.reader,
        &cache.blocks(),
        &r.flist.router,
        out,
        &UnpackOptions {
            preserve_ownership: is_root(),
            ..Default::default()
        },
    )
    .await
    .expect("unpack");
}

fn files_under(p: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_through_the_hub_verify_and_cache() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let alice = KeyPair::from_seed(KeyType::Ed25519, [7; 32]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(zos_flist::hub::serve(
        listener,
        Hub::new(t.join("hub"), HashMap::from([(7u32, alice.public())])),
        async {
            let _ = stop_rx.await;
        },
    ));

    let src = t.join("src");
    std::fs::create_dir(&src).expect("mkdir");
    build_tree(&src, 3 * CHUNK + 11);
    let fl = t.join("img.fl");
    let router =
        Router::from_specs(&[format!("dir://{}", t.join("local").display())]).expect("router");
    pack(&src, &fl, &router, &PackOptions::default())
        .await
        .expect("pack");
    let flist = zos_flist::Flist::open(&fl).expect("open");
    let client = HubClient::new(&base, 7, alice);
    zos_flist::hub::push(&flist, &client, "img.fl", 4)
        .await
        .expect("push");
    let url = format!("{base}/flists/7/img.fl");
    let hub_md5 = reqwest::get(format!("{url}.md5"))
        .await
        .expect("md5")
        .text()
        .await
        .expect("text");

    // First resolution downloads (checked against the hub's .md5), the second is a cache hit.
    let cache = FlistCache::new(t.join("pool-cache"));
    let r = cache.resolve(&url, None).await.expect("resolve");
    assert!(!r.cached);
    assert_eq!(r.md5, hub_md5);
    assert_eq!(r.path, t.join(format!("pool-cache/fl/{hub_md5}.fl")));
    assert_eq!(
        r.flist.reader.routes().expect("routes")[0].url,
        format!("{base}/blocks")
    );
    let again = cache.resolve(&url, None).await.expect("resolve");
    assert!(again.cached);
    assert_eq!(again.path, r.path);

    // Blocks land in the pool cache.
    unpack_to(&r, &cache, &t.join("out1")).await;
    diff_r(&src, &t.join("out1"));
    let cached_blocks = files_under(&t.join("pool-cache/blocks"));
    assert_eq!(
        cached_blocks as u64,
        r.flist.reader.stats().expect("stats").unique_blocks
    );

    // Given hashes: md5 and sha256, as an argument or in the URL fragment.
    let sha = r.sha256.clone();
    for h in [
        format!("md5:{hub_md5}"),
        sha.clone(),
        format!("sha256:{sha}"),
    ] {
        let h = FlistHash::parse(&h).expect("hash");
        cache.resolve(&url, Some(&h)).await.expect("matching hash");
    }
    cache
        .resolve(&format!("{url}#md5={hub_md5}"), None)
        .await
        .expect("fragment");
    // A fresh cache: a wrong hash is refused and nothing is cached.
    let other = FlistCache::new(t.join("other-cache"));
    let wrong = FlistHash::parse(&"0".repeat(32)).expect("hash");
    let e = other
        .resolve(&url, Some(&wrong))
        .await
        .expect_err("mismatch");
    assert!(
        matches!(&e, ResolveError::HashMismatch { md5, .. } if *md5 == hub_md5),
        "{e}"
    );
    assert!(e.to_string().contains("hash mismatch"), "{e}");
    assert!(
        !t.join("other-cache/fl")
            .join(format!("{hub_md5}.fl"))
            .exists()
    );
    let e = other
        .resolve(&format!("{url}#sha256={}", "ab".repeat(32)), None)
        .await
        .expect_err("fragment mismatch");
    assert!(matches!(e, ResolveError::HashMismatch { .. }), "{e}");
    // The same wrong hash against the populated cache: the cached copy does not match either.
    assert!(matches!(
        cache.resolve(&url, Some(&wrong)).await,
        Err(ResolveError::HashMismatch { .. })
    ));

    // A damaged cached copy is dropped and fetched again.
    std::fs::write(&r.path, b"garbage").expect("damage");
    let md5 = FlistHash::parse(&hub_md5).expect("hash");
    let fixed = cache.resolve(&url, Some(&md5)).await.expect("refetch");
    assert!(!fixed.cached);
    assert_eq!(fixed.md5, hub_md5);

    // Bad inputs.
    assert!(matches!(
        cache.resolve("ftp://x/y.fl", None).await,
        Err(ResolveError::BadUrl(_))
    ));
    assert!(matches!(
        FlistHash::parse("md5:xyz"),
        Err(ResolveError::BadHash(_))
    ));
    assert!(matches!(
        cache.resolve(&format!("{url}#md5=123"), None).await,
        Err(ResolveError::BadHash(_))
    ));
    assert!(matches!(
        cache
            .resolve(&format!("{base}/flists/7/nope.fl"), None)
            .await,
        Err(ResolveError::Fetch { .. })
    ));
    // Node-local files: verified too.
    let local = format!("file://{}", fl.display());
    let lr = cache.resolve(&local, None).await.expect("local");
    assert_eq!(lr.path, fl);
    assert!(matches!(
        cache.resolve(&local, Some(&wrong)).await,
        Err(ResolveError::HashMismatch { .. })
    ));

    // The hub goes away: the node still resolves from its cache (by hash, and by URL) and
    // unpacks from cached blocks.
    let _ = stop_tx.send(());
    server.await.expect("join").expect("serve");
    let off = cache
        .resolve(&url, Some(&md5))
        .await
        .expect("offline by hash");
    assert!(off.cached);
    let off = cache.resolve(&url, None).await.expect("offline by url");
    assert!(off.cached);
    unpack_to(&off, &cache, &t.join("out2")).await;
    diff_r(&src, &t.join("out2"));
    // Another URL was never resolved: a clear fetch error.
    assert!(matches!(
        other.resolve(&url, None).await,
        Err(ResolveError::Fetch { .. })
    ));
}

/// A server whose `.md5` disagrees with the flist it serves: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_md5_sidecar_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let t = tmp.path();
    let src = t.join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("f"), b"hello\n").expect("write");
    let fl = t.join("x.fl");
    let router = Router::from_specs(&[format!("dir://{}", t.join("s").display())]).expect("r");
    pack(&src, &fl, &router, &PackOptions::default())
        .await
        .expect("pack");
    let bytes = std::fs::read(&fl).expect("read");
    let app = axum::Router::new()
        .route(
            "/x.fl",
            axum::routing::get(move || {
                let b = bytes.clone();
                async move { b }
            }),
        )
        .route(
            "/x.fl.md5",
            axum::routing::get(|| async { "0123456789abcdef0123456789abcdef\n" }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(l, app).await });
    let cache = FlistCache::new(t.join("c"));
    let e = cache
        .resolve(&format!("http://{addr}/x.fl"), None)
        .await
        .expect_err("sidecar mismatch");
    assert!(
        matches!(&e, ResolveError::HashMismatch { expected, .. } if expected.contains("0123456789abcdef")),
        "{e}"
    );
    server.abort();
}
