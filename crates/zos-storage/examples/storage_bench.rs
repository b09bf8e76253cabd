#![allow(clippy::unwrap_used, missing_docs)]
//! Latency of storage operations on a loop-file pool (root only):
//! `cargo run --release -p zos-storage --example storage_bench`.
//! Figures are in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zos_storage::{
    InProcessZdb, LoopPoolSpec, NamespaceMode, NamespaceSpec, PoolConfig, PoolKind, Storage,
    StorageConfig,
};

const MIB: u64 = 1 << 20;
const N: usize = 20;

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<34} n={:<3} median {:>8.2} ms  p90 {:>8.2} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10])
    );
}

async fn time<F: std::future::Future>(f: F) -> Duration {
    let t = Instant::now();
    f.await;
    t.elapsed()
}

fn qemu_io_write(args: &[&str], key: Option<&str>) -> Duration {
    use std::io::Write;
    let t = Instant::now();
    let mut child = std::process::Command::new("qemu-io")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(k) = key {
        stdin.write_all(k.as_bytes()).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::Builder::new()
        .prefix("zos-storage-bench-")
        .tempdir()
        .unwrap();
    let cfg = PoolConfig {
        runtime_dir: dir.path().join("run"),
        loop_pools: vec![LoopPoolSpec {
            file: dir.path().join("benchssd.img"),
            size: 2048 * MIB,
            kind: PoolKind::Ssd,
        }],
        dir_pools: Vec::new(),
        discover_disks: false,
    };
    let mgr = Storage::start_pools(&cfg).await.unwrap();
    let st = Storage::new(mgr, [1; 32], StorageConfig::new(cfg));
    st.start_zdb(Arc::new(InProcessZdb)).await.unwrap();

    let mut create = Vec::new();
    let mut update = Vec::new();
    let mut restore = Vec::new();
    for i in 0..N {
        let id = format!("1-1-v{i}");
        create.push(time(st.volume_create(&id, 10 * MIB)).await);
        update.push(time(st.volume_update(&id, 11 * MIB)).await);
        let snap = st.volume_snapshots(&id).await.unwrap().remove(0).name;
        restore.push(time(st.volume_restore(&id, &snap)).await);
    }
    report("volume create (subvol + qgroup)", create);
    report("volume update (snapshot + grow)", update);
    report("volume restore", restore);
    let mut reserved = Vec::new();
    for _ in 0..N {
        reserved.push(time(st.reserved(&st.pools()[0])).await);
    }
    report(&format!("reserved() with {N} volumes"), reserved);

    let (mut dc, mut dg) = (Vec::new(), Vec::new());
    for i in 0..N {
        let id = format!("1-1-d{i}");
        dc.push(time(st.disk_create(&id, 20 * MIB)).await);
        dg.push(time(st.disk_update(&id, 24 * MIB)).await);
    }
    report("zmount create (qcow2+LUKS)", dc);
    report("zmount grow (qemu-img resize)", dg);

    let (mut zc, mut zd) = (Vec::new(), Vec::new());
    let spec = NamespaceSpec {
        size: MIB,
        mode: NamespaceMode::User,
        password: "p".into(),
        public: false,
    };
    for i in 0..N {
        zc.push(time(st.zdb_create(&format!("1-1-z{i}"), &spec)).await);
    }
    for i in 0..N {
        zd.push(time(st.zdb_delete(&format!("1-1-z{i}"))).await);
    }
    report("zdb namespace create", zc);
    report("zdb namespace delete", zd);

    // Encryption cost: 256 MiB sequential write through qemu-io, qcow2+LUKS vs raw, same pool.
    let enc = st.disk_create("1-1-enc", 300 * MIB).await.unwrap();
    let opts = enc.qemu_image_opts("s0");
    let key = st.disk_key("1-1-enc").unwrap().passphrase();
    let mut e = Vec::new();
    for _ in 0..3 {
        e.push(qemu_io_write(
            &[
                "--object",
                "secret,id=s0,file=/dev/stdin",
                "--image-opts",
                &opts,
                "-c",
                "write -P 0x11 0 256M",
            ],
            Some(&key),
        ));
    }
    let raw = st.pools()[0].path("vdisks").join("raw-bench");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(300 * MIB)
        .unwrap();
    let raw_s = raw.to_string_lossy().into_owned();
    let mut r = Vec::new();
    for _ in 0..3 {
        r.push(qemu_io_write(
            &["-f", "raw", "-c", "write -P 0x11 0 256M", &raw_s],
            None,
        ));
    }
    let mibs = |v: &mut Vec<Duration>| {
        v.sort();
        256.0 / v[1].as_secs_f64()
    };
    println!(
        "256 MiB write, qcow2+LUKS            median {:>8.1} MiB/s",
        mibs(&mut e)
    );
    println!(
        "256 MiB write, raw                   median {:>8.1} MiB/s",
        mibs(&mut r)
    );
    std::fs::remove_file(&raw).unwrap();

    st.shutdown().await;
}
