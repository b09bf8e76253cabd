#!/usr/bin/env bash
# Web gateway benchmark (not part of CI): requests/s and latency through the gateway against
# the backend directly, HTTP/1.1 keep-alive, with wrk.
#
#   sudo scripts/bench-gateway.sh            # DUR=10s CONNS=50 THREADS=2 RUNS=1
#
# Runs crates/zos-gateway/examples/bench_gateway.rs: a hyper backend (plain and TLS, a 13-byte
# page) on loopback and the real gateway (dev CA) with a name proxy to the plain backend
# (web.gw.bench: HTTP, and HTTPS terminated at the gateway) and a passthrough name proxy to the
# TLS backend (pass.gw.bench). wrk sends SNI from the URL's host, so the names resolve through a
# private /etc/hosts bind-mounted in a mount namespace of wrk's own (root: unshare -m); the
# host's /etc/hosts is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10s}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
RUNS=${RUNS:-1}
[ "$(id -u)" = 0 ] || { echo "run as root (wrk runs in its own mount namespace)" >&2; exit 1; }
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
cargo build --release -q -p zos-gateway --example bench_gateway
dir=$(mktemp -d /tmp/zos-bench-gateway.XXXXXX)
target/release/examples/bench_gateway "$dir" >"$dir/out" 2>"$dir/err" &
gw=$!
cleanup() {
    kill "$gw" 2>/dev/null || true
    wait "$gw" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 300); do
    grep -q '^ready' "$dir/out" && break
    sleep 0.1
done
grep -q '^ready' "$dir/out" || { cat "$dir/err" >&2; exit 1; }
val() { sed -n "s/^$1=//p" "$dir/out"; }
port() { val "$1" | sed 's/.*://'; }
printf '127.0.0.1 localhost web.gw.bench pass.gw.bench\n' >"$dir/hosts"

# One wrk run: "req/s p50 p99" (latencies in ms).
measure() {
    unshare -m sh -c "mount --bind '$dir/hosts' /etc/hosts && \
        wrk --latency -t$THREADS -c$CONNS -d$DUR '$1'" >"$dir/wrk" 2>&1 || { cat "$dir/wrk" >&2; exit 1; }
    python3 - "$dir/wrk" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit(f"wrk latency {v!r} not understood:\n{t}")
    n, u = m.groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
errs = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", t)
print(f"{rps:.0f} {p50:.2f} {p99:.2f}" + (f" ({errs.group(0)})" if errs else ""))
PY
}

echo "wrk -t$THREADS -c$CONNS -d$DUR, keep-alive; load $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
echo "| path | run | req/s | p50 ms | p99 ms |"
echo "|---|---|---:|---:|---:|"
for run in $(seq "$RUNS"); do
    while read -r label url; do
        read -r rps p50 p99 rest < <(measure "$url")
        echo "| $label | $run | $rps | $p50 | $p99 |${rest:+ $rest}"
    done <<EOF2
backend-direct-http http://web.gw.bench:$(port backend_http)/
gateway-http http://web.gw.bench:$(port gateway_http)/
backend-direct-https https://pass.gw.bench:$(port backend_https)/
gateway-https-terminated https://web.gw.bench:$(port gateway_https)/
gateway-https-passthrough https://pass.gw.bench:$(port gateway_https)/
EOF2
done
