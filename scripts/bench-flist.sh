#!/usr/bin/env bash
# Flist benchmark (not part of CI): a Debian root filesystem (mmdebstrap minbase bookworm) packed
# into a ZeroDB store (`zos zdb serve`), published on a hub (`zos hub serve` + `zos flist push`),
# fetched by a "node" from the hub and mounted with `zos flist mount`; cold and warm read times
# (a tar of every file's bytes, a find/stat walk) against the same tree on local disk.
#
#   sudo scripts/bench-flist.sh            # ZOS=target/release/zos by default
#   ZOS=/path/to/zos WORK=/var/tmp/x scripts/bench-flist.sh
#
# Needs root (mmdebstrap, drop_caches, FUSE), fuse3, curl, mmdebstrap (apt-get install mmdebstrap;
# packages come from the Debian mirror). The rootfs is built once and kept under $WORK.
# "cold" = empty block cache and dropped page cache; "warm" = the same again right after.
set -euo pipefail

ZOS=${ZOS:-target/release/zos}
WORK=${WORK:-/var/tmp/zos-bench-flist}
SUITE=${SUITE:-bookworm}
INCLUDE=${INCLUDE:-python3,perl,vim-tiny,less,iproute2,openssh-server,curl,ca-certificates}
ZDB_PORT=${ZDB_PORT:-19900}
HUB_PORT=${HUB_PORT:-18080}
ZOS=$(realpath "$ZOS")

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
command -v mmdebstrap >/dev/null || apt-get install -y mmdebstrap
command -v fusermount3 >/dev/null || apt-get install -y fuse3

mkdir -p "$WORK"
ROOTFS=$WORK/rootfs
if [ ! -d "$ROOTFS/usr" ]; then
    rm -rf "$ROOTFS"
    mmdebstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS"
fi

