#!/usr/bin/env bash
# Benchmark ZeroDB (`zos zdb serve`, release build) against Redis 7 (Debian redis-server) on
# loopback, with the same redis-benchmark load, in the same run:
#   SET and GET, 64 B and 4 KiB values, pipeline 1 and 16, 50 clients, a unique value per
#   request (__rand_int__ inside the value), keys drawn from 1 M (-r 1000000).
# Servers, by durability:
#   zdb            each write reaches the kernel before its reply (survives kill -9)
#   zdb-sync       --sync: fsynced before the reply (group commit)
#   redis-none     --save "" --appendonly no (nothing survives)
#   redis-aof-1s   AOF, appendfsync everysec (kill -9 safe, up to 1 s lost on power loss)
#   redis-aof-all  AOF, appendfsync always (fsynced before the reply)
# zdb runs with its default read cache (--cache-size auto: a quarter of RAM; ZDB_CACHE=1G etc.
# to choose), so like Redis it serves reads from memory; the RSS of every server after the runs
# is reported, to compare the memory each needed for that.
# Then memory (RSS) with 1 M keys of 64 B values: zdb with its default cache, zdb with
# --cache-size 0 (the index alone), redis-none; and zdb's reload time.
# Every server runs pinned to the last CPU and redis-benchmark to the others (taskset), so
# that client and server never take turns on one core: unpinned, identical runs on a 2-core
# host differed by up to 15%.
# Usage: RUNS=3 N=200000 scripts/bench-zdb.sh   (prints a markdown report on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200000}
N4K=${N4K:-$((N / 2))}
RUNS=${RUNS:-1}
# Redis serves from one event-loop thread; zdb gets the same single worker unless told otherwise.
ZDB_THREADS=${ZDB_THREADS:-1}
ZDB_CACHE=${ZDB_CACHE:-auto}
CLIENTS=50
PIN_SERVER=() PIN_CLIENT=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    PIN_SERVER=(taskset -c "$(($(nproc) - 1))")
    PIN_CLIENT=(taskset -c "0-$(($(nproc) - 2))")
fi
KEYS=1000000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

for t in redis-benchmark redis-server redis-cli python3; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y redis-tools redis-server)" >&2; exit 1; }
done
cargo build --release -p zos >&2
BIN=$CARGO_TARGET_DIR/release/zos

WORK=$(mktemp -d /tmp/bench-zdb.XXXXXX)
declare -A PID PORT
cleanup() {
    for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ready() {
    for _ in $(seq 300); do
        redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

start_zdb() { # name, extra flags...
    local name=$1 port
    shift
    port=$(free_port)
    "${PIN_SERVER[@]}" "$BIN" zdb serve --threads "$ZDB_THREADS" --cache-size "$ZDB_CACHE" --data "$WORK/$name/data" --index "$WORK/$name/index" \
        --listen 127.0.0.1 --port "$port" "$@" >/dev/null 2>"$WORK/$name.log" &
    PID[$name]=$!
    PORT[$name]=$port
    wait_ready "$port"
}

start_redis() { # name, extra flags...
    local name=$1 port
    shift
    port=$(free_port)
    mkdir -p "$WORK/$name"
    "${PIN_SERVER[@]}" redis-server --port "$port" --bind 127.0.0.1 --dir "$WORK/$name" --save "" \
        --daemonize no "$@" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    PORT[$name]=$port
    wait_ready "$port"
}

stop() { kill "${PID[$1]}"; wait "${PID[$1]}" 2>/dev/null || true; unset "PID[$1]"; }

value() { # a value of $1 bytes that contains __rand_int__ (12 digits once substituted)
    python3 -c "import sys; n=int(sys.argv[1]); print('__rand_int__' + 'v' * (n - 12))" "$1"
}
V64=$(value 64)
V4K=$(value 4096)

# Waits until no Redis server is rewriting its AOF: the forked rewrite shares the servers' CPU
# and would slow down whichever server is measured meanwhile.
quiesce() {
    local s waited=0
    for s in "${!PORT[@]}"; do
        case $s in redis*) ;; *) continue ;; esac
        while redis-cli -p "${PORT[$s]}" INFO persistence 2>/dev/null |
            grep -Eq '^(aof_rewrite|rdb_bgsave)_in_progress:1'; do
            sleep 0.2
            waited=1
        done
    done
    [ "$waited" = 0 ] || echo "(waited for a Redis AOF rewrite to finish)" >&2
}

