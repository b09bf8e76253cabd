#!/usr/bin/env bash
# The bootable image's benchmark (not part of CI; the same test runs in CI): image size, boot →
# registered, boot → first deployment ok, and version set on the ledger → healthy on the new
# release, under QEMU TCG.
#
#   sudo scripts/bench-image.sh                 # RUNS=1, the debug zos as /init and as v2
#   sudo ZOS_IMAGE_ZOS=$PWD/target/x86_64-unknown-linux-gnu/release/zos scripts/bench-image.sh
#
# Runs `cargo test -p zos --test image_boot` with --nocapture and prints its `image_boot:`
# timing lines, then the image's sizes from its manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
[ "$(id -u)" = 0 ] || { echo "run as root (QEMU disks, loop devices for the host grid)" >&2; exit 1; }
cargo build -q -p zos
for i in $(seq 1 "$RUNS"); do
    echo "== run $i"
    start=$(date +%s)
    cargo test -q -p zos --test image_boot -- --nocapture 2>&1 | tee /tmp/zos-bench-image.log |
        grep -E '^image_boot:|test result' || true
    echo "whole test: $(($(date +%s) - start)) s"
done
dir=$(mktemp -d /tmp/zos-bench-image.XXXXXX)
trap 'rm -rf "$dir"' EXIT
target/debug/zos image build -o "$dir" --zos "${ZOS_IMAGE_ZOS:-target/debug/zos}" >/dev/null
ls -l --block-size=K "$dir"/vmlinuz "$dir"/vmlinux "$dir"/initramfs.cpio | awk '{print $5, $9}'
