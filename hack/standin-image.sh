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
# - register.iso is the registration image of enrolled hosts (README "Enrolled hosts"): the
#   same kernel and initrd plus enroll.img (a cpio loaded after the initrd holding the host
#   agent, hack/c3os-agent, static Go, at /bin/c3os-agent; the QEMU guest agent stand-in is
#   /bin/c3os-guest-agent), `c3os.register root=live:CDLABEL=C3OS_REGISTER` on the command
#   line (Kairos's live ISO names its medium so; the agent tells a live boot by it), and
#   c3os/disk.img.gz, the disk layout its installer writes. Booted so, /init (after DHCP)
#   runs c3os-enroll: it reads url, namespace, pool, token, ca.crt and poll-seconds from the
#   ISO labelled C3OS-ENROLL (capi_c3os/dev/enroll_hosts.py builds it) and runs the agent
#   with --install-command c3os-standin-install (kairos-agent manual-install stood in: the
#   disk gets MBR + syslinux, a C3OSBOOT partition with both slots, the agent and its state,
#   and a `cidata` partition with the user-data and meta-data; the agent's state directory
#   moves onto the disk), --reset-command c3os-standin-reset (zeroes the installed disk) and
#   --reboot-command c3os-standin-reboot. The firmware boots the disk before the CD: the
#   installed system boots like a VM with a config drive (yip, provider-id), and its
#   c3os-enroll runs the agent from the disk with the carried state, which reports `booted`;
#   after a reset the wiped disk is not bootable and the host boots registration again.
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
# - Two slots and in-place upgrades, as Kairos has them (COS_ACTIVE / COS_PASSIVE). The boot
#   disk holds active/ and passive/, each a whole OS: vmlinuz, initrd.img and release.img (a
#   small cpio with that OS's /etc/kairos-release, loaded after initrd.img: later files win).
#   syslinux boots `active` with root=LABEL=COS_ACTIVE on the kernel command line, `passive`
#   with root=LABEL=COS_PASSIVE (kairos-agent v2.31.4 pkg/constants: ActiveLabel, PassiveLabel;
#   the node labeler reads boot-state from /proc/cmdline, which /init prints at every boot
#   with the boot id). Both carry panic=5, as Kairos's cmdline does (kairos-docs
#   Upgrade/boot_assessment.md): a kernel that panics reboots.
#   `kairos-agent upgrade --source dir:<root>` (the image's /usr/bin/kairos-agent, a stand-in
#   of kairos-agent v2.31.4 pkg/action/upgrade.go UpgradeAction.Run) copies the new OS from
#   <root>/boot into a transition dir, moves active to passive unless booted from passive
#   (then active alone is replaced, passive kept), moves the transition to active, and arms
#   boot assessment.
#   Boot assessment, Kairos (kairos-init pkg/bundled/cloudconfigs/08_grub.yaml "Add boot
#   assessment grub configuration", kairos-docs Upgrade/boot_assessment.md): after an upgrade
#   grubenv has enable_boot_assessment=yes and next_entry=cos (one-shot, upgrade.go
#   SelectBootEntry); grub, on a boot with the sentinel and no tentative flag, saves
#   boot_assessment_tentative=yes and boots active; a system that comes up clears both
#   (boot.before); back at grub with tentative still set means that boot failed: grub boots
#   `fallback` (passive) with `upgrade_failure` on the command line.
#   Here, with syslinux (no grubenv, but its ADV: a 2-sector block in ldlinux.sys that
#   ldlinux rewrites itself, syslinux 6.04 com32/elflink/ldlinux/ldlinux.c): the upgrade
#   writes syslinux.cfg with DEFAULT passive (+ upgrade_failure) and a boot-once entry
#   `active` into the ADV. The next boot consumes the once entry (ldlinux clears it on disk
#   before loading the kernel: grub's save_env of tentative) and boots active. An active
#   that comes up (before READY) rewrites syslinux.cfg to DEFAULT active: the sentinels are
#   cleared. One that does not (panic -> panic=5 -> reboot) meets DEFAULT passive: the
#   fallback. Differences: one attempt, no counter; nothing but a reboot after a hang (no
#   watchdog); passive stays the default after a fallback until the next upgrade (as in
#   Kairos, whose fallback sets no new default either).
#   The ADV sector is found at build time (the syslinux installer here cannot set boot-once
#   itself) and written on the disk as /c3os-adv-sector; the ADV block is computed here in
#   syslinux's format (libinstaller/setadv.c: magic, checksum, tag ADV_BOOTONCE, magic).
#
# - Upgrade images (a stand-in OCI registry): oci/<tag>/ holds the container root the k3s
#   stand-in's registry serves for registry.c3os.test/c3os-standin:<tag> (capi_c3os/dev/
#   nodeupgrade.py): /boot/{vmlinuz,initrd.img,release.img}, /etc/kairos-release,
#   /usr/bin/kairos-agent, /usr/lib/c3os/* and /bin/busybox, as a Kairos image is the OS
#   root that `kairos-agent upgrade --source dir:/` copies. Tags: one per shipped k3s version
#   (k3sv1.33.4-k3s1, ...), and broken-<tag> for each: the same with a release.img whose /init
#   prints the boot marker and exits (kernel panic), so boot assessment falls back.
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
# The host agent of enrolled hosts (hack/c3os-agent, static Go): only in register.iso.
enroll_agent=$(cd "$here/.." && "$py" -m capi_c3os.dev.binaries c3os-agent | sed -n 's/^c3os-agent=\(.*\) (.*/\1/p')
[ -x "$enroll_agent" ] || { echo "no c3os-agent binary (python3 -m capi_c3os.dev.binaries c3os-agent)" >&2; exit 1; }
hash=$(cat "$here/standin-image.sh" "$yip" "$enroll_agent" | sha256sum | cut -c1-12)
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
[ -x "$busybox" ] && "$busybox" --list | grep -x findfs >/dev/null || { echo "busybox-static is required" >&2; exit 1; }

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
  printf 'KAIROS_NAME="c3os-standin"\nKAIROS_VARIANT="standard"\nKAIROS_VERSION="v3.5.3-c3os-standin"\nKAIROS_SOFTWARE_VERSION_PREFIX="k3s"\nKAIROS_SOFTWARE_VERSION="%s"\n' "$1"
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
virtio_console floppy sd_mod fat vfat nls_cp437 nls_ascii usb-common usbcore ehci-hcd ehci-pci uhci-hcd xhci-hcd xhci-pci
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

