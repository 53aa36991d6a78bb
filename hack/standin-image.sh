#!/usr/bin/env bash
# Builds the stand-in "c3os" image the tests boot: a Debian kernel plus a busybox
# initramfs whose /init finds the config drive by label (cidata or config-2), prints
# user-data, meta-data and network settings to the serial console between markers,
# reports the disk it was given, applies the static IPv4 address + default gateway the
# drive's network-config (NoCloud v2) or network_data.json (config-2) gives a NIC (by
# MAC), else asks DHCP, runs a minimal QEMU guest agent (sync, ping, info,
# network-get-interfaces) on the org.qemu.guest_agent.0 port, and stays up.
#
# Output (cached; rebuilt only when this script or the yip binary changes):
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
# - live.iso is a bootable live ISO (El Torito, no emulation, isolinux; isohybrid MBR, so
#   it also boots as a USB disk), with the same kernel and initrd and `c3os.live` on the
#   kernel command line. Booted so, the stand-in "installs itself" the way a c3os live ISO
#   does: on the first empty disk (first sector all zero) it writes a marker line and the
#   user-data it booted with, and prints "C3OS-STANDIN INSTALLED <disk>". (Only that: the
#   disk is not made bootable.) Built with xorriso, no loop device, no mount.
#
# The config drive is found by label wherever it is attached: a second CD-ROM (libvirt
# backend), a floppy or USB stick (Redfish virtual media: sushy-tools' libvirt driver
# attaches Ironic's config-2 image as a floppy), or a disk partition.
#
# - Each image "ships" a k3s version, as a Kairos standard image does: /etc/kairos-release
#   with KAIROS_SOFTWARE_VERSION (and _PREFIX=k3s), printed on the console at boot, where
#   the k3s stand-in (capi_c3os/dev/k3s.py) reads it and reports it as the Node's
#   kubeletVersion. The images above ship $DEFAULT_K3S; boot-<tag>.qcow2 (tag Kairos style,
#   e.g. k3sv1.34.1-k3s1) ship each version of $VARIANT_K3S: the same disk with an initrd
#   that has a second cpio archive appended holding that kairos-release (the kernel
#   unpacks concatenated archives in order, the later file wins).
#
# - Kairos's executor runs in it: a static yip (CGO_ENABLED=0, the pinned build of
#   capi_c3os/dev/binaries.py; its sha256 is part of the cache key) at /bin/yip, and Kairos's
#   datasource step in /system/oem/00_datasource.yaml. After the drive is found, /init runs
#   the stages the way a Kairos boot does (immucore: rootfs, initramfs; kairos-agent: fs,
#   boot; each with its .before/.after) over /system/oem and /oem, then our provider-id
#   script as the k3s unit's ExecStartPre would, and prints what yip left on the node
#   (/etc/rancher/k3s, /var/lib/rancher/k3s, /oem, /etc/hostname) between FILE markers and
#   the yip exit codes: the k3s stand-in reads only that. kairos-agent (31 MB) is left out:
#   the initrd would triple and every TCG boot slow down; yip is what runs the stages.
#   The root is the initramfs (RAM): what yip writes does not survive a reboot.
#
# A real c3os/Kairos image is used instead by pointing C3osMachine.spec.image at its
# qcow2 (format: qcow2) or live ISO (format: iso) and leaving out directKernelBoot.
set -euo pipefail
DEFAULT_K3S=v1.33.4+k3s1
VARIANT_K3S="v1.33.5+k3s1 v1.33.6+k3s1 v1.34.1+k3s1"
here=$(cd "$(dirname "$0")" && pwd)
# The pinned static yip (CAPI_C3OS_YIP names another build): its bytes are part of the key.
# (binaries.py needs only the standard library: the repo's venv if there is one, else python3.)
py=${PYTHON:-$here/../.venv/bin/python}
[ -x "$py" ] || py=python3
yip=$(cd "$here/.." && "$py" -m capi_c3os.dev.binaries yip | sed -n 's/^yip=\(.*\) (.*/\1/p')
[ -x "$yip" ] || { echo "no yip binary (python3 -m capi_c3os.dev.binaries yip)" >&2; exit 1; }
hash=$(cat "$here/standin-image.sh" "$yip" | sha256sum | cut -c1-12)
cache=${CAPI_C3OS_IMAGE_DIR:-$HOME/.cache/capi-c3os/images}
out="$cache/standin-$hash"
if [ -f "$out/done" ]; then echo "$out"; exit 0; fi
# Parallel test workers may all ask at once on a cold cache: one builds, the others wait.
mkdir -p "$cache"
exec 9>"$cache/.standin-$hash.lock"
flock 9
if [ -f "$out/done" ]; then echo "$out"; exit 0; fi
for tool in busybox cpio depmod qemu-img apt-get dpkg-deb gzip mformat mcopy syslinux xorriso; do
  [ -x "/bin/$tool" ] || command -v "$tool" >/dev/null || { echo "missing $tool (run hack/system-deps.sh)" >&2; exit 1; }
