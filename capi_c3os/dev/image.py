"""The manager image (Containerfile), built by hack/manager-image.sh from Debian packages
only (cached), and `podman run` of it the way the generated Deployment runs it: user
65532, read-only root with a writable /tmp only (the Deployment's emptyDir), no
capabilities, no new privileges.

Podman here runs as root. Two settings make it start containers in sandboxes where the
default does not: runc with the cgroupfs manager (crun refuses hybrid cgroup layouts),
and explicit, lowered open-file and process limits (podman otherwise asks for limits above
the caller's hard limits, which needs CAP_SYS_RESOURCE). Both are harmless elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
# Which process started a container: a test run killed outright leaves its container
# running under conmon; the next run removes it (`remove_orphans`).
OWNER_LABEL = "capi-c3os.owner-pid"


def build() -> str:
    """The image reference (localhost/capi-c3os-manager:<hash of the inputs>), or
    $CAPI_C3OS_MANAGER_IMAGE when set (an image built elsewhere, already in podman's store)."""
    if given := os.environ.get("CAPI_C3OS_MANAGER_IMAGE"):
        return given
    out = subprocess.run(
        [str(REPO / "hack" / "manager-image.sh")], check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


def run_argv(image: str, name: str, mounts: Sequence[Path], args: Sequence[str]) -> list[str]:
    """`podman run` in the foreground (SIGTERM to it reaches the manager, its exit code is
    the manager's) on the host network; each of `mounts` read-only at the same path."""
    argv = [
        *PODMAN, "run", "--rm", "--name", name, "--network", "host",
        "--user", "65532:65532", "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
        "--label", f"{OWNER_LABEL}={os.getpid()}",
    ]  # fmt: skip
    for path in mounts:
        argv += ["--volume", f"{path}:{path}:ro"]
    return [*argv, image, *args]


def remove(name: str) -> None:
    """Remove the container if it is still there (a test that died before stopping it)."""
    subprocess.run([*PODMAN, "rm", "--force", "--ignore", name], check=False, capture_output=True)


def remove_orphans() -> list[str]:
    """Remove containers whose starting process is gone; returns their names."""
    listed = subprocess.run(
        [*PODMAN, "ps", "--all", "--filter", f"label={OWNER_LABEL}", "--format", "json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    orphans = []
    for container in json.loads(listed.stdout or "[]"):
        owner = int((container.get("Labels") or {}).get(OWNER_LABEL, "0"))
        if owner and not Path(f"/proc/{owner}").exists():
            orphans.extend(container["Names"])
    for name in orphans:
        remove(name)
    return orphans