# The boot disk's syslinux.cfg (see the header): `c3os-bootcfg active` normally,
# `c3os-bootcfg passive upgrade_failure` while boot assessment is armed.
cat > initramfs/bin/c3os-bootcfg <<'BOOTCFG'
#!/bin/sh
case "$1" in active|passive) ;; *) echo "usage: c3os-bootcfg active|passive [upgrade_failure]" >&2; exit 2 ;; esac
printf 'SERIAL 0 115200\nDEFAULT %s\nPROMPT 0\nTIMEOUT 0\n' "$1"
for slot in active passive; do
  label=COS_$(echo "$slot" | tr a-z A-Z)
  extra=""
  [ "$slot" = passive ] && [ -n "${2:-}" ] && extra=" $2"
  printf 'LABEL %s\n  LINUX /%s/vmlinuz\n  INITRD /%s/initrd.img,/%s/release.img\n' "$slot" "$slot" "$slot" "$slot"
  printf '  APPEND console=ttyS0 quiet panic=5 root=LABEL=%s%s\n' "$label" "$extra"
done
BOOTCFG
chmod +x initramfs/bin/c3os-bootcfg

# kairos-agent, stood in: `upgrade --source dir:<root>` only (see the header).
mkdir -p initramfs/usr/bin initramfs/usr/lib/c3os
cat > initramfs/usr/bin/kairos-agent <<'AGENTBIN'
#!/bin/sh
# Follows kairos-agent v2.31.4 pkg/action/upgrade.go (UpgradeAction.Run): new OS into a
# transition image, active -> passive unless booted from passive, transition -> active,
# next boot: active once (SelectBootEntry), boot assessment armed.
# (C3OS_* variables: the unit tests' stand-ins for the disk, console and /proc.)
state=${C3OS_STATE_DIR:-/run/c3os-state}
console=${C3OS_CONSOLE:-/dev/console}
cmdline=${C3OS_CMDLINE:-/proc/cmdline}
adv=${C3OS_ADV:-/usr/lib/c3os/adv-once-active}
say() { echo "kairos-agent: $*"; echo "C3OS-STANDIN KAIROS-AGENT $*" > "$console" 2>/dev/null || true; }
fail() { say "ERROR $*"; exit 1; }
[ "${1:-}" = upgrade ] || fail "this stand-in does only: upgrade --source dir:<root>"
shift
source=""
while [ $# -gt 0 ]; do
  case "$1" in
    --source) source=${2:-}; shift 2 ;;
    --source=*) source=${1#--source=}; shift ;;
    *) fail "unknown argument $1" ;;
  esac