# One redis-benchmark run; prints requests per second.
bench() { # port op size pipeline
    local port=$1 op=$2 size=$3 p=$4 n=$N val
    quiesce
    [ "$size" = 4K ] && n=$N4K
    if [ "$size" = 4K ]; then val=$V4K; else val=$V64; fi
    if [ "$op" = SET ]; then
        set -- SET 'key:__rand_int__' "$val"
    else
        set -- GET 'key:__rand_int__'
    fi
    "${PIN_CLIENT[@]}" redis-benchmark -p "$port" -c $CLIENTS -n "$n" -P "$p" -r $KEYS --csv "$@" 2>/dev/null |
        tail -1 | awk -F'","' '{ printf "%d", $2 }'
}

SERVERS=(zdb zdb-sync redis-none redis-aof-1s redis-aof-all)
start_zdb zdb
start_zdb zdb-sync --sync
start_redis redis-none --appendonly no
start_redis redis-aof-1s --appendonly yes --appendfsync everysec
start_redis redis-aof-all --appendonly yes --appendfsync always

declare -A R
TESTS=()
for op in SET GET; do for size in 64 4K; do for p in 1 16; do TESTS+=("$op $size $p"); done; done; done
for run in $(seq "$RUNS"); do
    for t in "${TESTS[@]}"; do
        for s in "${SERVERS[@]}"; do
            # shellcheck disable=SC2086
            r=$(bench "${PORT[$s]}" $t)
            R["$s|$t"]="${R["$s|$t"]:-} $r"
            echo "run $run: $s $t: $r req/s" >&2
        done
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END { print int(a[int((NR+1)/2)]/1000) }'; }

echo "### Throughput (k requests/s, median of $RUNS run(s); $N requests per 64 B test, $N4K per 4 KiB test)"
echo
echo "| op, value, pipeline | zdb | zdb --sync | Redis, no persistence | Redis, AOF everysec | Redis, AOF always |"
echo "|---|---|---|---|---|---|"
for t in "${TESTS[@]}"; do
    read -r op size p <<<"$t"
    if [ "$size" = 4K ]; then row="| $op 4 KiB, P$p |"; else row="| $op 64 B, P$p |"; fi
    for s in "${SERVERS[@]}"; do row="$row $(echo "${R["$s|$t"]}" | median) |"; done
    echo "$row"
done
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
row="| RSS after the runs (MiB) |"
for s in "${SERVERS[@]}"; do row="$row $(rss_mib "${PID[$s]}") |"; done
echo "$row"
for s in "${SERVERS[@]}"; do stop "$s"; done

# Memory with exactly 1 M keys of 64 B values, loaded with redis-cli --pipe.
python3 - "$WORK/load.resp" <<'EOF'
import sys
with open(sys.argv[1], "wb") as f:
    for i in range(1000000):
        k = b"key:%012d" % i
        v = (b"%012d" % i) + b"v" * 52
        f.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
EOF
echo
echo "### Memory, 1 M keys (16 B keys, 64 B values)"
echo
echo "| server | RSS empty (MiB) | RSS with 1 M keys (MiB) | bytes/key | on disk | reload |"
echo "|---|---|---|---|---|---|"
for s in zdb zdb-nocache redis-none; do
    cache=auto # the server's default
    case $s in
        zdb) name=zdbmem ;;
        zdb-nocache) name=zdbnocache cache=0 ;;
        *) name=redismem ;;
    esac
    if [ "$s" = redis-none ]; then start_redis $name --appendonly no; else ZDB_CACHE=$cache start_zdb $name; fi
    before=$(rss_mib "${PID[$name]}")
    redis-cli -p "${PORT[$name]}" --pipe <"$WORK/load.resp" >/dev/null
    n=$(redis-cli -p "${PORT[$name]}" DBSIZE)
    after=$(rss_mib "${PID[$name]}")
    per=$(( (after - before) * 1048576 / n ))
    disk=- reload=-
    if [ "$s" != redis-none ]; then
        disk="$(du -sm "$WORK/$name/data" | cut -f1) MiB data + $(du -sm "$WORK/$name/index" | cut -f1) MiB index"
        stop $name
        t0=$(date +%s.%N)
        ZDB_CACHE=$cache start_zdb $name
        reload="$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f} s')" "$t0" "$(date +%s.%N)")"
        [ "$(redis-cli -p "${PORT[$name]}" DBSIZE)" = "$n" ] || { echo "reload lost keys" >&2; exit 1; }
        after2=$(rss_mib "${PID[$name]}")
        reload="$reload (RSS after reload $after2 MiB)"
    fi
    echo "| $s | $before | $after | $per | $disk | $reload |"
    stop "$name"
done
