"""The management plane the other integration tests stand on is the real thing."""

from __future__ import annotations

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