done
case "$source" in dir:*) root=${source#dir:} ;; *) fail "source '$source': the stand-in takes dir:<root> only" ;; esac
for f in vmlinuz initrd.img release.img; do
  [ -s "$root/boot/$f" ] || fail "$root/boot/$f missing: not a c3os stand-in OS"
done
dev=${C3OS_STATE_DEVICE:-$(findfs LABEL=C3OSBOOT 2>/dev/null)} || fail "no boot disk (LABEL=C3OSBOOT)"
mkdir -p "$state"
if [ -z "${C3OS_STATE_DEVICE:-}" ]; then
  mount -t vfat "$dev" "$state" || fail "cannot mount $dev"
  trap 'umount "$state" 2>/dev/null' EXIT
fi
sector=$(cat "$state/c3os-adv-sector" 2>/dev/null) || fail "no c3os-adv-sector on the boot disk"
rm -rf "$state/transition"
mkdir "$state/transition"
cp "$root/boot/vmlinuz" "$root/boot/initrd.img" "$root/boot/release.img" "$state/transition/" \
  || fail "cannot write the transition image (disk full?)"
if grep -q COS_PASSIVE "$cmdline"; then
  # upgrade.go: booted from passive, active may be the broken one: keep passive.
  say "booted from passive: replacing active, passive kept"
  rm -rf "$state/active"
else
  say "backing up active into passive"
  rm -rf "$state/passive"
  mv "$state/active" "$state/passive" || fail "cannot move active to passive"
fi
mv "$state/transition" "$state/active" || fail "cannot move the transition image to active"
c3os-bootcfg passive upgrade_failure > "$state/syslinux.cfg.new" && mv "$state/syslinux.cfg.new" "$state/syslinux.cfg" \
  || fail "cannot arm boot assessment"
sync
if [ -z "${C3OS_STATE_DEVICE:-}" ]; then umount "$state"; trap - EXIT; fi
# Next boot: active, once (syslinux's ADV, written after the file system is unmounted).
dd if="$adv" of="$dev" bs=512 seek="$sector" count=2 conv=notrunc,fsync 2>/dev/null \
  || fail "cannot write the boot-once entry"
say "Upgrade completed: active is $(sed -n 's/^KAIROS_SOFTWARE_VERSION="\(.*\)"/\1/p' "$root/etc/kairos-release")"
AGENTBIN
chmod +x initramfs/usr/bin/kairos-agent

# What containerd does for the upgrade Job's pod, reduced to what that pod uses: the
# image's root (pulled by c3os-image-pull), hostPath / at /host, hostPID (same PID
# namespace), privileged (the script mounts /host/dev), /proc and /sys, containerd's PATH.
cat > initramfs/bin/c3os-run-container <<'RUNC'
#!/bin/sh
root=$1; script=$2
[ -x "$root/bin/busybox" ] || { echo "no /bin/busybox in the image" >&2; exit 127; }
for a in $("$root/bin/busybox" --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
mkdir -p "$root/host" "$root/dev" "$root/run" "$root/proc" "$root/sys" "$root/tmp"
exec unshare -m /bin/sh -c '
  mount --rbind / "$1/host" || exit 126
  mount -t proc proc "$1/proc" && mount -t sysfs sysfs "$1/sys" || exit 126
  exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin chroot "$1" /bin/sh -c "$(cat "$2")"
' sh "$root" "$script"
RUNC
chmod +x initramfs/bin/c3os-run-container

# The node's image store, reduced: `c3os-image-pull DIR` reads DIR/manifest ("<sha256>
# <octal mode> <path>" lines), puts into DIR/rootfs each file whose bytes the node already
# holds (its /bin/busybox, the files of its two slots: image layers it has), and prints
# "MISSING <path>" for the rest, which the k3s stand-in then writes through the guest agent;
# `c3os-image-pull --check DIR` verifies every file and sets its mode.
cat > initramfs/bin/c3os-image-pull <<'PULL'
#!/bin/sh
check=""
[ "$1" = --check ] && { check=1; shift; }
dir=$1
[ -f "$dir/manifest" ] || { echo "no $dir/manifest" >&2; exit 2; }
if [ -n "$check" ]; then
  bad=0
  while read -r sum mode path; do
    got=$(sha256sum "$dir/rootfs/$path" 2>/dev/null | cut -d' ' -f1)
    [ "$got" = "$sum" ] || { echo "BAD $path"; bad=1; continue; }
    chmod "$mode" "$dir/rootfs/$path"
  done < "$dir/manifest"
  exit $bad
fi
cache=/run/c3os-image-cache
have=$dir/have
: > "$have"
boot=$(findfs LABEL=C3OSBOOT 2>/dev/null) && mkdir -p "$cache" && mount -t vfat -o ro "$boot" "$cache" && mounted=1
sha256sum /bin/busybox "$cache"/active/* "$cache"/passive/* 2>/dev/null > "$have"
while read -r sum mode path; do
  mkdir -p "$(dirname "$dir/rootfs/$path")"
  src=$(awk -v s="$sum" '$1 == s {print $2; exit}' "$have")
  if [ -n "$src" ]; then cp "$src" "$dir/rootfs/$path"; else echo "MISSING $path"; fi
done < "$dir/manifest"
[ -n "${mounted:-}" ] && umount "$cache"
exit 0
PULL
chmod +x initramfs/bin/c3os-image-pull

# Enrolled hosts (README "Enrolled hosts"; see the header): the boot hook that runs the
# host agent, and the installer, reset and reboot commands it is given.
cat > initramfs/bin/c3os-enroll <<'ENROLL'
#!/bin/sh
# Runs the host agent (hack/c3os-agent) with the settings of the C3OS-ENROLL drive: on the
# registration image (c3os.register) from its initrd, with its state in RAM; on a system
# installed from it (root=LABEL=COS_*) from the persistent partition, with the state the
# installer carried there, so the installed system reports `booted`.
settings=/run/c3os-enroll
state=/usr/local/.c3os-agent  # the agent's default --state-dir (Kairos: /usr/local persists)
agent=/bin/c3os-agent
dev=""
for i in $(seq 1 50); do dev=$(findfs LABEL=C3OS-ENROLL 2>/dev/null) && break; sleep 0.2; done
[ -n "$dev" ] || { echo "C3OS-STANDIN ENROLL: no C3OS-ENROLL settings drive"; exit 0; }
mkdir -p "$settings"
mount -t iso9660 -o ro "$dev" "$settings" || { echo "C3OS-STANDIN ENROLL: cannot mount $dev"; exit 1; }
if grep -q 'root=LABEL=COS_' /proc/cmdline; then
  boot=$(findfs LABEL=C3OSBOOT 2>/dev/null) || { echo "C3OS-STANDIN ENROLL: no boot disk"; exit 1; }
  mkdir -p /run/c3os-persist "$state"
  mount -t vfat -o quiet,umask=077 "$boot" /run/c3os-persist || exit 1
  [ -f /run/c3os-persist/c3os/c3os-agent ] || { echo "C3OS-STANDIN ENROLL: not installed by the agent"; umount /run/c3os-persist; exit 0; }
  # Run from RAM: a reset wipes the disk under it.
  cp /run/c3os-persist/c3os/c3os-agent /run/c3os-agent && chmod 0755 /run/c3os-agent && agent=/run/c3os-agent
  mount --bind /run/c3os-persist/c3os/agent-state "$state" || exit 1
fi
# A live image keeps asking DHCP until it has an address (Kairos: NetworkManager), /init
# asked once: a busy DHCP server may not have answered.
while ! ip route | grep -q '^default'; do
  for nic in /sys/class/net/*; do
    [ "${nic##*/}" = lo ] && continue
    ip link set "${nic##*/}" up
    udhcpc -i "${nic##*/}" -t 10 -T 2 -n -q -s /usr/share/udhcpc/default.script >/dev/null 2>&1 && break
  done
done
echo "C3OS-STANDIN ENROLL $(cat "$settings/url") $(cat "$settings/namespace")/$(cat "$settings/pool")"
exec "$agent" --url "$(cat "$settings/url")" --namespace "$(cat "$settings/namespace")" \
  --pool "$(cat "$settings/pool")" --token-file "$settings/token" --ca-file "$settings/ca.crt" \
  --state-dir "$state" --poll-seconds "$(cat "$settings/poll-seconds" 2>/dev/null || echo 0)" \
  --install-command "c3os-standin-install {disk} {config} {metadata}" \
  --reset-command c3os-standin-reset --reboot-command c3os-standin-reboot
ENROLL
chmod +x initramfs/bin/c3os-enroll

# The installer: kairos-agent v2.31.4 `manual-install --device <disk> <config>` stood in
# (internal/agent/install.go ManualInstall -> pkg/action/install.go InstallAction.Run:
# partition the disk, copy the running live system into the active and passive slots,
# the cloud-config into the OEM partition, install the bootloader). Here: the disk layout of register.iso's
# c3os/disk.img.gz (MBR + syslinux, a FAT C3OSBOOT partition with both slots, the agent and
# its state as Kairos's persistent /usr/local, and a FAT `cidata` partition holding the
# user-data and the meta-data, so the installed system boots like one with a config drive:
# yip's datasource and our provider-id script find it by label).
cat > initramfs/bin/c3os-standin-install <<'INSTALL'
#!/bin/sh
disk=$1; config=$2; metadata=$3
state=/usr/local/.c3os-agent
fail() { echo "c3os-standin-install: $*" >&2; exit 1; }
part() { case "$disk" in *[0-9]) echo "${disk}p$1" ;; *) echo "$disk$1" ;; esac; }
[ -b "$disk" ] || fail "no block device $disk"
[ -s "$config" ] || fail "no cloud-config"
live=$(findfs LABEL=C3OS_REGISTER 2>/dev/null) || fail "the registration medium (C3OS_REGISTER) is gone"
mkdir -p /run/c3os-media /run/c3os-target /run/c3os-oem
mountpoint -q /run/c3os-media || mount -t iso9660 -o ro "$live" /run/c3os-media || fail "cannot mount $live"
gunzip -c /run/c3os-media/c3os/disk.img.gz | dd of="$disk" bs=1M conv=fsync 2>/dev/null || fail "cannot write $disk"
blockdev --rereadpt "$disk" || fail "cannot re-read the partitions of $disk"
for i in $(seq 1 50); do [ -b "$(part 1)" ] && [ -b "$(part 2)" ] && break; sleep 0.1; done
mount -t vfat -o quiet,umask=077 "$(part 1)" /run/c3os-target || fail "cannot mount $(part 1)"
for slot in active passive; do
  mkdir -p "/run/c3os-target/$slot"
  cp /run/c3os-media/vmlinuz /run/c3os-media/initrd.img /run/c3os-media/release.img "/run/c3os-target/$slot/" \
    || fail "cannot copy the system into $slot (disk full?)"
