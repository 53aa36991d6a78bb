"""The kube-vip static pod we write on servers is a Pod a real kube-apiserver accepts
with strict field validation (a misspelt field would be dropped by the kubelet and the
VIP never announced)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from capi_c3os.bootstrap.cloudconfig import KUBE_VIP_MANIFEST, Role, render_document
from tests.unit.test_bootstrap_cloudconfig import FULL_SPEC, inputs

pytestmark = pytest.mark.integration


def _pod() -> dict[str, Any]:
    doc = render_document(inputs(Role.INIT_SERVER, FULL_SPEC))
    files = {f["path"]: f for step in doc["stages"]["initramfs"] for f in step.get("files", [])}
    pod: dict[str, Any] = yaml.safe_load(files[KUBE_VIP_MANIFEST]["content"])
    return pod


def test_the_kube_vip_static_pod_passes_strict_validation(k8s: Any, namespace: str) -> None:
    pod = _pod()
    pod["metadata"]["namespace"] = namespace
    pods = DynamicClient(k8s).resources.get(api_version="v1", kind="Pod")
    strict = [("dryRun", "All"), ("fieldValidation", "Strict")]
    pods.create(body=pod, namespace=namespace, query_params=strict)
    pod["spec"]["containers"][0]["securityContext"]["capabilitys"] = {}
    with pytest.raises(ApiException) as rejected:
        pods.create(body=pod, namespace=namespace, query_params=strict)
    assert "capabilitys" in str(rejected.value.body)