done
isolinux=/usr/lib/ISOLINUX/isolinux.bin
ldlinux=/usr/lib/syslinux/modules/bios/ldlinux.c32
isohybrid=/usr/lib/ISOLINUX/isohdpfx.bin
for f in "$isolinux" "$ldlinux" "$isohybrid"; do
  [ -f "$f" ] || { echo "missing $f (isolinux, syslinux-common: run hack/system-deps.sh)" >&2; exit 1; }
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
kairos_release() {
  printf 'KAIROS_NAME="c3os-standin"\nKAIROS_VARIANT="standard"\nKAIROS_SOFTWARE_VERSION_PREFIX="k3s"\nKAIROS_SOFTWARE_VERSION="%s"\n' "$1"
}
kairos_release "$DEFAULT_K3S" > initramfs/etc/kairos-release
cp "$busybox" initramfs/bin/busybox
cp "$yip" initramfs/bin/yip
# A minimal root for yip's users, files and hostname (the sandbox of
# tests/unit/test_bootstrap_yip_sandbox.py has the same): root and the admin group.
mkdir -p initramfs/{oem,system/oem,run,home,root,usr/local/bin,etc/systemd/system,var/lib,etc/default}
printf 'root:x:0:0:root:/root:/bin/sh\n' > initramfs/etc/passwd
printf 'root:x:0:\nadm:x:4:\nadmin:x:117:\n' > initramfs/etc/group
printf 'root:*:19000:0:99999:7:::\n' > initramfs/etc/shadow
chmod 0600 initramfs/etc/shadow
printf '127.0.0.1 localhost\n' > initramfs/etc/hosts
# Kairos's datasource step (kairos-init's bundled cloud-configs, 00_datasource.yaml, stage
# rootfs.before "Pull data from provider"; on Kairos >= v3 with more providers and an
# `if:`): yip's datasource plugin (yip v1.25.1 pkg/plugins/datasource.go) finds the
# `cidata` (provider cdrom) or `config-2` (config-drive) filesystem by label on any block
# device, reads user-data / openstack/latest/user_data, and saves it as /oem/userdata.yaml
# when it is a cloud-config. meta-data it does not read.
cat > initramfs/system/oem/00_datasource.yaml <<'YAML'
name: "Datasource handling"
stages:
  rootfs.before:
    - name: "Pull data from provider"
      datasource:
        providers: ["cdrom", "config-drive"]
        path: "/oem"
YAML
for applet in $("$busybox" --list); do
  [ -e "initramfs/bin/$applet" ] || ln -s busybox "initramfs/bin/$applet"