done
mkdir -p /run/c3os-target/c3os/agent-state
cp /bin/c3os-agent /run/c3os-target/c3os/c3os-agent || fail "cannot copy the agent"
mount -t vfat "$(part 2)" /run/c3os-oem || fail "cannot mount $(part 2)"
cp "$config" /run/c3os-oem/user-data || fail "cannot write the user-data"
# The agent's meta-data is flat JSON of strings (no commas in them): NoCloud's YAML lines.
tr -d '{}' < "$metadata" | tr ',' '\n' | sed -n 's/^"\([^"]*\)":"\([^"]*\)"$/\1: \2/p' > /run/c3os-oem/meta-data
umount /run/c3os-oem
# The agent's state (credential only: no install-* directory) into the persistent
# partition, then that directory where the agent keeps it: its next save lands on the disk.
[ -f "$state/state.json" ] && cp "$state/state.json" /run/c3os-target/c3os/agent-state/
sync
mount --bind /run/c3os-target/c3os/agent-state "$state" || fail "cannot carry the agent state"
echo "c3os-standin-install: installed onto $disk"
INSTALL
chmod +x initramfs/bin/c3os-standin-install

# The reset: kairos-agent v2.31.4 `reset --unattended --reset-oem` (internal/agent/reset.go,
# pkg/action/reset.go ResetAction.Run) formats COS_PERSISTENT and COS_OEM and reinstalls
# active from recovery. The stand-in has no recovery system: it zeroes the whole disk it
# installed (so nothing of the old cluster is left, not even in free clusters) and the
# firmware boots the registration medium again.
cat > initramfs/bin/c3os-standin-reset <<'RESET'
#!/bin/sh
state=/usr/local/.c3os-agent
# Off the disk first: the agent's next state save goes to RAM.
umount "$state" 2>/dev/null
for m in /run/c3os-persist /run/c3os-target /run/c3os-oem; do umount "$m" 2>/dev/null; done
disks=""
for label in C3OSBOOT cidata CIDATA; do
  p=$(findfs "LABEL=$label" 2>/dev/null) || continue
  d=$(basename "$(dirname "$(readlink -f "/sys/class/block/${p#/dev/}")")")
  [ -f "/sys/block/$d/size" ] && [ "$(cat "/sys/block/$d/removable")" = 0 ] || continue
  case " $disks " in *" $d "*) ;; *) disks="$disks $d" ;; esac
