"""The manager image (Containerfile, built from Debian packages by hack/manager-image.sh)
run by podman the way the generated Deployment runs it: user 65532, read-only root with
only /tmp writable, no capabilities, the infrastructure provider's ServiceAccount (its
generated RBAC), on the host network against the test management plane. It must serve
probes and metrics, create and delete a machine on a private libvirtd reached over
qemu+ssh (the image's OpenSSH client, as uid 65532 with a read-only root) and one on an
Ironic site (python-ironicclient from the lock), and exit 0 on SIGTERM."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capi_c3os.dev import image
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.manager import Manager, start_manager
from tests.integration.ironic.conftest import ironic_server  # noqa: F401 - session fixture
from tests.integration.ironic.lab import CHECKSUM, IronicLab, new_resource_class
from tests.integration.libvirt.conftest import Capi
from tests.integration.libvirt.remote import RemoteHost
from tests.integration.libvirt.test_libvirt_machine import (
    BOOT_TIMEOUT,
    USER_DATA,
    delete_cluster_and_wait,
    domain_names,
    machine_spec,
)
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def manager_image() -> str:
    image.remove_orphans()  # of a run that was killed
    return image.build()  # `make prepare` built it: a cache hit


@pytest.fixture
def container(
    manager_image: str, infrastructure_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[tuple[str, Manager]]:
    name = f"capi-c3os-test-{uuid.uuid4().hex[:8]}"
    # Only the kubeconfig comes from the host, read-only; readable by 65532 as a
    # projected ServiceAccount token is in a Pod.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(infrastructure_kubeconfig.read_bytes())
    kubeconfig.chmod(0o644)
    command = image.run_argv(manager_image, name, [kubeconfig], [])
    manager = start_manager(
        kubeconfig, tmp_path / "image.log", providers="infrastructure",
        namespace=namespace, log_level="debug", command=command, name="image",
    )  # fmt: skip
    try:
        yield name, manager
    finally:
        manager.stop(timeout=60)
        image.remove(name)


def exec_in(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*image.PODMAN, "exec", name, *argv], capture_output=True, text=True, check=False, timeout=60
    )


def test_the_image_runs_as_the_infrastructure_manager(
    container: tuple[str, Manager],
    capi: Capi,
    remote: RemoteHost,
    standin_image: Any,
    ironic_server: IronicServer,  # noqa: F811
) -> None:
    name, manager = container
    manager.wait_ready(timeout=180)
    assert manager.status("/healthz") == 200
    assert manager.metric_sum("capi_c3os_ready") == 1

    # The manager's own process: not root, and the root filesystem refuses writes.
    assert exec_in(name, "id", "-u").stdout.strip() == "65532"
    write = exec_in(name, "touch", "/opt/manager/probe")
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write

    capi.create_secret("ssh", remote.ssh_credentials())
    site = {"libvirt": {"uri": remote.sshd.uri, "credentialsSecretRef": {"name": "ssh"}}}
    capi.create_cluster("img", site)
    capi.create_machine("img", "worker-0", machine_spec(remote.daemon, standin_image), USER_DATA)
    provisioned = eventually(
        lambda: capi.provisioned("worker-0"),
        "C3osMachine provisioned by the image",
        BOOT_TIMEOUT,
        explain=lambda: f"{capi.ready_message('worker-0')}\n{manager.tail()}",
    )
    domain = provisioned["status"]["backend"]["libvirt"]["domainName"]
    assert domain in domain_names(remote.daemon)
    assert capi.ready_message("worker-0").startswith(f"DomainRunning: domain {domain} is running")
    delete_cluster_and_wait(capi, "img", ["worker-0"])
    assert domain not in domain_names(remote.daemon)

    # Bare metal: a node of an Ironic site deployed and released by the image.
    lab = IronicLab(ironic_server)
    rc = new_resource_class()
    lab.enroll(1, rc)
    capi.create_cluster("bm", {"ironic": {"endpoint": ironic_server.url}})
    spec = {
        "backend": {"ironic": {"resourceClass": rc}},
        "image": {"url": "http://images.example/c3os.qcow2", "checksum": CHECKSUM},
    }
    capi.create_machine("bm", "metal-0", spec, USER_DATA)
    deployed = eventually(
        lambda: capi.provisioned("metal-0"),
        "C3osMachine on the Ironic site provisioned by the image",
        180,
        explain=lambda: f"{capi.ready_message('metal-0')}\n{manager.tail()}",
    )
    node_uuid = deployed["status"]["backend"]["ironic"]["nodeUUID"]
    assert lab.node(node_uuid)["provision_state"] == "active"
    delete_cluster_and_wait(capi, "bm", ["metal-0"])
    assert lab.node(node_uuid)["provision_state"] == "available"

    # SIGTERM to podman reaches the manager; podman exits with the manager's code.
    assert manager.stop(timeout=60) == 0, manager.tail()