PIDS=()
MNTS=()
cleanup() {
    for m in "${MNTS[@]}"; do mountpoint -q "$m" && fusermount3 -u "$m" || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Fresh state for everything but the rootfs.
rm -rf "$WORK/zdb" "$WORK/hub" "$WORK/node" "$WORK/out"
mkdir -p "$WORK/zdb" "$WORK/hub" "$WORK/node" "$WORK/out"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# t LABEL CMD…: wall seconds of CMD (output discarded), printed as "LABEL SECONDS".
t() {
    local label=$1; shift
    local s e
    s=$(date +%s.%N)
    "$@" > /dev/null 2>&1 || true
    e=$(date +%s.%N)
    printf '%-44s %8.2f s\n' "$label" "$(awk "BEGIN{print $e - $s}")" | tee -a "$WORK/out/results.txt"
}
# Every file's bytes (tar to a pipe: GNU tar skips reading data when writing to /dev/null).
tar_all() { tar -C "$1" -cf - . | wc -c; }
stat_walk() { find "$1" -printf '%s %m %u %g %T@\n' | wc -l; }
wait_mount() {
    for _ in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done
    echo "mount $1 did not appear" >&2; exit 1
}
mount_fl() { # mount_fl FL MNT CACHE [args…]
    local fl=$1 mnt=$2 cache=$3; shift 3
    mkdir -p "$mnt"
    "$ZOS" flist mount "$fl" "$mnt" --cache "$cache" "$@" > "$WORK/out/mount-$(basename "$mnt").log" 2>&1 &
    PIDS+=($!)
    MNTS+=("$mnt")
    wait_mount "$mnt"
}
umount_fl() { fusermount3 -u "$1"; sleep 0.5; }

: > "$WORK/out/results.txt"
{
    echo "host: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rootfs: $(du -sh --apparent-size "$ROOTFS" | cut -f1) apparent, $(find "$ROOTFS" | wc -l) entries, $(find "$ROOTFS" -type f | wc -l) files"
} | tee -a "$WORK/out/results.txt"

# ZeroDB (default namespace) and the hub with one twin.
"$ZOS" zdb serve --listen 127.0.0.1 --port "$ZDB_PORT" --data "$WORK/zdb/data" --index "$WORK/zdb/index" > "$WORK/out/zdb.log" 2>&1 &
PIDS+=($!)
"$ZOS" key new --file "$WORK/key.json" --force > /dev/null
PUB=$("$ZOS" key show --file "$WORK/key.json" | awk '/public:/{print $2}')
"$ZOS" hub serve --listen "127.0.0.1:$HUB_PORT" --data "$WORK/hub" --twin "1=$PUB" > "$WORK/out/hub.log" 2>&1 &
PIDS+=($!)
sleep 1

ZDB="zdb://127.0.0.1:$ZDB_PORT"
HUB="http://127.0.0.1:$HUB_PORT"
t "pack into zdb" "$ZOS" flist pack "$ROOTFS" -o "$WORK/debian.fl" -s "$ZDB"
"$ZOS" flist inspect "$WORK/debian.fl" | head -3 | tee -a "$WORK/out/results.txt"
ls -l "$WORK/debian.fl" | awk '{print "fl size: " $5 " bytes"}' | tee -a "$WORK/out/results.txt"
du -sh "$WORK/zdb" | awk '{print "zdb on disk: " $1}' | tee -a "$WORK/out/results.txt"
t "push to hub (blocks zdb -> hub)" "$ZOS" flist push "$WORK/debian.fl" --hub "$HUB" --twin 1 --key "$WORK/key.json" --cache "$WORK/push-cache"

# The node: fetch the published flist, check its md5 against the hub's.
curl -fsS "$HUB/flists/1/debian.fl" -o "$WORK/node/debian.fl"
[ "$(md5sum < "$WORK/node/debian.fl" | cut -d' ' -f1)" = "$(curl -fsS "$HUB/flists/1/debian.fl.md5")" ]

# Local disk.
drop; t "local: find/stat walk, cold" stat_walk "$ROOTFS"
t "local: find/stat walk, warm" stat_walk "$ROOTFS"
drop; t "local: tar all bytes, cold" tar_all "$ROOTFS"
t "local: tar all bytes, warm" tar_all "$ROOTFS"

# Mount of the hub's flist (blocks over HTTP from the hub).
M=$WORK/node/mnt-hub
mount_fl "$WORK/node/debian.fl" "$M" "$WORK/node/cache-hub"
drop; t "hub mount: find/stat walk, cold" stat_walk "$M"
t "hub mount: find/stat walk, warm" stat_walk "$M"
t "hub mount: tar all bytes, cold cache" tar_all "$M"
t "hub mount: tar all bytes, warm (same mount)" tar_all "$M"
echo "bytes: local $(tar_all "$ROOTFS") mount $(tar_all "$M")" | tee -a "$WORK/out/results.txt"
# Same content (device nodes are not listed by the mount, as upstream).
if diff -rq --no-dereference "$ROOTFS" "$M" 2>&1 | grep -v "^Only in $ROOTFS/dev" ; then
    echo "MOUNT DIFFERS FROM SOURCE" | tee -a "$WORK/out/results.txt"; exit 1
fi
umount_fl "$M"
drop
mount_fl "$WORK/node/debian.fl" "$M" "$WORK/node/cache-hub"
t "hub mount: tar, new mount, warm block cache" tar_all "$M"
umount_fl "$M"

# The hub's flist again on an empty cache, with every block prefetched in the background
# (zos flist mount --prefetch 16) while tar reads.
M=$WORK/node/mnt-pre
drop
mount_fl "$WORK/node/debian.fl" "$M" "$WORK/node/cache-pre" --prefetch 16
t "hub mount --prefetch 16: tar, cold cache" tar_all "$M"
umount_fl "$M"
grep -o 'prefetch done.*' "$WORK/out/mount-mnt-pre.log" | tee -a "$WORK/out/results.txt" || true

# The packed flist mounted straight from ZeroDB (its own route), cold and warm.
M=$WORK/node/mnt-zdb
mount_fl "$WORK/debian.fl" "$M" "$WORK/node/cache-zdb"
drop; t "zdb mount: tar all bytes, cold cache" tar_all "$M"
t "zdb mount: tar all bytes, warm (same mount)" tar_all "$M"
umount_fl "$M"

# Prefetch the whole flist into the cache first (verify --deep fetches and checks every block).
t "zdb: verify --deep (every block fetched)" "$ZOS" flist verify "$WORK/debian.fl" --deep --cache "$WORK/node/cache-verify"
echo "block cache: $(du -sh "$WORK/node/cache-hub" | cut -f1) ($(find "$WORK/node/cache-hub" -type f | wc -l) chunks)" | tee -a "$WORK/out/results.txt"
echo "results in $WORK/out/results.txt"