done
[ -n "$disks" ] || { echo "c3os-standin-reset: nothing installed"; exit 0; }
for d in $disks; do
  mib=$(( $(cat "/sys/block/$d/size") / 2048 ))
  dd if=/dev/zero of="/dev/$d" bs=1M count="$mib" conv=fsync 2>/dev/null || { echo "c3os-standin-reset: cannot wipe $d" >&2; exit 1; }
  blockdev --flushbufs "/dev/$d"
  echo "c3os-standin-reset: wiped $d"
done
RESET
chmod +x initramfs/bin/c3os-standin-reset

cat > initramfs/bin/c3os-standin-reboot <<'REBOOT'
#!/bin/sh
sync
umount /usr/local/.c3os-agent /run/c3os-target /run/c3os-persist /run/c3os-media 2>/dev/null
reboot
REBOOT
chmod +x initramfs/bin/c3os-standin-reboot

# A minimal QEMU guest agent: newline-terminated JSON commands in, one JSON line out
# (the qemu-ga protocol libvirt speaks); guest-sync-delimited answers after the 0xFF
# sentinel byte. What address discovery needs, and what the k3s stand-in needs to run an
# upgrade Job on the node (qemu-ga's guest-file-open/-write/-close and guest-exec /
# guest-exec-status, same arguments and answers; string arguments with JSON escapes are
# refused, and guest-exec's "pid" is a handle, not a process id); anything else is
# CommandNotFound.
cat > initramfs/bin/c3os-guest-agent <<'AGENT'
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
state=${C3OS_AGENT_STATE:-/run/c3os-agent}
# JSON fields by one linear pass (a sed `.*"key"` backtracks over a guest-file-write's
# 100 KB line for seconds): split at '"', the value follows the key and a ':'.
str() {
  echo "$1" | awk -F'"' -v k="$2" '{ for (i = 2; i + 2 <= NF; i++) if ($i == k && $(i + 1) ~ /^ *: *$/) {
    v = $(i + 2); if (substr(v, length(v)) != "\\") print v; exit } }'  # a value with escapes: none
}
num() {
  echo "$1" | awk -F'"' -v k="$2" '{ for (i = 2; i < NF; i++) if ($i == k) { v = $(i + 1); sub(/^ *: */, "", v)
    if (match(v, /^-?[0-9]+/)) print substr(v, 1, RLENGTH); exit } }'
}
failed() { printf '{"error": {"class": "GenericError", "desc": "%s"}}\n' "$1"; }
next_handle() {
  mkdir -p "$state"
  n=$(( $(cat "$state/counter" 2>/dev/null || echo 1000) + 1 ))
  echo "$n" > "$state/counter"
  echo "$n"
}
exec_start() {
  path=$(str "$1" path)
  [ -n "$path" ] || { failed "guest-exec: no path (or one with JSON escapes)"; return; }
  list=$(echo "$1" | sed -n 's/.*"arg" *: *\[\([^]]*\)\].*/\1/p')
  case "$list" in *\\*) failed "guest-exec: arguments with JSON escapes are not supported"; return ;; esac
  set --
  while IFS= read -r a; do [ -n "$a" ] && set -- "$@" "$a"; done <<EOF