done
# Our provider-id script (the k3s unit's ExecStartPre) finds the drive with util-linux's
# `blkid -L LABEL`, which busybox's blkid lacks: answer it from findfs, or with the device
# /init found (a floppy is not in /proc/partitions, where findfs looks).
rm -f initramfs/bin/blkid
cat > initramfs/bin/blkid <<'BLKID'
#!/bin/sh
[ "$1" = -L ] || exec busybox blkid "$@"
findfs "LABEL=$2" 2>/dev/null && exit 0
case "$2" in cidata|config-2) [ -s /run/c3os-drive ] && [ "$(cat /run/c3os-drive-label)" = "$2" ] && cat /run/c3os-drive && exit 0 ;; esac
exit 2
BLKID
chmod +x initramfs/bin/blkid
modules="scsi_common scsi_mod libata libahci ahci ata_piix cdrom sr_mod isofs virtio_ring virtio
virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_blk
virtio_console floppy sd_mod usb-common usbcore ehci-hcd ehci-pci uhci-hcd xhci-hcd xhci-pci
usb-storage"
# Built into some kernels: only these may be missing as modules.
builtin_ok=" usb-common usbcore ehci-hcd ehci-pci uhci-hcd xhci-hcd xhci-pci "
moddir="kroot/lib/modules/$version"
: > initramfs/lib/modules/order
for m in $modules; do
  if ! deps=$(modprobe -d kroot -S "$version" --show-depends "$m" 2>/dev/null); then
    case "$builtin_ok" in *" $m "*) continue ;; esac
    echo "module $m not in $pkg" >&2; exit 1
  fi
  # Its dependencies first (sd_mod needs crc-t10dif, ...), each module once.
  for path in $(echo "$deps" | awk '$1 == "insmod" {print $2}'); do
    name=$(basename "$path"); name=${name%%.ko*}
    grep -qx "$name" initramfs/lib/modules/order && continue
    case "$name" in *pclmul*) continue ;; esac  # a CPU-specific variant; TCG lacks PCLMUL
    cp "$path" initramfs/lib/modules/
    echo "$name" >> initramfs/lib/modules/order
  done
done

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

# Reads network-config (NoCloud v2 YAML, as configdrive.py renders it: one key a line,
# keys sorted) or network_data.json (config-2, indented JSON) and prints one line per
# NIC: "<mac> <dhcp4 yes|no> <ipv4/prefix or -> <ipv4 gateway or ->". Only the subset
# we render; the first IPv4 address and the IPv4 default route of each NIC.
cat > initramfs/bin/c3os-netcfg <<'NETCFG'
#!/bin/sh
case "$1" in
  *.json) kind=json ;;
  *) kind=yaml ;;
esac
tr -d "\"'," < "$1" | awk -v kind="$kind" '
function prefix(mask,   n, i, parts, b) {
  n = 0; split(mask, parts, ".")
  for (i = 1; i <= 4; i++) { b = parts[i] + 0; while (b > 0) { n += b % 2; b = int(b / 2) } }
  return n
}
function flush() {
  if (name != "") { order[++count] = name; macs[name] = mac; dhcp[name] = dhcp4; addr[name] = a; gw[name] = g }
  name = ""; mac = ""; dhcp4 = "no"; a = "-"; g = "-"
}
BEGIN { name = ""; dhcp4 = "no"; a = "-"; g = "-" }
kind == "yaml" {
  match($0, /^ */); depth = RLENGTH
  if (depth == 2 && $1 ~ /:$/) { flush(); name = substr($1, 1, length($1) - 1); section = ""; next }
  if (name == "") next
  if (depth == 4 && $1 != "-") section = $1
  if ($1 == "macaddress:") mac = $2
  if ($1 == "dhcp4:" && $2 == "true") dhcp4 = "yes"
  if (section == "addresses:" && $1 == "-" && $2 ~ /^[0-9]+\.[0-9.]+\/[0-9]+$/ && a == "-") a = $2
  if (section == "routes:" && $1 == "-" && $2 == "to:") to = $3
  if (section == "routes:" && $1 == "via:" && to == "0.0.0.0/0" && g == "-") g = $2
}
kind == "json" {
  if ($1 == "links:") { part = "links"; next }
  if ($1 == "networks:") { part = "networks"; next }
  if ($1 == "services:") { part = ""; next }
  if (part == "links") {
    if ($1 == "ethernet_mac_address:") linkmac = $2
    if ($1 == "id:") linkid = $2
    if ($1 ~ /^}/ && linkid != "") { mac_of[linkid] = linkmac; links[++nlinks] = linkid; linkid = "" }
  }
  if (part == "networks") {
    if ($1 == "routes:") inroutes = ($2 != "[]")
    else if (inroutes && $1 ~ /^\]/) inroutes = 0
    else if (inroutes && $1 == "gateway:") rgw = $2
    else if (inroutes && $1 == "network:") rnet = $2
    else if (!inroutes && $1 == "ip_address:") ip = $2
    else if (!inroutes && $1 == "netmask:") mask = $2
    else if (!inroutes && $1 == "link:") link = $2
    else if (!inroutes && $1 == "type:") {
      if ($2 == "ipv4_dhcp") jdhcp[link] = "yes"
      if ($2 == "ipv4" && !(link in jaddr)) { jaddr[link] = ip "/" prefix(mask); if (rnet == "0.0.0.0") jgw[link] = rgw }
      ip = ""; mask = ""; rgw = ""; rnet = ""
    }
  }
}
END {
  if (kind == "yaml") {
    flush()
    for (i = 1; i <= count; i++) { n = order[i]; print macs[n], dhcp[n], addr[n], gw[n] }
  } else {
    for (i = 1; i <= nlinks; i++) {
      l = links[i]
      print mac_of[l], (l in jdhcp ? "yes" : "no"), (l in jaddr ? jaddr[l] : "-"), (l in jgw && jgw[l] != "" ? jgw[l] : "-")
    }
  }
}'
NETCFG
chmod +x initramfs/bin/c3os-netcfg

