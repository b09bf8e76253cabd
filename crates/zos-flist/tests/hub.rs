//! Hub: push (signed) → list → fetch → unpack from the hub's block endpoint; unsigned, foreign
//! and forged uploads are refused.
#![allow(missing_docs)]

mod common;

use std::collections::HashMap;

use common::*;
use zos_flist::hub::{Hub, HubClient};
use zos_flist::pack::{PackOptions, pack};
use zos_flist::unpack::{UnpackOptions, unpack};
use zos_flist::{BlockCache, Flist, Router};
use zos_types::{KeyPair, KeyType};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_fetch_unpack_through_the_hub() {
    let tmp = tempfile::tempdir().expect("tmp");
    let alice = KeyPair::from_seed(KeyType::Ed25519, [7; 32]);
    let bob = KeyPair::from_seed(KeyType::Sr25519, [9; 32]);
    let twins = HashMap::from([(7u32, alice.public()), (9u32, bob.public())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(zos_flist::hub::serve(
        listener,
        Hub::new(tmp.path().join("hub"), twins),
        async {
            let _ = stop_rx.await;
        },
    ));

    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    build_tree(&src, 2 * CHUNK + 7);
    let fl = tmp.path().join("img.fl");
    let router = Router::from_specs(&[format!("dir://{}", tmp.path().join("local").display())])
        .expect("router");
    pack(&src, &fl, &router, &PackOptions::default())
        .await
        .expect("pack");
    let flist = Flist::open(&fl).expect("open");

    let client = HubClient::new(&base, 7, alice);
    let (uploaded, path) = zos_flist::hub::push(&flist, &client, "img.fl", 4)
        .await
        .expect("push");
    assert!(uploaded > 5);
    assert_eq!(path, "/flists/7/img.fl");
    // A second push uploads no block again.
    let (again, _) = zos_flist::hub::push(&flist, &client, "img.fl", 4)
        .await
        .expect("push");
    assert_eq!(again, 0);

    let list: serde_json::Value = reqwest::get(format!("{base}/api/v1/flists"))
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list["7"][0]["name"], "img.fl");
    let md5 = reqwest::get(format!("{base}/flists/7/img.fl.md5"))
        .await
        .expect("md5")
        .text()
        .await
        .expect("text");
    assert_eq!(md5, list["7"][0]["md5"]);

    // A node: fetch by URL, mount/unpack with only the hub as store.
    let local = zos_flist::fetch(
        &format!("{base}/flists/7/img.fl"),
        &tmp.path().join("fetched"),
    )
    .await
    .expect("fetch");
    assert_eq!(
        local.file_name().and_then(|n| n.to_str()),
        Some(md5.as_str())
    );
    let hubbed = Flist::open(&local).expect("open");
    assert_eq!(
        hubbed.reader.routes().expect("routes")[0].url,
        format!("{base}/blocks")
    );
    let report = zos_flist::verify(&hubbed, true, 4).await.expect("verify");
    assert!(
        report.missing.is_empty() && report.bad.is_empty(),
        "{report:?}"
    );
    let out = tmp.path().join("out");
    let cache = BlockCache::new(tmp.path().join("cache"));
    unpack(
        &hubbed.reader,
        &cache,
        &hubbed.router,
        &out,
        &UnpackOptions {
            preserve_ownership: is_root(),
            ..Default::default()
        },
    )
    .await
    .expect("unpack");
    diff_r(&src, &out);

    // Refusals: bob cannot write under alice's twin; an unknown twin; a forged block; junk.
    let bob_client = HubClient::new(&base, 9, bob);
    let e = bob_client
        .put("/flists/7/evil.fl", std::fs::read(&fl).expect("read"))
        .await;
    assert!(e.is_err_and(|e| e.contains("403")));
    let mallory = HubClient::new(&base, 99, KeyPair::from_seed(KeyType::Ed25519, [1; 32]));
    assert!(
        mallory
            .put_flist("x.fl", std::fs::read(&fl).expect("read"))
            .await
            .is_err_and(|e| e.contains("403"))
    );
    let id = zos_flist::BlockId([0xab; 32]);
    assert!(
        bob_client
            .put_block(&id, b"not that block".to_vec())
            .await
            .is_err_and(|e| e.contains("400"))
    );
    assert!(
        bob_client
            .put_flist("junk.fl", b"not sqlite".to_vec())
            .await
            .is_err_and(|e| e.contains("400"))
    );
    let unsigned = reqwest::Client::new()
        .put(format!("{base}/flists/7/u.fl"))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(unsigned.status(), 401);
    // Path traversal in names is not served.
    let r = reqwest::get(format!("{base}/flists/7/..%2F..%2Fetc%2Fpasswd"))
        .await
        .expect("get");
    assert_eq!(r.status(), 404);

    let _ = stop_tx.send(());
    server.await.expect("join").expect("serve");
}
