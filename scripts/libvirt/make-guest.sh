#!/usr/bin/env bash
# Builds a tiny TCG test guest in OUT: vmlinuz, initramfs.cpio.gz (busybox + virtio/ext4 modules;
# mounts /dev/vda read-write, or read-only when the disk is, then switch_root) and rootfs.img
# (32 MiB ext4 whose /init leaves a marker and powers off):
#   - /dev/vda writable: writes /marker ("marker: booted from HLFS ...") on the root filesystem;
#   - root read-only (a snapshot) and a /dev/vdb: writes "marker: snapshot boot; ..." with the
#     first boot's /marker into the first 4 KiB of /dev/vdb.
# Needs busybox-static, e2fsprogs, and the kernel of guest-kernel.sh.
#   make-guest.sh OUT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: make-guest.sh OUT}
mkdir -p "$OUT"
KROOT=$(bash "$here/guest-kernel.sh")
VMLINUZ=$(ls "$KROOT"/boot/vmlinuz-* | head -1)
KVER=$(basename "$VMLINUZ" | sed 's/^vmlinuz-//')
MODDIR=$KROOT/lib/modules/$KVER
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc16 crc32c_generic mbcache jbd2 ext4"
cp "$VMLINUZ" "$OUT/vmlinuz"

I=$OUT/initramfs
rm -rf "$I"; mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$I/bin/busybox"
for m in $MODS; do
  f=$(find "$MODDIR/" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
  if [ -z "$f" ]; then
    grep -q "/$m.ko" "$MODDIR/modules.builtin" 2>/dev/null && continue
    echo "make-guest.sh: module $m not found in $MODDIR" >&2; exit 1
  fi
  case $f in
    *.xz) xz -dc "$f" > "$I/lib/modules/$m.ko";;
    *.zst) zstd -qdc "$f" > "$I/lib/modules/$m.ko";;
    *) cp "$f" "$I/lib/modules/";;
  esac
done
cat > "$I/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev; mount -t proc proc /proc; mount -t sysfs sys /sys
for m in $MODS; do [ -f /lib/modules/\$m.ko ] && insmod /lib/modules/\$m.ko; done
i=0; while [ ! -b /dev/vda ] && [ \$i -lt 200 ]; do sleep 0.05; i=\$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot 2>/dev/null || mount -t ext4 -o ro,noload /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; poweroff -f; }
umount /proc /sys; mount --move /dev /newroot/dev
exec switch_root /newroot /init
INIT
chmod +x "$I/init"
(cd "$I" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT/initramfs.cpio.gz"
rm -rf "$I"

R=$OUT/rootfs
rm -rf "$R"; mkdir -p "$R"/{bin,dev,proc,sys,tmp}
cp /bin/busybox "$R/bin/busybox"
cat > "$R/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
root=$(grep ' / ' /proc/mounts | head -1)
case " $root " in
  *" rw,"*|*" rw "*)
    echo "marker: booted from HLFS; kernel $(uname -r); root $root" > /marker
    sync; mount -o remount,ro /; sync ;;
  *)
    mount -t tmpfs tmp /tmp
    i=0; while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
    { echo "marker: snapshot boot; root $root; first boot said: $(cat /marker 2>/dev/null)"; } > /tmp/m
    dd if=/tmp/m of=/dev/vdb bs=4096 conv=sync,fsync 2>/dev/null ;;
esac
echo "GUEST: done" > /dev/console
poweroff -f
INIT
chmod +x "$R/init"
rm -f "$OUT/rootfs.img"
mkfs.ext4 -q -F -L hlfsroot -d "$R" "$OUT/rootfs.img" 32M
rm -rf "$R"
echo "$OUT"
