#!/usr/bin/env bash
# VM benchmarks (docs/benchmarks.md, "VMs"): the test guest's boot to init under QEMU
# (TCG here: /dev/kvm is PVM-only), the RSS of an idle guest's QEMU for two memory sizes, and
# N guests started at once. Usage: scripts/bench-vm.sh [N]   (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-4}
G=target/zos-test-guest/bench
scripts/build-test-guest.sh "$G"
qemu() { # $1 memory MiB, rest: extra args
  local m=$1; shift
  exec qemu-system-x86_64 -accel tcg -cpu max -M pc -m "$m" -smp 1 -nodefaults -no-user-config \
    -display none -net none -serial stdio -no-reboot -kernel "$G/vmlinux" -initrd "$G/initrd.img" "$@"
}
now() { date +%s.%N; }

echo "== boot to init (zos.probe: init prints ZOS-PROBE-OK and powers off), 3 runs"
for i in 1 2 3; do
  t0=$(now); out=$(qemu 256 -append "console=ttyS0 panic=-1 quiet zos.probe" </dev/null)
  t1=$(now); grep -q ZOS-PROBE-OK <<<"$out" || { echo "probe failed"; exit 1; }
  echo "run $i: $(echo "$t1 - $t0" | bc) s"
done

echo "== QEMU RSS of an idle guest 20 s after start"
for m in 256 1024; do
  qemu "$m" -append "console=ttyS0 panic=-1 quiet" </dev/null >/dev/null 2>&1 &
  pid=$!; sleep 20
  echo "-m $m: $(awk '/VmRSS/{print int($2/1024)}' /proc/$pid/status) MiB RSS"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

echo "== $N guests started at once (until every one reached init)"
t0=$(now); pids=()
for i in $(seq "$N"); do
  (qemu 256 -append "console=ttyS0 panic=-1 quiet zos.probe" </dev/null | grep -q ZOS-PROBE-OK) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
t1=$(now)
echo "$N guests: $(echo "$t1 - $t0" | bc) s"