# A minimal QEMU guest agent: newline-terminated JSON commands in, one JSON line out
# (the qemu-ga protocol libvirt speaks); guest-sync-delimited answers after the 0xFF
# sentinel byte. Just what address discovery needs; anything else is CommandNotFound.
cat > initramfs/bin/c3os-agent <<'AGENT'
#!/bin/sh
port=""
while [ -z "$port" ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
  done
  [ -n "$port" ] || sleep 1
done
echo "C3OS-STANDIN AGENT $port"
interfaces() {
  first=1
  printf '['
  for dir in /sys/class/net/*; do
    n=${dir##*/}
    [ $first = 1 ] || printf ','
    first=0
    printf '{"name":"%s","hardware-address":"%s","ip-addresses":[' "$n" "$(cat "$dir/address")"
    ip -o addr show dev "$n" | awk '$3 == "inet" || $3 == "inet6" {
      split($4, p, "/"); t = ($3 == "inet") ? "ipv4" : "ipv6"
      printf "%s{\"ip-address-type\":\"%s\",\"ip-address\":\"%s\",\"prefix\":%d}", (k++ ? "," : ""), t, p[1], p[2]
    }'
    printf ']}'
  done
  printf ']'
}
answer() {
  cmd=$(echo "$1" | sed -n 's/.*"execute" *: *"\([a-z-]*\)".*/\1/p')
  id=$(echo "$1" | sed -n 's/.*"arguments" *: *{[^}]*"id" *: *\([0-9-]*\).*/\1/p')
  case "$cmd" in
    guest-sync-delimited) printf '\377{"return": %s}\n' "${id:-0}" ;;
    guest-sync) printf '{"return": %s}\n' "${id:-0}" ;;
    guest-ping) printf '{"return": {}}\n' ;;
    guest-info) printf '{"return": {"version": "c3os-standin", "supported_commands": [%s]}}\n' \
      "$(for c in guest-sync-delimited guest-sync guest-ping guest-info guest-network-get-interfaces; do
           printf '{"name":"%s","enabled":true,"success-response":true},' "$c"; done | sed 's/,$//')" ;;
    guest-network-get-interfaces) printf '{"return": %s}\n' "$(interfaces)" ;;
    *) printf '{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}\n' "$cmd" ;;
  esac
}
# The port opens once (a second open is EBUSY); read gives EOF while no host side is
# connected: wait and read again. ash reads a pipe/char device byte by byte, so no
# command is lost between reads.
exec 3<>"$port"
while true; do
  while IFS= read -r line <&3; do
    [ -n "$line" ] && answer "$line" >&3
  done
  sleep 1
