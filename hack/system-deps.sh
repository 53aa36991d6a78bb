#!/usr/bin/env bash
# Installs the Debian packages the tests need, only when missing (CI machines start bare).
set -euo pipefail
# podman + runc (see capi_c3os/dev/image.py) and mmdebstrap: the manager image, built and
# run from Debian packages only (hack/manager-image.sh).
# mariadb-server-core + mariadb-client-core: mariadbd and mariadb-install-db (with its
# my_print_defaults) for the production-shaped test Ironic's private MariaDB
# (capi_c3os/dev/mariadb.py); the mariadb-server package would also install and start the
# system's MariaDB service, which nothing here uses.
packages=(ca-certificates openssh-server libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils dnsmasq-base iptables libvirt-dev pkg-config busybox-static cpio kmod ovmf mtools syslinux syslinux-common isolinux xorriso binutils
  podman runc mmdebstrap mariadb-server-core mariadb-client-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
# The stand-in image build downloads a Debian kernel package, so package lists must exist
# even when every package above is already installed.
if ((${#missing[@]})) || ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
  "${sudo_cmd[@]}" apt-get update -qq
fi
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "Go >= 1.26 is required to build the test binaries (or set KUBEBUILDER_ASSETS and CAPI_C3OS_<NAME> paths)" >&2; exit 1; }