$(echo "$list" | sed 's/^ *"//; s/" *$//; s/" *, *"/\n/g')
EOF
  h=$(next_handle)
  d="$state/exec/$h"
  mkdir -p "$d"
  ( "$path" "$@" > "$d/out" 2> "$d/err" < /dev/null; echo $? > "$d/rc" ) 3>&- > /dev/null 2>&1 &
  printf '{"return": {"pid": %s}}\n' "$h"
}
exec_status() {
  d="$state/exec/$(num "$1" pid)"
  [ -d "$d" ] || { failed "guest-exec-status: no such pid"; return; }
  if [ -f "$d/rc" ]; then
    printf '{"return": {"exited": true, "exitcode": %d, "out-data": "%s", "err-data": "%s"}}\n' \
      "$(cat "$d/rc")" "$(base64 "$d/out" | tr -d '\n')" "$(base64 "$d/err" | tr -d '\n')"
  else
    printf '{"return": {"exited": false}}\n'
  fi
}
file_open() {
  path=$(str "$1" path); mode=$(str "$1" mode)
  [ -n "$path" ] || { failed "guest-file-open: no path (or one with JSON escapes)"; return; }
  case "${mode:-r}" in
    w*) : > "$path" ;;
    a*) : >> "$path" ;;
    *) [ -r "$path" ] ;;
  esac 2>/dev/null || { failed "guest-file-open: cannot open $path"; return; }
  h=$(next_handle)
  echo "$path" > "$state/file-$h"
  printf '{"return": %s}\n' "$h"
}
file_write() {
  h=$(num "$1" handle)
  [ -n "$h" ] && [ -f "$state/file-$h" ] || { failed "guest-file-write: no such handle"; return; }
  path=$(cat "$state/file-$h")
  before=$(wc -c < "$path")
  str "$1" buf-b64 | base64 -d >> "$path" || { failed "guest-file-write: write failed"; return; }
  printf '{"return": {"count": %d, "eof": false}}\n' $(( $(wc -c < "$path") - before ))
}
answer() {
  cmd=$(str "$1" execute)
  id=$(num "$1" id)
  case "$cmd" in
    guest-sync-delimited) printf '\377{"return": %s}\n' "${id:-0}" ;;
    guest-sync) printf '{"return": %s}\n' "${id:-0}" ;;
    guest-ping) printf '{"return": {}}\n' ;;
    guest-info) printf '{"return": {"version": "c3os-standin", "supported_commands": [%s]}}\n' \
      "$(for c in guest-sync-delimited guest-sync guest-ping guest-info guest-network-get-interfaces \
                 guest-file-open guest-file-write guest-file-close guest-exec guest-exec-status; do
           printf '{"name":"%s","enabled":true,"success-response":true},' "$c"; done | sed 's/,$//')" ;;
    guest-network-get-interfaces) printf '{"return": %s}\n' "$(interfaces)" ;;
    guest-file-open) file_open "$1" ;;
    guest-file-write) file_write "$1" ;;
    guest-file-close) h=$(num "$1" handle); rm -f "$state/file-$h"; printf '{"return": {}}\n' ;;
    guest-exec) exec_start "$1" ;;
    guest-exec-status) exec_status "$1" ;;
    *) printf '{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}\n' "$cmd" ;;
  esac
}
# The port opens once (a second open is EBUSY); a read gives EOF while no host side is
# connected: wait and read again. One command line at a time with head, which reads in
# blocks (ash's read takes a byte per system call: minutes for a file written through
# guest-file-write): it cannot take more than the line, as libvirt sends nothing more
# before it has the answer (guest-sync-delimited, then the command, each answered).
exec 3<>"$port"
while true; do
  line=$(head -n 1 <&3)
  if [ -n "$line" ]; then answer "$line" >&3; else sleep 1; fi
done
AGENT
chmod +x initramfs/bin/c3os-guest-agent

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
# Every boot: its id (a kubelet reports it as nodeInfo.bootID) and the command line (the
# node labeler's boot-state), read by the k3s stand-in from the last boot's console.
echo "C3OS-STANDIN BOOT $(cat /proc/sys/kernel/random/boot_id)"
echo "C3OS-STANDIN CMDLINE $(cat /proc/cmdline)"
# busybox reboot/poweroff signal PID 1 (this shell): shut down as an init would.
trap 'echo "C3OS-STANDIN REBOOTING"; sync; reboot -f' TERM
trap 'echo "C3OS-STANDIN POWEROFF"; sync; poweroff -f' USR2
echo "----- BEGIN KAIROS-RELEASE -----"; cat /etc/kairos-release; echo "----- END KAIROS-RELEASE -----"
dev=""
for i in $(seq 1 50); do
  # (CIDATA: a FAT drive's label, as on a disk register.iso's installer made.)
  dev=$(findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null || findfs LABEL=config-2 2>/dev/null || true)
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
if [ -n "$dev" ] && { mount -t iso9660 -o ro "$dev" /mnt/cfg 2>/dev/null || mount -t vfat -o ro "$dev" /mnt/cfg; }; then
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
c3os-guest-agent &
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
# Boot assessment (see the header): an active slot that came this far is good; clear the
# sentinel (DEFAULT passive while armed) as Kairos's boot.before step does.
if grep -q COS_ACTIVE /proc/cmdline && boot=$(findfs LABEL=C3OSBOOT 2>/dev/null); then
  mkdir -p /run/c3os-state
  if mount -t vfat "$boot" /run/c3os-state; then
    if grep -q '^DEFAULT passive' /run/c3os-state/syslinux.cfg; then
      c3os-bootcfg active > /run/c3os-state/syslinux.cfg.new && mv /run/c3os-state/syslinux.cfg.new /run/c3os-state/syslinux.cfg
      echo "C3OS-STANDIN BOOT-ASSESSMENT PASSED"
    fi
    umount /run/c3os-state
  fi
