#!/usr/bin/env bash
# ZeroDB replication: the master's write throughput alone and with a mirror attached
# (`--replicate-from`), and the mirror's lag, on loopback (release builds).
#   N unique keys of VALUE bytes, CLIENTS connections, PIPELINE requests per round trip.
# Usage: N=200000 CLIENTS=8 PIPELINE=16 VALUE=64 scripts/bench-zdb-replication.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
CLIENTS=${CLIENTS:-8}
PIPELINE=${PIPELINE:-16}
VALUE=${VALUE:-64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -p zos -p zos-zdb --example repl_load >&2
BIN=$CARGO_TARGET_DIR/release/zos
LOAD=$CARGO_TARGET_DIR/release/examples/repl_load
WORK=$(mktemp -d /tmp/bench-zdb-repl.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME EXTRA_ARGS...: prints the address the server listens on.
start() {
    local name=$1; shift
    mkdir -p "$WORK/$name"
    "$BIN" zdb serve --data "$WORK/$name/data" --index "$WORK/$name/index" \
        --listen 127.0.0.1 --port 0 --admin root --threads 1 "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PIDS+=($!)
    for _ in $(seq 300); do
        if grep -q '^listening ' "$WORK/$name.out" 2>/dev/null; then
            sed -n 's/^listening //p' "$WORK/$name.out"
            return
        fi
        sleep 0.1
    done
    echo "$name did not start" >&2
    exit 1
}

echo "load: $(cat /proc/loadavg)"
A=$(start alone)
echo "## master alone"
"$LOAD" "$A" - "$N" "$CLIENTS" "$PIPELINE" "$VALUE" root
M=$(start master)
R=$(start mirror --replicate-from "$M" --master-admin root)
sleep 0.5
echo "## master with a mirror attached"
"$LOAD" "$M" "$R" "$N" "$CLIENTS" "$PIPELINE" "$VALUE" root
echo "load: $(cat /proc/loadavg)"
