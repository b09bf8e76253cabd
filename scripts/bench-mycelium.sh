#!/usr/bin/env bash
# Mycelium overlay throughput, latency and CPU per Gbit (docs/benchmarks.md, "Mycelium overlay").
#   sudo scripts/bench-mycelium.sh            # RUNS=3 SECS=5 PINGS=200 by default
# Four namespaces mycb-a … mycb-d in a line (veths a–b, b–c, c–d). Measured with iperf3 (TCP, one
# stream) and ping (PINGS, 10 ms apart):
#   plain      a → b over the veth (no overlay)
#   tcp-1hop   a → b over mycelium, TCP link
#   quic-1hop  a → b over mycelium, QUIC link (data packets as DATAGRAMs)
#   tcp-3hops  a → d over mycelium, a–b–c–d TCP links (b and c forward without decrypting)
# CPU per Gbit = CPU seconds (user + system) of every node process during the iperf3 run,
# divided by the gigabits moved. The nodes are crates/zos-mycelium/examples/bench_node.rs (the
# library behind `zos mycelium run`), built in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "needs root (namespaces, TUN)" >&2; exit 1; }
command -v iperf3 >/dev/null || apt-get install -y -qq iperf3 >/dev/null
RUNS=${RUNS:-3}
SECS=${SECS:-5}
PINGS=${PINGS:-200}
cargo build --release -q -p zos-mycelium --example bench_node
NODE=$PWD/target/release/examples/bench_node
TMP=$(mktemp -d)
NS=(mycb-a mycb-b mycb-c mycb-d)

cleanup() {
  for n in "${NS[@]}"; do
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
cleanup
TMP=$(mktemp -d)

for n in "${NS[@]}"; do ip netns add "$n"; ip -n "$n" link set lo up; done
link() { # link A B NET: veth A(.1) – B(.2) on 10.78.NET.0/24
  ip link add "mycb$1$2" netns "${NS[$1]}" type veth peer name "mycb$2$1" netns "${NS[$2]}"
  ip -n "${NS[$1]}" addr add "10.78.$3.1/24" dev "mycb$1$2"
  ip -n "${NS[$2]}" addr add "10.78.$3.2/24" dev "mycb$2$1"
  ip -n "${NS[$1]}" link set "mycb$1$2" up
  ip -n "${NS[$2]}" link set "mycb$2$1" up
}
link 0 1 1
link 1 2 2
link 2 3 3

declare -A PID
start() { # start I PEER…
  local i=$1; shift
  ip netns exec "${NS[$i]}" "$NODE" "$TMP/$i.key" "$@" >"$TMP/$i.log" 2>&1 &
  PID[$i]=$!
  for _ in $(seq 50); do
    ip netns exec "${NS[$i]}" ip -6 addr show dev my0 2>/dev/null | grep -q 'inet6 4\|inet6 5' && return
    sleep 0.1
  done
  echo "node $i did not start: $(cat "$TMP/$i.log")" >&2; exit 1
}
stop_all() {
  for i in "${!PID[@]}"; do kill -9 "${PID[$i]}" 2>/dev/null || true; wait "${PID[$i]}" 2>/dev/null || true; done
  PID=()
}
addr() { ip netns exec "${NS[$1]}" ip -6 -o addr show dev my0 scope global | awk '{print $4}' | cut -d/ -f1; }
cpu_ticks() { # summed utime+stime of the node processes
  local t=0
  for p in "${PID[@]}"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

measure() { # measure NAME FROM TO_ADDR
  local name=$1 from=$2 dst=$3
  ip netns exec "${NS[$from]}" ping -c 3 -W 2 "$dst" >/dev/null 2>&1 || sleep 2
  ip netns exec "${NS[$from]}" ping -c 3 -W 2 "$dst" >/dev/null 2>&1 || { echo "$name: no path" >&2; return; }
  local tps=() cpus=()
  for _ in $(seq "$RUNS"); do
    local c0; c0=$(cpu_ticks)
    local out; out=$(ip netns exec "${NS[$from]}" iperf3 -c "$dst" -t "$SECS" -J 2>/dev/null) || { echo "$name: iperf3 failed" >&2; continue; }
    local c1; c1=$(cpu_ticks)
    local bps; bps=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])')
    tps+=("$(python3 -c "print(f'{$bps/1e9:.2f}')")")
    # CPU seconds per gigabit moved (ticks are 1/100 s)
    if [ "${#PID[@]}" -gt 0 ]; then
      cpus+=("$(python3 -c "print(f'{($c1-$c0)/100/($bps*$SECS/1e9):.2f}')")")
    else
      cpus+=("–")
    fi
  done
  local p; p=$(ip netns exec "${NS[$from]}" ping -q -c "$PINGS" -i 0.01 "$dst" | tail -1 | awk -F/ '{printf "%.3f / %.3f", $5, $6}')
  printf '| %s | %s | %s | %s |\n' "$name" "$(IFS=,; echo "${tps[*]}" | sed 's/,/, /g')" "$p" "$(IFS=,; echo "${cpus[*]}" | sed 's/,/, /g')"
}

echo "| path | TCP throughput (Gbit/s), $RUNS runs of ${SECS} s | ping avg / max (ms) | node CPU s per Gbit |"
echo "|---|---|---|---|"
PID=()
ip netns exec "${NS[1]}" iperf3 -s -D >/dev/null
sleep 0.5
measure "plain veth a → b" 0 10.78.1.2
start 1
start 0 tcp://10.78.1.2:9651
measure "mycelium a → b, TCP link (1 hop)" 0 "$(addr 1)"
stop_all
start 1
start 0 quic://10.78.1.2:9651
measure "mycelium a → b, QUIC link (1 hop)" 0 "$(addr 1)"
stop_all
# the iperf3 server of namespace b (the only process left in it)
for p in $(ip netns pids "${NS[1]}"); do kill "$p" 2>/dev/null || true; done
ip netns exec "${NS[3]}" iperf3 -s -D >/dev/null
start 3
start 2 tcp://10.78.3.2:9651
start 1 tcp://10.78.2.2:9651
start 0 tcp://10.78.1.2:9651
measure "mycelium a → d, TCP links (3 hops)" 0 "$(addr 3)"
stop_all