done
AGENT
chmod +x initramfs/bin/c3os-agent

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
echo "----- BEGIN KAIROS-RELEASE -----"; cat /etc/kairos-release; echo "----- END KAIROS-RELEASE -----"
dev=""
for i in $(seq 1 50); do
  dev=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=config-2 2>/dev/null || true)
  # Floppies are not in /proc/partitions, where findfs looks: read their ISO 9660
  # volume identifier (sector 16, offset 40) directly.
  for fd in /dev/fd[0-9]; do
    [ -z "$dev" ] && [ -b "$fd" ] || continue
    label=$(dd if="$fd" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ')
    case "$label" in cidata|config-2) dev=$fd ;; esac
  done
  [ -n "$dev" ] && break
  sleep 0.2
done
# A floppy holding the drive shows up with its own fixed geometry: blkid still finds it.
if [ -n "$dev" ] && mount -t iso9660 -o ro "$dev" /mnt/cfg; then
  if [ -f /mnt/cfg/user-data ]; then ud=/mnt/cfg/user-data; md=/mnt/cfg/meta-data; layout=nocloud
  else ud=/mnt/cfg/openstack/latest/user_data; md=/mnt/cfg/openstack/latest/meta_data.json; layout=config-2; fi
  echo "C3OS-STANDIN CONFIG-DRIVE $dev $layout"
  echo "----- BEGIN USER-DATA BASE64 -----"; base64 "$ud"; echo "----- END USER-DATA BASE64 -----"
  echo "----- BEGIN META-DATA BASE64 -----"; base64 "$md"; echo "----- END META-DATA BASE64 -----"
  echo "----- BEGIN META-DATA -----"; cat "$md"; echo; echo "----- END META-DATA -----"
  if [ $layout = nocloud ]; then nc=/mnt/cfg/network-config; else nc=/mnt/cfg/openstack/latest/network_data.json; fi
  if [ -f "$nc" ]; then
    echo "----- BEGIN NETWORK-CONFIG -----"; cat "$nc"; echo; echo "----- END NETWORK-CONFIG -----"
    c3os-netcfg "$nc" > /tmp/netcfg
  fi
else
  echo "C3OS-STANDIN NO CONFIG DRIVE"
  cat /proc/partitions; dmesg | grep -i -E "ata|sr|scsi|cdrom|insmod|module" | tail -20
fi
# Kairos's boot, by yip (see the header): the datasource step pulls the user-data itself.
if [ -n "$dev" ]; then
  echo "$dev" > /run/c3os-drive
  if [ "${layout:-}" = nocloud ]; then echo cidata; else echo config-2; fi > /run/c3os-drive-label
fi
for stage in rootfs initramfs fs boot; do
  for s in "$stage.before" "$stage" "$stage.after"; do
    rc=0
    yip -s "$s" /system/oem /oem > "/tmp/yip-$s.log" 2>&1 || rc=$?
    echo "C3OS-STANDIN YIP $s EXIT $rc ERRORS $(grep -c -E 'level=(error|fatal)' "/tmp/yip-$s.log")"
  done
done
# What systemd would run before k3s: the ExecStartPre our document installs.
if [ -x /usr/local/bin/cluster-api-provider-id ]; then
  rc=0; /usr/local/bin/cluster-api-provider-id || rc=$?
  echo "C3OS-STANDIN PROVIDER-ID EXIT $rc"
fi
echo "C3OS-STANDIN HOSTNAME $(hostname)"
# What yip left on the node, for the k3s stand-in: path, octal mode, uid, gid, bytes.
for f in $(find /etc/rancher /var/lib/rancher /oem /etc/hostname -type f 2>/dev/null | sort); do
  echo "----- BEGIN FILE $f $(stat -c '%a %u %g' "$f") BASE64 -----"; base64 "$f"; echo "----- END FILE -----"
done
echo "C3OS-STANDIN YIP DONE"
if [ -e /sys/block/vda/size ]; then
  echo "C3OS-STANDIN DISK vda SECTORS $(cat /sys/block/vda/size) HEAD $(head -c 20 /dev/vda | tr -c 'A-Za-z0-9-' '.')"
