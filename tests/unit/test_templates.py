"""Static rules clusterctl imposes on templates/ (checked again live in the integration tests)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_c3os.api.crd import object_schema
from capi_c3os.api.infrastructure import C3osMachineTemplate

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
CLUSTERCLASSES = sorted(TEMPLATES.glob("clusterclass-*.yaml"))
CLUSTER_TEMPLATES = sorted(TEMPLATES.glob("cluster-template-*.yaml"))


def test_there_are_templates() -> None:
    assert CLUSTERCLASSES and CLUSTER_TEMPLATES


@pytest.mark.parametrize("path", CLUSTERCLASSES, ids=lambda p: p.name)
def test_clusterclass_files_have_no_variables_and_no_namespace(path: Path) -> None:
    text = path.read_text()
    assert "${" not in text, "clusterctl would try to substitute it (comments included)"
    for doc in yaml.safe_load_all(text):
        assert "namespace" not in doc["metadata"]
    assert path.name == f"clusterclass-{next(yaml.safe_load_all(text))['metadata']['name']}.yaml"


@pytest.mark.parametrize("path", CLUSTER_TEMPLATES, ids=lambda p: p.name)
def test_cluster_templates_use_only_common_or_c3os_variables(path: Path) -> None:
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", path.read_text()))
    common = {"CLUSTER_NAME", "NAMESPACE", "KUBERNETES_VERSION", "CONTROL_PLANE_MACHINE_COUNT",
              "WORKER_MACHINE_COUNT"}  # fmt: skip
    assert names - common, "a template with no C3OS_ variables configures nothing"
    assert all(n in common or n.startswith("C3OS_") for n in names), names - common


def _without_list_types(schema: Any) -> Any:
    """CAPI's variable schemas have no x-kubernetes-list-type; everything else carries over."""
    if isinstance(schema, dict):
        return {k: _without_list_types(v) for k, v in schema.items() if k != "x-kubernetes-list-type"}
    if isinstance(schema, list):
        return [_without_list_types(v) for v in schema]
    return schema


def test_the_enrolled_hosts_variable_validates_as_the_machine_crd_does() -> None:
    """The enrolledHosts variable becomes C3osMachine spec.backend.enrolled: with the same
    schema, CAPI refuses on the Cluster what our CRD would refuse on the machine."""
    docs = list(yaml.safe_load_all((TEMPLATES / "clusterclass-c3os-libvirt.yaml").read_text()))
    (variable,) = [v for v in docs[0]["spec"]["variables"] if v["name"] == "enrolledHosts"]
    schema = variable["schema"]["openAPIV3Schema"]
    crd_schema = object_schema(C3osMachineTemplate)["properties"]["spec"]["properties"]["template"]
    enrolled = crd_schema["properties"]["spec"]["properties"]["backend"]["properties"]["enrolled"]
    assert schema["properties"] == _without_list_types(enrolled["properties"])
    assert schema["type"] == enrolled["type"] and "required" not in enrolled