fi
grep -q upgrade_failure /proc/cmdline && echo "C3OS-STANDIN UPGRADE-FAILURE: booted the fallback"
# Enrolled hosts: the registration image runs the host agent; so does a system it installed.
if grep -qw c3os.register /proc/cmdline || { grep -q 'root=LABEL=COS_' /proc/cmdline && findfs LABEL=C3OS-ENROLL >/dev/null 2>&1; }; then
  c3os-enroll &
fi
echo "C3OS-STANDIN READY"
# `wait` (not a foreground sleep) lets the TERM trap run at once.
while true; do sleep 3600 & wait $!; done
INIT
chmod +x initramfs/init
mkdir -p "$out.tmp"
# syslinux's ADV with the boot-once command `active` (libinstaller/setadv.c): two equal
# 512-byte copies of MAGIC1, a checksum making the words after it sum to MAGIC2, the
# records (tag ADV_BOOTONCE=1, length, bytes), zeros, MAGIC3 last.
"$py" - initramfs/usr/lib/c3os/adv-once-active <<'ADV'
import struct, sys
data = bytes([1, len(b"active")]) + b"active"
body = data.ljust(512 - 12, b"\0")
csum = (0xA3041767 - sum(struct.unpack("<125I", body))) & 0xFFFFFFFF
block = struct.pack("<II", 0x5A2D2FA5, csum) + body + struct.pack("<I", 0xDD28BF64)
open(sys.argv[1], "wb").write(block * 2)
ADV
(cd initramfs && find . | cpio -o -H newc --quiet | gzip -9) > "$out.tmp/initrd.img"
cp "kroot/boot/vmlinuz-$version" "$out.tmp/vmlinuz"
printf 'C3OS-STANDIN-BASE-0001' > base.raw
truncate -s 64M base.raw
qemu-img convert -q -f raw -O qcow2 base.raw "$out.tmp/base.qcow2"

