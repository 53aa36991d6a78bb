"""A node's files as Kairos's executor leaves them, for machines that boot nothing here.

The stand-in VMs run yip themselves (hack/standin-image.sh) and print what it wrote. Bare
metal behind a fake-hardware Ironic boots nothing: for those `apply` runs the same pinned
static yip (capi_c3os/dev/binaries.py) over the same stages, on the host, in a sandbox of
its own (mount, PID and network namespaces; a fresh tmpfs root it is chrooted into, with
static busybox and a root-only /etc, as tests/unit/test_bootstrap_yip_sandbox.py has):

- the datasource step is yip's datasource plugin (yip v1.25.1 pkg/plugins/datasource.go)
  with its `file` provider reading the drive's user data (a machine's cdrom/config-drive
  providers need the block device, which no machine here has); it keeps the document as
  `userdata.yaml` only when yip can load it, as on a node, and the stand-in copies it to
  /oem where Kairos's own step (`path: /oem`) puts it;
- the stages Kairos runs up to `boot`, each with `.before`/`.after` (immucore: rootfs,
  initramfs; kairos-agent: fs, boot), over /oem;
- then our provider-id script, as the k3s unit's `ExecStartPre` would run it, finding the
  drive through `blkid -L` and `mount` shims that hand it the drive's files.

`seed`: files from the machine's earlier boots (Kairos's /etc and /var/lib/rancher persist),
so each step's `if:` is yip's own answer.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from capi_c3os.dev import binaries

STAGES = ("rootfs", "initramfs", "fs", "boot")
NODE_PATHS = ("etc/rancher", "var/lib/rancher", "oem", "etc/hostname")
"""What the k3s stand-in may read of a node (relative to its root)."""

_SANDBOX = r"""
set -eu
root=$1; drive=$2; label=$3
mount -t tmpfs -o mode=0755 tmpfs "$root"
mkdir -p "$root/bin" "$root/dev" "$root/tmp" "$root/run" "$root/oem" "$root/drive" "$root/home" "$root/root" \
  "$root/etc/systemd/system" "$root/etc/default" "$root/usr/local/bin" "$root/var/lib" "$root/system/oem"
touch "$root/bin/busybox" "$root/bin/yip" "$root/dev/null"
mount --bind "$BUSYBOX" "$root/bin/busybox"
mount --bind "$YIP" "$root/bin/yip"
mount --bind /dev/null "$root/dev/null"
mount --bind "$drive" "$root/drive"
for tool in $("$BUSYBOX" --list); do [ -e "$root/bin/$tool" ] || ln -s busybox "$root/bin/$tool"; done
rm -f "$root/bin/blkid" "$root/bin/mount"
printf '#!/bin/sh\n[ "$1" = -L ] && [ "$2" = %s ] && echo /drive && exit 0\nexit 2\n' "$label" \
  > "$root/bin/blkid"
printf '#!/bin/sh\n[ "$3" = /drive ] && exec busybox mount --bind /drive "$4"\nexec busybox mount "$@"\n' \
  > "$root/bin/mount"
chmod 0755 "$root/bin/blkid" "$root/bin/mount"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nadm:x:4:\nadmin:x:117:\n' > "$root/etc/group"
printf 'root:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
chmod 0600 "$root/etc/shadow"
printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
[ -s "$root.seed.tar" ] && tar -C "$root" -xf "$root.seed.tar"
cat > "$root/system/oem/00_datasource.yaml" <<YAML
stages:
  rootfs.before:
    - name: "Pull data from provider"
      datasource:
        providers: ["file"]
        path: "/drive/$USERDATA"
YAML
: > "$root.log"
for stage in $STAGES; do
  for s in "$stage.before" "$stage" "$stage.after"; do
    rc=0
    chroot "$root" /bin/yip -s "$s" /system/oem /oem >> "$root.log" 2>&1 || rc=$?
    echo "yip $s exit $rc" >> "$root.log"
    if [ "$s" = rootfs.before ] && [ -f "$root/run/config/userdata.yaml" ]; then
      cp "$root/run/config/userdata.yaml" "$root/oem/userdata.yaml"
    fi
  done
done
if [ -x "$root/usr/local/bin/cluster-api-provider-id" ]; then
  rc=0; chroot "$root" /usr/local/bin/cluster-api-provider-id >> "$root.log" 2>&1 || rc=$?
  echo "provider-id exit $rc" >> "$root.log"
fi
cd "$root"
paths=""
for p in $NODE_PATHS; do [ -e "$p" ] && paths="$paths $p"; done
tar --numeric-owner -cf "$root.tar" --files-from=/dev/null $paths
"""


class YipError(RuntimeError):
    """The sandbox itself failed (not yip refusing a document: that leaves files out)."""


def apply(
    drive: dict[str, bytes],
    *,
    config_2: bool = True,
    seed: dict[str, bytes] | None = None,
    paths: tuple[str, ...] = NODE_PATHS,
) -> tuple[dict[str, bytes], str]:
    """Run Kairos's boot stages with yip over a config drive's files (`drive`: path on the
    drive -> bytes, e.g. `openstack/latest/user_data`); returns the node's files under
    `paths` (absolute path -> bytes) and yip's log (exit codes included)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise YipError("busybox (Debian busybox-static) is needed: hack/system-deps.sh installs it")
    user_data = "openstack/latest/user_data" if config_2 else "user-data"
    with tempfile.TemporaryDirectory(prefix="yipnode-") as tmp:
        work = Path(tmp)
        for rel, data in drive.items():
            target = work / "drive" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (work / "drive").mkdir(exist_ok=True)
        root = work / "root"
        root.mkdir()
        if seed:
            with tarfile.open(f"{root}.seed.tar", "w") as tar:
                for path, data in seed.items():
                    info = tarfile.TarInfo(path.lstrip("/"))
                    info.size, info.mode = len(data), 0o600
                    tar.addfile(info, io.BytesIO(data))
        env = {
            **os.environ,
            "YIP": str(binaries.locate("yip")),
            "BUSYBOX": busybox,
            "USERDATA": user_data,
            "STAGES": " ".join(STAGES),
            "NODE_PATHS": " ".join(paths),
        }
        label = "config-2" if config_2 else "cidata"
        done = subprocess.run(
            ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child",
             "sh", "-c", _SANDBOX, "yipnode", str(root), str(work / "drive"), label],
            env=env, check=False, timeout=120, capture_output=True, text=True,
        )  # fmt: skip
        log = Path(f"{root}.log").read_text() if Path(f"{root}.log").exists() else ""
        if done.returncode != 0:
            raise YipError(f"the yip sandbox failed (exit {done.returncode}): {done.stderr[-2000:]}")
        files = {}
        with tarfile.open(f"{root}.tar") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    files["/" + member.name.removeprefix("./")] = extracted.read()
        return files, log


__all__ = ["NODE_PATHS", "STAGES", "YipError", "apply"]
