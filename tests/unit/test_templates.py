"""Static rules clusterctl imposes on templates/ (checked again live in the integration tests)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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
