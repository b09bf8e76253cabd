//! Benchmark (not a test): N small deployments on one node through the real ledger, relay and
//! node API; reports deployments/s and deploy→ok latency percentiles.
//!
//! `cargo run --release -p zos-node --example bench_deploy -- [N] [IN_FLIGHT]`
//!
//! Each deployment has one `volume` workload handled by a file-backed primitive (one small
//! file write + rename). Contracts are created on the ledger first (not timed). Then deploy
//! calls are sent over RMB with at most IN_FLIGHT outstanding; latency is measured from the
//! start of the deploy call to the moment the primitive returned (the engine commits the `ok`
//! result right after, in the same job step). At the end every deployment is checked to be
//! `ok` through `zos.deployment.get`.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use futures::StreamExt as _;
use serde_json::{Value, json};
use zos_node::model::{Workload, WorkloadType};
use zos_node::{Primitive, PrimitiveError, PrimitiveRegistry, WorkloadCtx};

struct Timed {
    inner: FilePrim,
    done: Arc<Mutex<HashMap<String, Instant>>>,
}

#[async_trait]
impl Primitive for Timed {
    fn workload_type(&self) -> WorkloadType {
        self.inner.workload_type()
    }
    async fn provision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<Value, PrimitiveError> {
        let r = self.inner.provision(ctx, wl).await;
        self.done
            .lock()
            .unwrap()
            .insert(ctx.workload_id.clone(), Instant::now());
        r
    }
    async fn deprovision(&self, ctx: &WorkloadCtx, wl: &Workload) -> Result<(), PrimitiveError> {
        self.inner.deprovision(ctx, wl).await
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let in_flight: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let grid = Grid::start().await;
    let root = grid.dir.path().join("prims");
    std::fs::create_dir_all(&root).unwrap();
    let done = Arc::new(Mutex::new(HashMap::new()));
    let mut reg = PrimitiveRegistry::new();
    reg.register(Arc::new(Timed {
        inner: FilePrim {
            t: WorkloadType::Volume,
            updatable: false,
            root: root.clone(),
            delay: Duration::ZERO,
        },
        done: done.clone(),
    }));
    reg.set_pool_reporter(Arc::new(FixedPools));
    let node = InProcNode::start(grid.node_config(&grid.dir.path().join("node")), reg);
    let node_twin = grid.node_twin(1).await;
    let user = Arc::new(grid.user(10).await);

    eprintln!("creating {n} contracts…");
    let mut dls = Vec::with_capacity(n);
    for i in 0..n {
        let mut d = user.deployment(0, &format!("bench{i}"), vec![volume("v", 1 << 20, 0)]);
        user.contract(1, &mut d).await;
        d.sign(user.twin, &user.key).unwrap();
        dls.push(d);
    }
    eprintln!("deploying with {in_flight} in flight…");
    let t0 = Instant::now();
    let sent: Vec<(String, Instant)> = futures::stream::iter(dls.into_iter().map(|d| {
        let user = user.clone();
        async move {
            let wlid = format!("{}-{}-v", d.twin_id, d.contract_id);
            let start = Instant::now();
            user.call(
                node_twin,
                "zos.deployment.deploy",
                &serde_json::to_value(&d).unwrap(),
            )
            .await
            .unwrap();
            (wlid, start)
        }
    }))
    .buffer_unordered(in_flight)
    .collect()
    .await;
    let accepted = t0.elapsed();
    wait_for("all provisioned", Duration::from_secs(600), || async {
        (done.lock().unwrap().len() >= n).then_some(())
    })
    .await;
    let done = done.lock().unwrap().clone();
    let last = done.values().max().copied().unwrap();
    let total = last.duration_since(t0);
    let mut lat: Vec<Duration> = sent
        .iter()
        .map(|(id, s)| done[id].duration_since(*s))
        .collect();
    lat.sort();
    // Every deployment must read back as ok.
    for (id, _) in &sent {
        let c: u64 = id.split('-').nth(1).unwrap().parse().unwrap();
        let d = user.get(node_twin, c).await.unwrap();
        assert_eq!(
            serde_json::to_value(d.workloads[0].result.state).unwrap(),
            json!("ok"),
            "{id}"
        );
    }
    println!("deployments: {n}, in flight: {in_flight}");
    println!(
        "all deploy calls acknowledged in {:.2} s ({:.0} deploy calls/s)",
        accepted.as_secs_f64(),
        n as f64 / accepted.as_secs_f64()
    );
    println!(
        "all ok after {:.2} s: {:.0} deployments/s",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "deploy→ok latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
    node.stop().await;
}