fi
# Booted from the live ISO: "install" onto the first empty disk (see the header).
if grep -qw c3os.live /proc/cmdline; then
  target=""
  for d in /sys/block/vd* /sys/block/sd* /sys/block/hd*; do
    [ -e "$d" ] || continue
    n=${d##*/}
    [ "$(cat "$d/removable" 2>/dev/null)" = 1 ] && continue
    [ "$(cat "$d/size")" -gt 2048 ] || continue
    [ "$(head -c 512 "/dev/$n" | tr -d '\000' | wc -c)" = 0 ] || continue
    target=$n; break
  done
  if [ -n "$target" ] && [ -n "${ud:-}" ]; then
    # fsync: the host sees the data (qcow2 metadata included) once the disk flushed.
    { echo "C3OS-STANDIN-INSTALLED"; cat "$ud"; } | dd of="/dev/$target" conv=fsync 2>/dev/null
    echo "C3OS-STANDIN INSTALLED $target"
  elif [ -z "${ud:-}" ]; then
    echo "C3OS-STANDIN LIVE NOT INSTALLED: NO CONFIG DRIVE"
  else
    echo "C3OS-STANDIN LIVE NOT INSTALLED: NO EMPTY DISK"
  fi
fi
ip link set lo up
c3os-agent &
# NICs by MAC; with network settings on the drive they decide (static and/or DHCP),
# without them eth0 asks DHCP as before.
dhcp=""
if [ -f /tmp/netcfg ]; then
  while read -r mac wants4 addr gw; do
    nic=""
    for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$mac" ] && nic=${d##*/}; done
    [ -n "$nic" ] || { echo "C3OS-STANDIN NO NIC $mac"; continue; }
    ip link set "$nic" up
    if [ "$addr" != - ]; then
      ip addr add "$addr" dev "$nic"
      [ "$gw" = - ] || ip route add default via "$gw" dev "$nic"
      echo "C3OS-STANDIN STATIC $nic $addr GATEWAY $gw"
    fi
    [ "$wants4" = yes ] && dhcp="$dhcp $nic"
  done < /tmp/netcfg
elif [ -e /sys/class/net/eth0 ]; then
  dhcp=eth0
fi
for nic in $dhcp; do
  ip link set "$nic" up
  udhcpc -i "$nic" -t 20 -T 1 -n -q -s /usr/share/udhcpc/default.script || echo "C3OS-STANDIN NO DHCP $nic"
done
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
boot_disk() {  # initrd, output qcow2
  rm -f boot.raw
  truncate -s 32M boot.raw
  mformat -i boot.raw -v C3OSBOOT -h 64 -s 32 -t 32 ::
  mcopy -i boot.raw "$out.tmp/vmlinuz" ::/vmlinuz
  mcopy -i boot.raw "$1" ::/initrd.img
  mcopy -i boot.raw syslinux.cfg ::/syslinux.cfg
  syslinux --install boot.raw
  qemu-img convert -q -f raw -O qcow2 boot.raw "$2"
}
boot_disk "$out.tmp/initrd.img" "$out.tmp/boot.qcow2"
for v in $VARIANT_K3S; do
  tag="k3s$(echo "$v" | tr + -)"
  rm -rf variant && mkdir -p variant/etc
  kairos_release "$v" > variant/etc/kairos-release
  cp "$out.tmp/initrd.img" "initrd-$tag.img"
  (cd variant && find . | cpio -o -H newc --quiet | gzip -9) >> "initrd-$tag.img"
  boot_disk "initrd-$tag.img" "$out.tmp/boot-$tag.qcow2"
done

# The live ISO: isolinux loads the same kernel and initrd with c3os.live.
mkdir -p iso/isolinux
cp "$isolinux" "$ldlinux" iso/isolinux/
cp "$out.tmp/vmlinuz" "$out.tmp/initrd.img" iso/
sed -e 's/APPEND console=ttyS0 quiet/APPEND console=ttyS0 quiet c3os.live/' syslinux.cfg > iso/isolinux/isolinux.cfg
xorriso -as mkisofs -quiet -V C3OS_LIVE -o "$out.tmp/live.iso" \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  -isohybrid-mbr "$isohybrid" iso
echo "$pkg" > "$out.tmp/kernel-package"
touch "$out.tmp/done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
