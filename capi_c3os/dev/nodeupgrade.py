"""The node side of an in-place A/B upgrade in the test world: what kubelet + containerd
do with our upgrade Job (INPLACE contract) on a stand-in VM, and what the node reports
after each boot.

- `Registry`: the stand-in OCI registry. `registry.c3os.test/c3os-standin:<tag>` is the
  container root hack/standin-image.sh built in `oci/<tag>` (an OS shipping the k3s
  version the tag names; `broken-<tag>`: one that does not come up). Anything else is not
  found, as an unpullable image.
- `job_problem`: a Job the stand-in kubelet refuses to run (not the contract's shape: only
  `capi_c3os.workload.upgrade.UPGRADE_SCRIPT`, the script kairos-operator v0.1.3 generates
  (internal/controller/nodeopupgrade_controller.go, active-only path) followed by a
  reboot, run as the contract's privileged pod).
- `run_upgrade`: runs the Job's container on the VM through its guest agent, with qemu-ga's
  own commands (guest-file-*, guest-exec): the image is "pulled" into the guest (files the
  node already holds are copied there, the rest written through the agent), then
  `c3os-run-container` runs the Job's command in it (chroot, hostPath / at /host, hostPID).
  The guest's `kairos-agent upgrade --source dir:/` writes the slots and the script reboots.
- `Boot` / `boots`: the boots a VM's console shows (boot id, /proc/cmdline, kairos-release,
  up or not), and `node_report`: the Node's labels, annotations and nodeInfo after a boot,
  as a kubelet and kairos-operator v0.1.3's node labeler (cmd/node-labeler/labeler.go:
  collectMetadata, detectBootState, sanitizeLabelValue) report them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt  # type: ignore[import-untyped]  # libvirt-python ships no type hints
import libvirt_qemu  # type: ignore[import-untyped]

from capi_c3os.workload.upgrade import UPGRADE_SCRIPT

REGISTRY = "registry.c3os.test/c3os-standin"
BOOT_MARK = "C3OS-STANDIN BOOT "
READY_MARK = "C3OS-STANDIN READY"
CMDLINE_MARK = "C3OS-STANDIN CMDLINE "
RELEASE = re.compile(r"----- BEGIN KAIROS-RELEASE -----\r?\n(.*?)----- END KAIROS-RELEASE -----", re.S)
UPGRADE_DONE = "C3OS-STANDIN KAIROS-AGENT Upgrade completed"
AGENT_ERROR = "C3OS-STANDIN KAIROS-AGENT ERROR "


class Registry:
    """The stand-in registry over the `oci/` directory of a built stand-in image."""

    def __init__(self, image_dir: Path) -> None:
        self.root = image_dir / "oci"

    def resolve(self, ref: str) -> Path | None:
        """The container root of `ref`, or None (not found: tag unknown, other registry or
        repository, or a digest reference, which the stand-in does not serve)."""
        repo, sep, tag = ref.rpartition(":")
        if not sep or repo != REGISTRY or "/" in tag or "@" in ref or tag in ("", ".", ".."):
            return None
        found = self.root / tag
        return found if (found / "boot").is_dir() else None


def job_problem(job: Any) -> str | None:
    """Why the stand-in kubelet would not run this upgrade Job (None: it is the contract's).
    `job`: a kubernetes V1Job."""
    pod = job.spec.template.spec
    containers = pod.containers or []
    if len(containers) != 1:
        return f"expected one container, found {len(containers)}"
    container = containers[0]
    if container.command != ["/bin/sh", "-c", UPGRADE_SCRIPT]:
        return "the container command is not the upgrade script kairos-operator generates"
    if not (container.security_context and container.security_context.privileged):
        return "the upgrade container must be privileged"
    if not pod.host_pid:
        return "the upgrade pod must share the host PID namespace (hostPID)"
    volumes = {v.name: v for v in pod.volumes or []}
    mounts = {m.mount_path: m.name for m in container.volume_mounts or []}
    host = volumes.get(mounts.get("/host", ""))
    if host is None or host.host_path is None or host.host_path.path != "/":
        return "the host's / must be mounted at /host (hostPath)"
    return None


# ------------------------------------------------------------------ what the node reports


@dataclass(frozen=True)
class Boot:
    """One boot of a stand-in VM, from its console."""

    boot_id: str
    cmdline: str
    release: dict[str, str]
    up: bool
    """The OS came up (READY): a kubelet would be running."""
    text: str


def boots(console: str) -> list[Boot]:
    """Every boot the console shows, in order (a guest reset appends to the same log)."""
    found = []
    starts = [m.start() for m in re.finditer(re.escape(BOOT_MARK), console)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(console)
        text = console[start:end]
        head = text.splitlines()
        boot_id = head[0][len(BOOT_MARK) :].strip()
        cmdline = next((line[len(CMDLINE_MARK) :] for line in head if line.startswith(CMDLINE_MARK)), "")
        match = RELEASE.search(text)
        release = parse_release(match[1]) if match else {}
        found.append(Boot(boot_id, cmdline.strip(), release, READY_MARK in text, text))
    return found


def parse_release(text: str) -> dict[str, str]:
    """An /etc/kairos-release (shell `KEY="value"` lines)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            values[key] = value.strip().strip('"')
    return values


def boot_state(cmdline: str) -> str:
    """kairos-operator v0.1.3 labeler.go detectBootState, the order kept."""
    if "COS_ACTIVE" in cmdline:
        return "active"
    if "COS_PASSIVE" in cmdline:
        return "passive"
    if any(s in cmdline for s in ("COS_RECOVERY", "COS_SYSTEM", "recovery-mode")):
        return "recovery"
    if any(s in cmdline for s in ("live:LABEL", "live:CDLABEL", "netboot")):
        return "livecd"
    return "unknown"


def sanitize_label_value(value: str) -> str:
    """labeler.go sanitizeLabelValue."""
    value = re.sub(r"[^a-zA-Z0-9\-_.]", "-", value).strip("-_.")
    return value[:63].strip("-_.") if len(value) > 63 else value


_LABELS = {"SOFTWARE_VERSION_PREFIX": "kairos.io/software-version-prefix",
           "SOFTWARE_VERSION": "kairos.io/software-version", "VARIANT": "kairos.io/variant"}  # fmt: skip
_ANNOTATIONS = {"NAME": "kairos.io/name", "VERSION": "kairos.io/version"}


def node_report(boot: Boot) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations the node labeler puts on the Node after `boot` (the subset
    of labeler.go's fields our kairos-release carries)."""
    labels = {"kairos.io/managed": "true", "kairos.io/boot-state": boot_state(boot.cmdline)}
    for key, name in _LABELS.items():
        if value := boot.release.get(f"KAIROS_{key}"):
            labels[name] = sanitize_label_value(value)
    annotations = {name: boot.release[f"KAIROS_{key}"] for key, name in _ANNOTATIONS.items()
                   if boot.release.get(f"KAIROS_{key}")}  # fmt: skip
    return labels, annotations


# ------------------------------------------------------------------ running the Job on the VM


class AgentError(RuntimeError):
    pass


class GuestAgent:
    """qemu-ga commands to one domain through libvirt."""

    def __init__(self, dom: libvirt.virDomain, timeout: int = 120) -> None:
        self.dom = dom
        self.timeout = timeout

    def command(self, execute: str, **arguments: Any) -> Any:
        body = {"execute": execute, **({"arguments": arguments} if arguments else {})}
        try:
            reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(body), self.timeout, 0)
        except libvirt.libvirtError as exc:
            raise AgentError(f"{execute}: {exc.get_error_message()}") from None
        answer = json.loads(reply)
        if "error" in answer:
            raise AgentError(f"{execute}: {answer['error'].get('desc')}")
        return answer.get("return")

    def write_file(self, path: str, data: bytes, chunk: int = 98304) -> None:
        handle = self.command("guest-file-open", path=path, mode="w")
        try:
            for start in range(0, len(data), chunk):
                piece = base64.b64encode(data[start : start + chunk]).decode()
                self.command("guest-file-write", handle=handle, **{"buf-b64": piece})
        finally:
            self.command("guest-file-close", handle=handle)

    def run(self, path: str, *args: str, wait: float = 300) -> tuple[int, str, str]:
        """guest-exec and poll guest-exec-status until it exits: (exit code, stdout, stderr)."""
        pid = self.command("guest-exec", path=path, arg=list(args), **{"capture-output": True})["pid"]
        deadline = time.monotonic() + wait
        while True:
            status = self.command("guest-exec-status", pid=pid)
            if status.get("exited"):
                out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
                return int(status.get("exitcode", -1)), out, err
            if time.monotonic() > deadline:
                raise AgentError(f"{path} did not exit within {wait:.0f}s")
            time.sleep(0.5)

    def start(self, path: str, *args: str) -> int:
        return int(self.command("guest-exec", path=path, arg=list(args), **{"capture-output": True})["pid"])


def manifest(rootfs: Path) -> list[tuple[str, str, str]]:
    """(sha256, octal mode, relative path) of every regular file of an image root."""
    entries = []
    for path in sorted(p for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        entries.append((digest, f"{path.stat().st_mode & 0o7777:o}", str(path.relative_to(rootfs))))
    return entries


def pull(agent: GuestAgent, rootfs: Path, workdir: str) -> int:
    """The image into `workdir/rootfs` on the guest; returns the bytes written through the
    agent (files the node did not hold already)."""
    entries = manifest(rootfs)
    code, _, err = agent.run("/bin/mkdir", "-p", f"{workdir}/rootfs")
    if code != 0:
        raise AgentError(f"cannot make {workdir} on the node: {err.strip()}")
    agent.write_file(f"{workdir}/manifest", "".join(f"{s} {m} {p}\n" for s, m, p in entries).encode())
    code, out, err = agent.run("/bin/c3os-image-pull", workdir)
    if code != 0:
        raise AgentError(f"image pull failed ({code}): {err.strip()}")
    sent = 0
    for line in out.splitlines():
        if line.startswith("MISSING "):
            rel = line.split(" ", 1)[1]
            data = (rootfs / rel).read_bytes()
            agent.write_file(f"{workdir}/rootfs/{rel}", data)
            sent += len(data)
    code, out, _ = agent.run("/bin/c3os-image-pull", "--check", workdir)
    if code != 0:
        raise AgentError(f"image pull incomplete: {out.strip()}")
    return sent


__all__ = [
    "REGISTRY",
    "AgentError",
    "Boot",
    "GuestAgent",
    "Registry",
    "boot_state",
    "boots",
    "job_problem",
    "manifest",
    "node_report",
    "pull",
    "sanitize_label_value",
]
