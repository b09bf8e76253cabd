#!/usr/bin/env bash
# Builds the zos test guest from Debian packages only (apt-get download + dpkg-deb, nothing else
# is fetched): OUT/vmlinux (the Debian kernel's ELF, booted through its PVH entry: ~2 s faster
# than the bzImage under TCG), OUT/initrd.img (the "cloud-container" initramfs: busybox-static,
# the virtio/9p/vfat modules and the zos init below) and OUT/rootfs/ (a busybox userland: the
# container root a test packs into an flist). Idempotent: OUT/.done marks a finished build.
# Needs: apt-get, dpkg-deb, cpio, gzip, python3 (lzma), /bin/busybox (busybox-static).
set -euo pipefail
OUT=${1:?usage: build-test-guest.sh OUT_DIR}
[ -e "$OUT/.done" ] && exit 0
BB=/bin/busybox
[ -x "$BB" ] && "$BB" --list | grep -x insmod >/dev/null || { echo "build-test-guest: busybox-static missing (apt-get install busybox-static)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
work=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$pkg" ] || { echo "build-test-guest: no linux-image-amd64 dependency found (apt-get update?)" >&2; exit 2; }
apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "$pkg"
dpkg-deb -x ./*.deb x
kver=${pkg#linux-image-}
vmlinuz=$(ls x/boot/vmlinuz-*)
# The bzImage carries an XZ-compressed ELF; QEMU boots the ELF directly through its PVH note.
python3 - "$vmlinuz" vmlinux <<'PY'
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
if i < 0: sys.exit("no xz payload in " + sys.argv[1])
open(sys.argv[2], 'wb').write(lzma.LZMADecompressor().decompress(d[i:]))
PY

# initramfs: busybox, modules in dependency order (the package has no modules.dep: depmod runs
# at install time), /init.
mkdir -p ir/bin ir/lib/modules ir/proc ir/sys ir/dev ir/root ir/cidata ir/tmp
cp "$BB" ir/bin/busybox
ln -s busybox ir/bin/sh
mods="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
failover net_failover virtio_net fscache netfs 9pnet 9pnet_virtio 9p fuse virtiofs fat vfat nls_cp437 nls_ascii
nls_iso8859-1"
: > ir/modules.order
for m in $mods; do
  f=$(find "x/lib/modules/$kver/kernel" -name "$m.ko" -print -quit)
  [ -n "$f" ] || { echo "build-test-guest: module $m not in $pkg" >&2; exit 2; }
  cp "$f" ir/lib/modules/
  echo "$m" >> ir/modules.order
done
cat > ir/init <<'INIT'
#!/bin/sh
# zos cloud-container init: modules, cloud-init (cidata), root and volumes over virtio-fs
# (zos.fs=virtiofs) or 9p, then the
# workload's entrypoint with its env. Markers (ZOS-...) are for the node's tests and operators.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
# The list is in dependency order as far as names go; a second and third pass load what
# needed a module later in the list.
for pass in 1 2 3; do
  for m in $(cat /modules.order); do
    grep -q "^$(echo $m | tr - _) " /proc/modules || insmod /lib/modules/$m.ko 2>/dev/null
  done
done
echo "ZOS-INIT: started"
cmdline=$(cat /proc/cmdline)
case " $cmdline " in *" zos.probe "*) echo "ZOS-PROBE-OK"; poweroff -f; sleep 5;; esac
found=
i=0
while [ -z "$found" ] && [ $i -lt 100 ]; do
  for s in /sys/block/vd*; do
    [ -e "$s/serial" ] && [ "$(cat $s/serial)" = cidata ] && found=/dev/${s##*/}
  done
  [ -z "$found" ] && sleep 0.1
  i=$((i+1))
