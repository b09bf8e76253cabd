#!/usr/bin/env bash
# Latency of `zos deploy examples/zdb.yaml` on a `zos up` grid (issue 13: the user's path).
#
#   scripts/bench-deploy.sh [RUNS]        (default 30; ZOS=path/to/zos to pick a binary)
#
# Starts `zos up` on free loopback ports in a temp dir, then RUNS times: times one
# `zos deploy examples/zdb.yaml --json` (the whole command: start, connect, contract, send, wait
# for the node's result), then cancels the contract and waits until the node removed it, untimed. Prints p50/p90/min/max in ms.
# Needs what `zos up` needs (root with loop devices and btrfs-progs, or directory pools).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
ZOS=${ZOS:-target/release/zos}
[ -x "$ZOS" ] || { echo "build first: cargo build --release -p zos" >&2; exit 1; }
dir=$(mktemp -d /tmp/zos-bench-deploy.XXXXXX)
export ZOS_CONFIG=$dir/config.toml XDG_CONFIG_HOME=$dir/xdg RUST_LOG=warn
unset ZOS_LEDGER ZOS_RELAY ZOS_KEY ZOS_SEED
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
touch "$dir/up.log"
"$ZOS" up --data "$dir/data" --ssd 4GiB --hdd 4GiB --metrics-port 0 \
    --ledger-port "$(port)" --relay-port "$(port)" >"$dir/up.log" 2>&1 &
up=$!
cleanup() {
    kill -INT "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1200); do
    grep -q "grid is up" "$dir/up.log" && break
    kill -0 "$up" 2>/dev/null || { cat "$dir/up.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "grid is up" "$dir/up.log" || { echo "zos up did not come up" >&2; exit 1; }
times=()
for i in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    "$ZOS" deploy examples/zdb.yaml --json >"$dir/out.json"
    t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
    id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["contract_id"])' "$dir/out.json")
    "$ZOS" cancel "$id" >/dev/null
    # Untimed: let the node remove it, so the next run is a new deployment for any client
    # (older clients would otherwise find the canceled one still listed and try to update it).
    for _ in $(seq 600); do
        [ "$("$ZOS" deployments --json)" = "[]" ] && break
        sleep 0.05
    done
done
printf '%s\n' "${times[@]}" | sort -n | python3 -c '
import sys
v=[int(x)/1000 for x in sys.stdin]
q=lambda p: v[min(len(v)-1, int(p*len(v)))]
print(f"zos deploy examples/zdb.yaml: runs {len(v)}  p50 {q(0.5):.1f} ms  p90 {q(0.9):.1f} ms  min {v[0]:.1f} ms  max {v[-1]:.1f} ms")'
