"""The host agent (hack/c3os-agent) reads a host's facts from /proc and /sys: run the
built binary on a fake tree laid out as Linux does and check what it would register
against the endpoint's own model of the facts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from capi_c3os.api.hosts import HostHardware
from capi_c3os.dev import binaries
from tests.integration.enrolled.agent import hardware, host_tree

UUID = "4C4C4544-0031-4A10-8044-B4C04F4A3000"


def facts(root: Path) -> subprocess.CompletedProcess[str]:
    agent = binaries.locate("c3os-agent")
    return subprocess.run(
        [str(agent), "facts", "--root", str(root)], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_agent_reads_cpu_memory_disks_nics_system_and_tpm_and_leaves_out_virtual_devices(
    tmp_path: Path,
) -> None:
    done = facts(host_tree(tmp_path, UUID))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    # Exactly the facts the test agent sends, in the endpoint's model: the USB stick is
    # removable (by its path), loop/CD/bridge/loopback are not there, text is trimmed.
    assert HostHardware.model_validate(found) == HostHardware.model_validate(hardware(UUID.lower()))
    assert [d["name"] for d in found["disks"]] == ["/dev/nvme0n1", "/dev/sda"]


def test_a_tpm_1_2_a_tree_without_tpm_and_one_without_core_ids(tmp_path: Path) -> None:
    root = host_tree(tmp_path, UUID)
    (root / "sys/class/tpm/tpm0/tpm_version_major").unlink()
    (root / "sys/class/tpm/tpm0/caps").write_text("TCG version: 1.2\n")
    cpuinfo = root / "proc/cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nBogoMIPS\t: 50.00\n\n" for i in range(4)))
    found = json.loads(facts(root).stdout)
    assert found["tpm"] == {"present": True, "version": "1.2"}
    assert found["cpu"] == {"arch": "amd64", "cores": 4, "threads": 4}  # no model, cores = threads
    for path in sorted((root / "sys/class/tpm").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert json.loads(facts(root).stdout)["tpm"] == {"present": False}


def test_without_a_system_uuid_the_agent_says_why_and_fails(tmp_path: Path) -> None:
    root = host_tree(tmp_path, UUID)
    (root / "sys/class/dmi/id/product_uuid").unlink()  # unreadable without root on most kernels
    done = facts(root)
    assert done.returncode == 1
    assert "no system UUID" in done.stderr and "run as root?" in done.stderr