done
[ -n "$found" ] && mount -t vfat -o ro "$found" /cidata || echo "ZOS-INIT: no cidata disk"
hostname "$(cat /cidata/meta-data 2>/dev/null | sed -n 's/^local-hostname: //p')" 2>/dev/null
# The private interface (the node passes the address on the command line; the same values
# are in cidata's network-config for guests with cloud-init).
zip=; zgw=
for arg in $cmdline; do
  case "$arg" in zos.ip=*) zip=${arg#zos.ip=};; zos.gw=*) zgw=${arg#zos.gw=};; esac
done
# A full VM (booted by firmware from its disk, fixed command line): the address comes from
# cidata's network-config.
fullvm=
case " $cmdline " in *" zos.fullvm "*) fullvm=1;; esac
if [ -n "$fullvm" ] && [ -z "$zip" ] && [ -f /cidata/network-config ]; then
  zip=$(sed -n '/addresses:/{n;s/^ *- //p;q}' /cidata/network-config)
  zgw=$(sed -n 's/^ *gateway4: //p' /cidata/network-config | head -n 1)
fi
# A public IP: the public NIC (found by its MAC) holds it and the default route; the private
# one keeps routes to its network only (zos.routes).
zpub=; zpubgw=; zpub6=; zpubmac=; zroutes=
for arg in $cmdline; do
  case "$arg" in zos.pub=*) zpub=${arg#zos.pub=};; zos.pubgw=*) zpubgw=${arg#zos.pubgw=};;
    zos.pub6=*) zpub6=${arg#zos.pub6=};; zos.pubmac=*) zpubmac=${arg#zos.pubmac=};;
    zos.routes=*) zroutes=${arg#zos.routes=};; esac
done
ip link set lo up
if [ -n "$zip" ]; then
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  if [ -n "$zpubmac" ]; then
    ip link set eth0 up && ip addr add "$zip" dev eth0 && echo "ZOS-INIT: eth0 $zip"
    for r in $(echo "$zroutes" | tr , ' '); do ip route add "$r" via "$zgw"; done
  else
    ip link set eth0 up && ip addr add "$zip" dev eth0 && ip route add default via "$zgw" \
      && echo "ZOS-INIT: eth0 $zip via $zgw"
  fi
fi
if [ -n "$zpubmac" ]; then
  pdev=; i=0
  while [ -z "$pdev" ] && [ $i -lt 100 ]; do
    for n in /sys/class/net/*; do [ "$(cat $n/address)" = "$zpubmac" ] && pdev=${n##*/}; done
    [ -z "$pdev" ] && sleep 0.1; i=$((i+1))
  done
  ip link set "$pdev" up
  [ -n "$zpub" ] && ip addr add "$zpub" dev "$pdev" && ip route add default via "$zpubgw" \
    && echo "ZOS-INIT: $pdev $zpub via $zpubgw (public)"
  [ -n "$zpub6" ] && ip addr add "$zpub6" dev "$pdev" && echo "ZOS-INIT: $pdev $zpub6 (public)"
fi
# Mycelium (network.mycelium): an address of the network's /64 on the private NIC and
# 400::/7 via the network resource (zos.myc, zos.mycgw).
zmyc=; zmycgw=
for arg in $cmdline; do
  case "$arg" in zos.myc=*) zmyc=${arg#zos.myc=};; zos.mycgw=*) zmycgw=${arg#zos.mycgw=};; esac
done
if [ -n "$zmyc" ] && [ -n "$zip" ]; then
  echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
  ip addr add "$zmyc" dev eth0 && ip route add 400::/7 via "$zmycgw" dev eth0 \
    && echo "ZOS-INIT: eth0 $zmyc (mycelium)"
fi
p9="trans=virtio,version=9p2000.L,msize=262144"
fs=9p
case " $cmdline " in *" zos.fs=virtiofs "*) fs=virtiofs;; esac
share() { # TAG DIR: a share of the node, by the transport it chose
  if [ "$fs" = virtiofs ]; then mount -t virtiofs "$1" "$2"; else mount -t 9p -o "$p9" "$1" "$2"; fi
}
if [ -n "$fullvm" ]; then
  echo "ZOS-INIT: full vm"
