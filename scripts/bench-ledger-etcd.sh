#!/usr/bin/env bash
# The ledger on etcd against the embedded redb store (docs/benchmarks.md, "Ledger on etcd"):
# 10,000 signed transfers from 16 concurrent clients, submit -> durable receipt p50/p99 and
# tx/s, on redb (one server) and on etcd (3 members + 3 ledger servers, two thirds of the
# submissions forwarded by a follower); then the failover run (producer killed -9 twice, an etcd
# member restarted) with its failover times. Needs `etcd` (Debian etcd-server, etcd-client).
# ZOS_BENCH_TXS changes the count.
set -euo pipefail
cd "$(dirname "$0")/.."
txs="${ZOS_BENCH_TXS:-10000}"
cargo build --release -p zos-ledger --tests >/dev/null 2>&1
run() {
  cargo test --release -p zos-ledger --test etcd_cluster "$@" 2>&1
}
for store in redb etcd; do
  ZOS_BENCH_STORE=$store ZOS_BENCH_TXS=$txs \
    run bench_submit_latency -- --ignored --exact --nocapture | grep -E '^BENCH|SKIP'
done
# The failover run: 16 clients x (txs / 16) transfers, two kills, one etcd member restart.
ZOS_ETCD_TXS_PER_CLIENT=$((txs / 16)) \
  run cluster_survives_producer_kills_and_member_restart -- --exact --nocapture \
  | grep -E 'took over|acknowledged|verify:|SKIP|test result'
