"""The management plane the other integration tests stand on is the real thing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc
from kubernetes.client.exceptions import ApiException

from capi_c3os.dev import binaries
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from tests.support import eventually

pytestmark = pytest.mark.integration


def test_api_server_is_the_pinned_release_with_rbac_enforced(
    mgmt: ManagementPlane, k8s: Any, tmp_path: Path
) -> None:
    assert kc.VersionApi(k8s).get_code().git_version == binaries.KUBERNETES_VERSION
    nobody = mgmt.write_kubeconfig(tmp_path / "nobody", "nobody")
    with api_client(nobody) as client, pytest.raises(ApiException) as denied:
        kc.CoreV1Api(client).list_namespace()
    assert denied.value.status == 403


def test_garbage_collector_removes_dependents_of_a_deleted_owner(k8s: Any, namespace: str) -> None:
    core = kc.CoreV1Api(k8s)
    owner = core.create_namespaced_config_map(
        namespace, kc.V1ConfigMap(metadata=kc.V1ObjectMeta(name="owner"))
    )
    core.create_namespaced_config_map(
        namespace,
        kc.V1ConfigMap(
            metadata=kc.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    kc.V1OwnerReference(
                        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                    )
                ],
            )
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
            return False
        except ApiException as err:
            return bool(err.status == 404)

    eventually(dependent_gone, "the garbage collector to delete the dependent ConfigMap")


def test_servers_die_with_the_process_that_started_them(mgmt: ManagementPlane, tmp_path: Path) -> None:
    """A test run killed half-way (kill -9, CI timeout) leaves no etcd or kube-apiserver behind."""
    root = tmp_path / "orphan"
    code = (
        "import sys, time; from pathlib import Path; from capi_c3os.dev.mgmt import ManagementPlane\n"
        f"ManagementPlane(Path({str(root)!r})).start(controller_manager=False, capi=False)\n"
        "print('up', flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "up"
    pids = list(json.loads((root / "state.json").read_text())["pids"].values())
    assert pids and all(_alive(pid) for pid in pids)
    parent.kill()
    parent.wait()
    eventually(lambda: not any(_alive(pid) for pid in pids), "the servers to die with their parent")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; it waits only for its (new) parent to reap it.
    with contextlib.suppress(FileNotFoundError):
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False
