#!/usr/bin/env bash
# Builds the stand-in "c3os" image the tests boot: a Debian kernel plus a busybox
# initramfs whose /init finds the config drive by label (cidata or config-2), prints
# user-data and meta-data to the serial console between markers, reports the disk it
# was given, optionally gets a DHCP address, and stays up.
#
# Output (cached; rebuilt only when this script changes):
#   ${CAPI_C3OS_IMAGE_DIR:-~/.cache/capi-c3os/images}/standin-<hash>/{vmlinuz,initrd.img,base.qcow2,boot.qcow2}
# and prints that directory.
# - base.qcow2 is a 64 MiB disk whose first bytes are a marker, so a guest that sees the
#   marker on its (copy-on-write) disk proves the overlay works; it is booted only with
#   directKernelBoot (kernel and initrd from the libvirt host).
# - boot.qcow2 boots by itself, like a real c3os qcow2: a FAT "superfloppy" (no
#   partition table) made bootable with syslinux, holding the same kernel and initrd and
#   a syslinux.cfg with console=ttyS0. A C3osMachine with just `image: {volume: ...}` or
#   `image: {url, checksum}` boots it from its disk (SeaBIOS -> syslinux -> kernel).
#   Built with mtools and syslinux's mtools installer: no loop device, no mount.
#
# A real c3os/Kairos image is used instead by pointing C3osMachine.spec.image at its
# qcow2 (format: qcow2) or live ISO (format: iso) and leaving out directKernelBoot.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/standin-image.sh" | cut -c1-12)
cache=${CAPI_C3OS_IMAGE_DIR:-$HOME/.cache/capi-c3os/images}
out="$cache/standin-$hash"
if [ -f "$out/done" ]; then echo "$out"; exit 0; fi
for tool in busybox cpio depmod qemu-img apt-get dpkg-deb gzip mformat mcopy syslinux; do
  [ -x "/bin/$tool" ] || command -v "$tool" >/dev/null || { echo "missing $tool (run hack/system-deps.sh)" >&2; exit 1; }
done
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --list | grep -qx findfs || { echo "busybox-static is required" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# The newest plain Debian 6.1 kernel the archive offers (the recipe in libvirt.md).
pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | awk '{print $1}' | sort -V | tail -1)
[ -n "$pkg" ] || { echo "no linux-image-6.1.0-*-amd64 package found (apt-get update?)" >&2; exit 1; }
apt-get download -qq "$pkg" >/dev/null
dpkg-deb -x ./*.deb kroot
version=${pkg#linux-image-}
depmod -b kroot "$version"

mkdir -p initramfs/{bin,sbin,dev,proc,sys,mnt/cfg,tmp,etc,lib/modules,usr/share/udhcpc}
cp "$busybox" initramfs/bin/busybox
for applet in $("$busybox" --list); do
  [ -e "initramfs/bin/$applet" ] || ln -s busybox "initramfs/bin/$applet"
done
modules="scsi_common scsi_mod libata libahci ahci ata_piix cdrom sr_mod isofs virtio_ring virtio
virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk"
moddir="kroot/lib/modules/$version"
for m in $modules; do
  path=$(find "$moddir" -name "$m.ko*" | head -1)
  [ -n "$path" ] || { echo "module $m not in $pkg" >&2; exit 1; }
  cp "$path" initramfs/lib/modules/
done
echo "$modules" | tr ' ' '\n' | grep -v '^$' > initramfs/lib/modules/order

cat > initramfs/usr/share/udhcpc/default.script <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "C3OS-STANDIN ADDRESS $interface $ip"
    ;;
esac
exit 0
SCRIPT
chmod +x initramfs/usr/share/udhcpc/default.script

cat > initramfs/init <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do
  f=$(ls /lib/modules/$m.ko* 2>/dev/null | head -1)
  [ -n "$f" ] && case "$f" in
    *.xz) xz -dc "$f" > /tmp/m.ko && insmod /tmp/m.ko 2>/dev/null ;;
    *) insmod "$f" || echo "C3OS-STANDIN insmod $m failed" ;;
  esac
done
echo "C3OS-STANDIN BOOTED"
dev=""
for i in $(seq 1 50); do
  dev=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=config-2 2>/dev/null || true)
  [ -n "$dev" ] && break
  sleep 0.2
done
if [ -n "$dev" ] && mount -t iso9660 -o ro "$dev" /mnt/cfg; then
  if [ -f /mnt/cfg/user-data ]; then ud=/mnt/cfg/user-data; md=/mnt/cfg/meta-data; layout=nocloud
  else ud=/mnt/cfg/openstack/latest/user_data; md=/mnt/cfg/openstack/latest/meta_data.json; layout=config-2; fi
  echo "C3OS-STANDIN CONFIG-DRIVE $dev $layout"
  echo "----- BEGIN USER-DATA BASE64 -----"; base64 "$ud"; echo "----- END USER-DATA BASE64 -----"
  echo "----- BEGIN META-DATA BASE64 -----"; base64 "$md"; echo "----- END META-DATA BASE64 -----"
  echo "----- BEGIN META-DATA -----"; cat "$md"; echo; echo "----- END META-DATA -----"
else
  echo "C3OS-STANDIN NO CONFIG DRIVE"
  cat /proc/partitions; dmesg | grep -i -E "ata|sr|scsi|cdrom|insmod|module" | tail -20
fi
if [ -e /sys/block/vda/size ]; then
  echo "C3OS-STANDIN DISK vda SECTORS $(cat /sys/block/vda/size) HEAD $(head -c 20 /dev/vda | tr -c 'A-Za-z0-9-' '.')"
fi
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up; ip link set eth0 up
  udhcpc -i eth0 -t 20 -T 1 -n -q -s /usr/share/udhcpc/default.script || echo "C3OS-STANDIN NO DHCP"
fi
echo "C3OS-STANDIN READY"
while true; do sleep 3600; done
INIT
chmod +x initramfs/init
mkdir -p "$out.tmp"
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -9) > "$out.tmp/initrd.img"
cp "kroot/boot/vmlinuz-$version" "$out.tmp/vmlinuz"
printf 'C3OS-STANDIN-BASE-0001' > base.raw
truncate -s 64M base.raw
qemu-img convert -q -f raw -O qcow2 base.raw "$out.tmp/base.qcow2"

# The self-booting disk. syslinux writes its boot sector into the FAT volume's first
# sector, which on a superfloppy is the disk's first sector: what the BIOS loads.
cat > syslinux.cfg <<'CFG'
SERIAL 0 115200
DEFAULT c3os
PROMPT 0
TIMEOUT 0
LABEL c3os
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0 quiet
CFG
truncate -s 32M boot.raw
mformat -i boot.raw -v C3OSBOOT -h 64 -s 32 -t 32 ::
mcopy -i boot.raw "$out.tmp/vmlinuz" ::/vmlinuz
mcopy -i boot.raw "$out.tmp/initrd.img" ::/initrd.img
mcopy -i boot.raw syslinux.cfg ::/syslinux.cfg
syslinux --install boot.raw
qemu-img convert -q -f raw -O qcow2 boot.raw "$out.tmp/boot.qcow2"
echo "$pkg" > "$out.tmp/kernel-package"
touch "$out.tmp/done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
