//! `zdb://` store against our ZeroDB: pack into a password-protected namespace (the route row
//! keeps no password), read back through the namespace, unpack and compare.
#![allow(missing_docs)]

mod common;

use common::*;
use zos_flist::pack::{PackOptions, pack};
use zos_flist::unpack::{UnpackOptions, unpack};
use zos_flist::{BlockCache, Flist, Router};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_into_zerodb_and_unpack() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = zos_zdb::ServerConfig {
        data_dir: tmp.path().join("data"),
        index_dir: tmp.path().join("index"),
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        socket: None,
        ..Default::default()
    };
    let server = zos_zdb::Server::bind(cfg).await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));
    // A namespace with a password (public reads stay allowed, as for hub namespaces).
    let client = redis::Client::open(format!("redis://{addr}")).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let _: redis::Value = redis::cmd("NSNEW")
        .arg("blocks")
        .query_async(&mut c)
        .await
        .expect("nsnew");
    let _: redis::Value = redis::cmd("NSSET")
        .arg("blocks")
        .arg("password")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .expect("nsset");

    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    build_tree(&src, 4 * CHUNK + 3);
    let fl = tmp.path().join("z.fl");
    let url = format!("zdb://user:s3cret@{addr}/blocks");
    let router = Router::from_specs(std::slice::from_ref(&url)).expect("router");
    pack(&src, &fl, &router, &PackOptions::default())
        .await
        .expect("pack");
    let flist = Flist::open(&fl).expect("open");
    let routes = flist.reader.routes().expect("routes");
    assert_eq!(
        routes[0].url,
        format!("zdb://user@{addr}/blocks"),
        "password stripped"
    );
    // The blocks are in that namespace under their raw 32-byte ids.
    let some = flist.reader.all_blocks().expect("blocks")[0];
    let _: redis::Value = redis::cmd("SELECT")
        .arg("blocks")
        .arg("s3cret")
        .query_async(&mut c)
        .await
        .expect("select");
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&some.id.0[..])
        .query_async(&mut c)
        .await
        .expect("get");
    assert_eq!(zos_flist::block::blake2b_256(&raw), some.id.0);

    // Read through the namespace (with the password: the route row has none).
    let reading = Flist::open_with(&fl, Router::from_specs(&[url]).expect("router")).expect("open");
    let report = zos_flist::verify(&reading, true, 4).await.expect("verify");
    assert!(
        report.missing.is_empty() && report.bad.is_empty(),
        "{report:?}"
    );
    let out = tmp.path().join("out");
    let cache = BlockCache::new(tmp.path().join("cache"));
    unpack(
        &reading.reader,
        &cache,
        &reading.router,
        &out,
        &UnpackOptions::default(),
    )
    .await
    .expect("unpack");
    diff_r(&src, &out);
    // A wrong password is an error, not empty data.
    let wrong = Router::from_specs(&[format!("zdb://{addr}/nosuchns")]).expect("router");
    assert!(wrong.get(&some.id).await.is_err());

    let _ = stop_tx.send(());
    let _ = task.await;
}
