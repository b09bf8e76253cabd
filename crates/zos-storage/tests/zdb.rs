#![allow(clippy::unwrap_used, missing_docs)]
//! ZeroDB namespaces through the storage API on a node with only an SSD pool (the server then
//! runs there): public/private access, seq mode, unchanged updates, allocation, deletion.

mod common;

use std::sync::Arc;

use common::{Env, capable};
use zos_storage::{InProcessZdb, NamespaceMode, NamespaceSpec, PoolKind, ZdbError, ZdbResult};

const MIB: u64 = 1 << 20;

async fn conn(r: &ZdbResult) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://{}:{}/", r.ips[0], r.port);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn select(
    c: &mut redis::aio::MultiplexedConnection,
    ns: &str,
    pw: Option<&str>,
) -> redis::RedisResult<()> {
    let mut cmd = redis::cmd("SELECT");
    cmd.arg(ns);
    if let Some(p) = pw {
        cmd.arg(p);
    }
    cmd.query_async(c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_on_an_ssd_only_node() {
    if !capable("namespaces_on_an_ssd_only_node") {
        return;
    }
    let env = Env::new("zdb", &[("ssd", 300, PoolKind::Ssd)]).await;
    let st = env.storage([5; 32]).await;
    st.start_zdb(Arc::new(InProcessZdb)).await.unwrap();
    st.start_zdb(Arc::new(InProcessZdb)).await.unwrap();
    assert_eq!(
        st.zdb_servers().len(),
        1,
        "no HDD: one server on the SSD pool, started once"
    );

    // Public with password: anyone reads, only the password holder writes.
    let public = NamespaceSpec {
        size: 40 * MIB,
        mode: NamespaceMode::User,
        password: "pw".into(),
        public: true,
    };
    let r = st.zdb_create("1-1-pub", &public).await.unwrap();
    assert_eq!(
        st.zdb_create("1-1-pub", &public).await.unwrap(),
        r,
        "idempotent"
    );
    let mut owner = conn(&r).await;
    select(&mut owner, "1-1-pub", Some("pw")).await.unwrap();
    redis::cmd("SET")
        .arg("a")
        .arg("1")
        .query_async::<()>(&mut owner)
        .await
        .unwrap();
    let mut anon = conn(&r).await;
    select(&mut anon, "1-1-pub", None).await.unwrap();
    let v: Option<String> = redis::cmd("GET")
        .arg("a")
        .query_async(&mut anon)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    let w: redis::RedisResult<()> = redis::cmd("SET")
        .arg("b")
        .arg("2")
        .query_async(&mut anon)
        .await;
    assert!(w.is_err(), "writes need the password");

    // Seq mode: the server assigns ids; a mode change is refused as unchanged.
    let seq = NamespaceSpec {
        size: 20 * MIB,
        mode: NamespaceMode::Seq,
        password: String::new(),
        public: false,
    };
    let rs = st.zdb_create("1-1-seq", &seq).await.unwrap();
    let mut c = conn(&rs).await;
    select(&mut c, "1-1-seq", None).await.unwrap();
    let id: Vec<u8> = redis::cmd("SET")
        .arg("")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(id.len(), 8, "8-byte sequential id");
    let e = st
        .zdb_update(
            "1-1-seq",
            &NamespaceSpec {
                mode: NamespaceMode::User,
                ..seq.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_unchanged(), "{e}");
    let e = st
        .zdb_update(
            "1-1-seq",
            &NamespaceSpec {
                size: MIB,
                ..seq.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(e.is_unchanged(), "{e}");

    // Allocation counts namespaces and volumes on the same pool.
    let big = NamespaceSpec {
        size: 400 * MIB,
        ..seq.clone()
    };
    assert!(matches!(
        st.zdb_create("1-1-big", &big).await.unwrap_err(),
        ZdbError::Alloc { .. }
    ));
    st.volume_create("1-1-vol", 200 * MIB).await.unwrap();
    let mid = NamespaceSpec {
        size: 60 * MIB,
        ..seq.clone()
    };
    let e = st.zdb_create("1-1-mid", &mid).await.unwrap_err();
    assert!(e.to_string().contains("not enough storage"), "{e}");
    let e = st
        .zdb_update(
            "1-1-pub",
            &NamespaceSpec {
                size: 100 * MIB,
                ..public.clone()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ZdbError::Alloc { .. }), "{e}");
    let cap = st.capacity().await.unwrap();
    assert_eq!(cap[0].reserved, 260 * MIB);

    // Bad input is refused before anything happens.
    let star = NamespaceSpec {
        password: "*".into(),
        ..seq.clone()
    };
    assert!(matches!(
        st.zdb_create("1-1-star", &star).await.unwrap_err(),
        ZdbError::Invalid { .. }
    ));
    assert!(matches!(
        st.zdb_create("default", &seq).await.unwrap_err(),
        ZdbError::Invalid { .. }
    ));
    assert!(matches!(
        st.zdb_update("1-1-none", &seq).await.unwrap_err(),
        ZdbError::NotFound(_)
    ));

    // Delete: gone, the name can be reused, deleting again is fine.
    st.zdb_delete("1-1-pub").await.unwrap();
    assert!(st.zdb_get("1-1-pub").await.unwrap().is_none());
    st.zdb_delete("1-1-pub").await.unwrap();
    let mut again = conn(&r).await;
    assert!(select(&mut again, "1-1-pub", Some("pw")).await.is_err());
    drop((owner, anon, c, again));
    st.shutdown().await;
}