# The self-booting disk. syslinux writes its boot sector into the FAT volume's first
# sector, which on a superfloppy is the disk's first sector: what the BIOS loads.
# Its slots hold an OS of oci/<tag> (both slots the same, as after an install).
sh initramfs/bin/c3os-bootcfg active > syslinux.cfg
boot_disk() {  # oci tag, output qcow2
  rm -f boot.raw
  truncate -s 64M boot.raw
  mformat -i boot.raw -v C3OSBOOT -h 64 -s 32 -t 32 ::
  syslinux --install boot.raw  # first: ldlinux.sys (and its ADV) near the start
  mmd -i boot.raw ::/active ::/passive
  for slot in active passive; do
    mcopy -i boot.raw "$out.tmp/oci/$1/boot/vmlinuz" "$out.tmp/oci/$1/boot/initrd.img" \
      "$out.tmp/oci/$1/boot/release.img" "::/$slot/"
  done
  mcopy -i boot.raw syslinux.cfg ::/syslinux.cfg
  # Where ldlinux.sys keeps its ADV (two sectors starting with ADV_MAGIC1), for the upgrade.
  sector=$(od -A d -t x4 -w512 -v -N 8388608 boot.raw | awk '$2 == "5a2d2fa5" && !n {print $1 / 512; n = 1}')
  [ -n "$sector" ] || { echo "no syslinux ADV found on the boot disk" >&2; exit 1; }
  echo "$sector" > adv-sector
  mcopy -i boot.raw adv-sector ::/c3os-adv-sector
  qemu-img convert -q -f raw -O qcow2 boot.raw "$2"
}
# An OCI image's root (see the header): the OS in /boot plus what its kairos-agent needs.
oci_image() {  # tag, k3s version, broken?
  r="$out.tmp/oci/$1"
  mkdir -p "$r/boot" "$r/etc" "$r/bin" "$r/usr/bin" "$r/usr/lib/c3os"
  # Every tag shares these bytes (as image layers): hard links, not copies.
  ln "$out.tmp/vmlinuz" "$out.tmp/initrd.img" "$r/boot/"
  [ -f "$out.tmp/oci/busybox" ] || cp "$busybox" "$out.tmp/oci/busybox"
  ln "$out.tmp/oci/busybox" "$r/bin/busybox"
  cp initramfs/usr/bin/kairos-agent "$r/usr/bin/"
  cp initramfs/bin/c3os-bootcfg "$r/bin/"
  cp initramfs/usr/lib/c3os/* "$r/usr/lib/c3os/"
  rm -rf release && mkdir -p release/etc
  kairos_release "$2" > release/etc/kairos-release
  cp release/etc/kairos-release "$r/etc/kairos-release"
  if [ -n "${3:-}" ]; then
    # Does not come up: prints the boot marker, then PID 1 exits (kernel panic, panic=5).
    printf '%s\n' '#!/bin/sh' 'mount -t proc proc /proc' \
      'echo "C3OS-STANDIN BOOT $(cat /proc/sys/kernel/random/boot_id)"' \
      'echo "C3OS-STANDIN CMDLINE $(cat /proc/cmdline)"' \
      'echo "C3OS-STANDIN BROKEN IMAGE: init exits"' 'exit 1' > release/init
    chmod +x release/init
  fi
  (cd release && find . | cpio -o -H newc --quiet | gzip -9) > "$r/boot/release.img"
}
for v in $DEFAULT_K3S $VARIANT_K3S; do
  tag="k3s$(echo "$v" | tr + -)"
  oci_image "$tag" "$v"
  oci_image "broken-$tag" "$v" broken
done
default_tag="k3s$(echo "$DEFAULT_K3S" | tr + -)"
boot_disk "$default_tag" "$out.tmp/boot.qcow2"
for v in $VARIANT_K3S; do
  tag="k3s$(echo "$v" | tr + -)"
  boot_disk "$tag" "$out.tmp/boot-$tag.qcow2"
done

# The live ISO: isolinux loads the same kernel and initrd with c3os.live.
mkdir -p iso/isolinux
cp "$isolinux" "$ldlinux" iso/isolinux/
cp "$out.tmp/vmlinuz" "$out.tmp/initrd.img" iso/
printf '%s\n' 'SERIAL 0 115200' 'DEFAULT c3os' 'PROMPT 0' 'TIMEOUT 0' 'LABEL c3os' '  LINUX /vmlinuz' \
  '  INITRD /initrd.img' '  APPEND console=ttyS0 quiet c3os.live' > iso/isolinux/isolinux.cfg
xorriso -as mkisofs -quiet -V C3OS_LIVE -o "$out.tmp/live.iso" \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  -isohybrid-mbr "$isohybrid" iso

# The registration image (see the header): register.iso, and the disk layout its installer
# writes (c3os/disk.img.gz): MBR (syslinux's mbr.bin) with two partitions, `cidata` (FAT,
# 4 MiB at 1 MiB) and the bootable C3OSBOOT (FAT, 64 MiB at 5 MiB; syslinux, syslinux.cfg,
# the ADV sector relative to the partition). Only the bytes up to the last non-zero one are
# kept (the rest of a fresh or reset disk is zeros).
mbr=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$mbr" ] || { echo "missing $mbr (syslinux-common)" >&2; exit 1; }
rm -f disk.raw
truncate -s 69M disk.raw
dd if="$mbr" of=disk.raw conv=notrunc 2>/dev/null
"$py" - disk.raw <<'MBR'
import struct, sys
def entry(active, kind, start, sectors):  # CHS fields: "use LBA"
    return struct.pack("<B3sB3sII", 0x80 if active else 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", start, sectors)
table = entry(True, 0x0E, 10240, 131072) + entry(False, 0x06, 2048, 8192) + bytes(32) + b"\x55\xaa"
with open(sys.argv[1], "r+b") as f:
    f.seek(446)
    f.write(table)
MBR
mformat -i disk.raw@@5M -v C3OSBOOT -H 10240 -T 131072 -h 64 -s 32 ::
syslinux --install --offset $((5 * 1048576)) disk.raw
mcopy -i disk.raw@@5M syslinux.cfg ::/syslinux.cfg
sector=$(od -A d -t x4 -w512 -v -j $((5 * 1048576)) -N 8388608 disk.raw | awk '$2 == "5a2d2fa5" && !n {print $1 / 512 - 10240; n = 1}')
[ -n "$sector" ] || { echo "no syslinux ADV found on the install layout" >&2; exit 1; }
echo "$sector" > adv-sector
mcopy -i disk.raw@@5M adv-sector ::/c3os-adv-sector
mformat -i disk.raw@@1M -v cidata -H 2048 -T 8192 -h 64 -s 32 ::
used=$("$py" -c 'import sys; d = open(sys.argv[1], "rb").read(); print(-(-len(d.rstrip(b"\0")) // 1048576))' disk.raw)
mkdir -p riso/isolinux riso/c3os
head -c "$((used * 1048576))" disk.raw | gzip -9 > riso/c3os/disk.img.gz
mkdir -p enroll/bin
cp "$enroll_agent" enroll/bin/c3os-agent
(cd enroll && find . | cpio -o -H newc --quiet | gzip -9) > riso/enroll.img
cp "$isolinux" "$ldlinux" riso/isolinux/
ln "$out.tmp/vmlinuz" "$out.tmp/initrd.img" "$out.tmp/oci/$default_tag/boot/release.img" riso/
# root=live:CDLABEL=...: how Kairos's live ISO names its medium (and how kairos-sdk and the
# agent tell a live boot); the stand-in's /init does not read it.
printf '%s\n' 'SERIAL 0 115200' 'DEFAULT c3os' 'PROMPT 0' 'TIMEOUT 0' 'LABEL c3os' '  LINUX /vmlinuz' \
  '  INITRD /initrd.img,/enroll.img' '  APPEND console=ttyS0 quiet c3os.register root=live:CDLABEL=C3OS_REGISTER' \
  > riso/isolinux/isolinux.cfg
xorriso -as mkisofs -quiet -V C3OS_REGISTER -o "$out.tmp/register.iso" \
  -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table \
  -isohybrid-mbr "$isohybrid" riso
echo "$pkg" > "$out.tmp/kernel-package"
touch "$out.tmp/done"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
