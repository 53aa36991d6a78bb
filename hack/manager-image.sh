#!/usr/bin/env bash
# Builds the manager image (Containerfile) with podman, from Debian packages only: no
# container registry is needed. The base is a Debian 12 minbase root filesystem made with
# mmdebstrap from Debian's archive and imported into podman's store.
#
# Cached (in ${CAPI_C3OS_IMAGE_DIR:-~/.cache/capi-c3os/images}), keyed by hashes of the inputs:
#   debian-bookworm-<hash>.tar   the base rootfs (rebuilt when its recipe below changes)
#   manager-<hash>.oci.tar       the image as an OCI archive (Containerfile, pyproject.toml,
#                                uv.lock, README.md, capi_c3os/**.py)
# and in podman's store as localhost/capi-c3os-manager:<hash>. Prints that reference.
#
# Runs podman as root with its default storage (overlay).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${CAPI_C3OS_IMAGE_DIR:-$HOME/.cache/capi-c3os/images}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
podman=(podman)
mkdir -p "$dir"

# What debian:bookworm-slim is: minbase (essential packages + apt) without manuals,
# translations and docs (licenses kept); the dpkg options stay in the base, so packages
# the Containerfile installs drop them too.
base_opts=(--variant=minbase
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright')
base_key=$(echo "bookworm ${base_opts[*]} $mirror" | sha256sum | cut -c1-16)
base_tar=$dir/debian-bookworm-$base_key.tar
base_ref=localhost/capi-c3os-base:bookworm-$base_key
if [ ! -s "$base_tar" ]; then
  mmdebstrap --quiet "${base_opts[@]}" --format=tar bookworm "$base_tar.tmp" "$mirror" >&2
  mv "$base_tar.tmp" "$base_tar"
fi
"${podman[@]}" image exists "$base_ref" || "${podman[@]}" import --quiet "$base_tar" "$base_ref" >/dev/null

key=$(cd "$repo" && { echo "$base_key"; sha256sum Containerfile pyproject.toml uv.lock README.md;
  find capi_c3os -name '*.py' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)
ref=localhost/capi-c3os-manager:$key
archive=$dir/manager-$key.oci.tar
if ! "${podman[@]}" image exists "$ref"; then
  if [ -s "$archive" ]; then
    "${podman[@]}" load --quiet --input "$archive" >/dev/null
  else
    # Host network: the build stages fetch Debian packages and the locked wheels. chroot
    # isolation: RUN steps need no OCI runtime (crun cannot start containers in sandboxes
    # with hybrid cgroups or without CAP_SYS_RESOURCE).
    # pip in the build trusts what this machine's pip trusts (a TLS-inspecting proxy's CA),
    # through a build-time mount that no layer keeps.
    ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    "${podman[@]}" build --quiet --isolation chroot --network host --build-arg "BASE=$base_ref" \
      --volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt \
      --file "$repo/Containerfile" --tag "$ref" "$repo" >&2
  fi
fi
if [ ! -s "$archive" ]; then
  "${podman[@]}" save --quiet --format oci-archive --output "$archive.tmp" "$ref"
  mv "$archive.tmp" "$archive"
  # Each change of the code is a new archive and image: keep the three newest of both
  # (an image still used by a container is not removed).
  ls -t "$dir"/manager-*.oci.tar | tail -n +4 | xargs -r rm -f
  for old in $("${podman[@]}" images --format '{{.Repository}}:{{.Tag}}' --filter reference=localhost/capi-c3os-manager); do
    [[ $old == localhost/capi-c3os-manager:* ]] || continue  # other tags of the same image
    [ -e "$dir/manager-${old##*:}.oci.tar" ] || "${podman[@]}" rmi "$old" >/dev/null 2>&1 || true
  done
fi
echo "$ref"