elif share vroot /root 2>/dev/null; then
  mkdir -p /root/proc /root/sys /root/dev
  mount -t proc proc /root/proc; mount -t sysfs sys /root/sys; mount --bind /dev /root/dev
  echo "ZOS-INIT: root mounted ($fs)"
else
  echo "ZOS-INIT: no root share"; exec sh
fi
[ -n "$fullvm" ] || for arg in $cmdline; do
  case "$arg" in zos.mount=*)
    v=${arg#zos.mount=}; tag=${v%%:*}; path=${v#*:}
    mkdir -p "/root$path" && share "$tag" "/root$path" && echo "ZOS-INIT: mounted $tag at $path";;
  esac
done
if [ -f /cidata/zosrc ]; then . /cidata/zosrc; fi
if [ -n "$ZOS_ENTRYPOINT" ]; then
  echo "ZOS-ENTRYPOINT: $ZOS_ENTRYPOINT"
  if [ -n "$fullvm" ]; then /bin/sh -c "$ZOS_ENTRYPOINT"; else chroot /root /bin/sh -c "$ZOS_ENTRYPOINT"; fi
  echo "ZOS-ENTRYPOINT: exited $?"
fi
# init must not exit (the kernel would panic and the node count a crash).
while :; do sleep 3600; done
INIT
chmod 755 ir/init
(cd ir && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > initrd.img

# container rootfs: busybox and its applets as symlinks
mkdir -p rootfs/bin rootfs/etc rootfs/tmp rootfs/root
cp "$BB" rootfs/bin/busybox
for a in $("$BB" --list); do [ "$a" = busybox ] || ln -sf busybox "rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > rootfs/etc/passwd
# openssl with its libraries and config: a TLS server of the guest's own (the gateway's SNI
# passthrough test shows its certificate). Skipped when the host has no openssl.
if command -v openssl >/dev/null; then
  ob=$(command -v openssl)
  install -D "$ob" rootfs/usr/bin/openssl
  for lib in $(ldd "$ob" | awk '/=>/ && $3 ~ /^\// {print $3} /^[[:space:]]*\// {print $1}'); do
    install -D "$lib" "rootfs$lib"
  done
  if [ -f /usr/lib/ssl/openssl.cnf ]; then install -D /usr/lib/ssl/openssl.cnf rootfs/usr/lib/ssl/openssl.cnf; fi
fi
echo "$pkg" > rootfs/etc/zos-test-guest

# full VM: fullvm/image.raw, a FAT disk (no partition table) that SeaBIOS boots through
# syslinux into the Debian kernel and the same initramfs, which sees zos.fullvm. Skipped
# (fullvm/SKIPPED says why) without syslinux, mtools and dosfstools.
mkdir -p fullvm
if command -v syslinux >/dev/null && command -v mcopy >/dev/null && command -v mkfs.vfat >/dev/null; then
  truncate -s 32M fullvm/image.raw
  mkfs.vfat -n ZOSFULLVM fullvm/image.raw >/dev/null
  syslinux --install fullvm/image.raw
  printf 'SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img console=ttyS0 panic=-1 quiet zos.fullvm\n' > syslinux.cfg
  mcopy -i fullvm/image.raw "$vmlinuz" ::vmlinuz
  mcopy -i fullvm/image.raw initrd.img ::initrd.img
  mcopy -i fullvm/image.raw syslinux.cfg ::syslinux.cfg
else
  echo "syslinux, mtools or dosfstools missing (apt-get install syslinux syslinux-common mtools dosfstools)" > fullvm/SKIPPED
fi

rm -rf "$OUT/rootfs" "$OUT/fullvm"
mv vmlinux initrd.img rootfs fullvm "$OUT/"
echo "$pkg" > "$OUT/kernel-package"
touch "$OUT/.done"
