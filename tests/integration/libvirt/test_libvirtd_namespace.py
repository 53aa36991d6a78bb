"""A private libvirtd leaves nothing running behind it: not when the test run that owns
it is killed (SIGKILL, SIGTERM: no cleanup code runs), and not after a normal stop.
QEMU and virtlogd daemonise, so only the daemon's PID namespace takes them down."""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import closing
from pathlib import Path

import pytest

from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.processes import ManagedProcess, process_info
from tests.conftest import REPO
from tests.support import eventually

pytestmark = pytest.mark.integration

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""
"""A guest with an empty disk (from the daemon's pool, so QEMU's command line names
`root`): its firmware finds nothing to boot and QEMU keeps running."""

VOLUME_XML = "<volume><name>{name}.raw</name><capacity unit='MiB'>1</capacity></volume>"

OWNER = """
import json, sys, time
from pathlib import Path
from tests.integration.libvirt.test_libvirtd_namespace import boot_tiny_domain
from capi_c3os.dev.libvirtd import PrivateLibvirtd
daemon = PrivateLibvirtd(Path(sys.argv[1])).start()
boot_tiny_domain(daemon, "orphan")
print("RUNNING", json.dumps(daemon.namespace_processes()), flush=True)
time.sleep(3600)
"""
"""The owning test run: starts the daemon, boots a guest, says which processes it has,
then waits to be killed."""


def boot_tiny_domain(daemon: PrivateLibvirtd, name: str) -> None:
    with closing(daemon.connect()) as conn:
        pool = conn.storagePoolLookupByName(daemon.pool_name)
        volume = pool.createXML(VOLUME_XML.format(name=name), 0)
        conn.createXML(DOMAIN_XML.format(name=name, disk=volume.path()), 0)


def programs(pids: list[int]) -> dict[int, tuple[str, int]]:
    """PID -> (command name, start time) of those still alive and no zombie."""
    infos = [process_info(pid) for pid in pids]
    return {p.pid: (p.comm, p.start_time) for p in infos if p is not None and not p.zombie}


def assert_all_gone(daemon: PrivateLibvirtd, before: dict[int, tuple[str, int]]) -> None:
    def gone() -> bool:
        now = programs(list(before))
        return not any(now.get(pid) == seen for pid, seen in before.items())

    eventually(gone, "the daemon's processes to end", timeout=60, explain=lambda: str(programs(list(before))))
    assert daemon.leftover_processes() == []


def names(processes: dict[int, tuple[str, int]]) -> set[str]:
    return {"qemu" if comm.startswith("qemu-system") else comm for comm, _ in processes.values()}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_owner_leaves_no_qemu_or_virtlogd(tmp_path: Path, sig: signal.Signals) -> None:
    root = tmp_path / "daemon"
    owner = ManagedProcess(
        "owner", [sys.executable, "-c", OWNER, str(root)], tmp_path / "owner.log",
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )  # fmt: skip
    owner.start()
    try:
        owner.wait_until(lambda: "RUNNING" in owner.log_path.read_text(), "a guest running", timeout=120)
        line = next(li for li in owner.log_path.read_text().splitlines() if li.startswith("RUNNING"))
        before = programs(json.loads(line.split(" ", 1)[1]))
        assert {"qemu", "virtlogd", "libvirtd"} <= names(before), before
        assert owner.pid is not None
        os.kill(owner.pid, sig)
        assert_all_gone(PrivateLibvirtd(root), before)
    finally:
        owner.stop(sig=signal.SIGKILL)


def test_stop_ends_guests_and_daemons(tmp_path: Path) -> None:
    daemon = PrivateLibvirtd(tmp_path / "daemon").start()
    try:
        boot_tiny_domain(daemon, "stopped")
        before = programs(daemon.namespace_processes())
        assert {"qemu", "virtlogd", "libvirtd"} <= names(before), before
    finally:
        daemon.stop()
    assert_all_gone(daemon, before)
