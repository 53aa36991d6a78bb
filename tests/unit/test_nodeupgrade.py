"""The k3s stand-in's node side of an upgrade, host half: the boots a VM's console shows,
what the Node reports after each (kairos-operator v0.1.3's node labeler), the stand-in
registry's answers, and the Jobs the stand-in kubelet refuses to run."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.dev.nodeupgrade import (
    REGISTRY,
    Registry,
    boot_state,
    boots,
    job_problem,
    manifest,
    node_report,
    sanitize_label_value,
)
from capi_c3os.workload.upgrade import UPGRADE_SCRIPT, upgrade_job

RELEASE = (
    "----- BEGIN KAIROS-RELEASE -----\r\n"
    'KAIROS_NAME="c3os-standin"\r\nKAIROS_VERSION="v3.5.3-c3os-standin"\r\n'
    'KAIROS_SOFTWARE_VERSION_PREFIX="k3s"\r\nKAIROS_SOFTWARE_VERSION="{v}"\r\n'
    "----- END KAIROS-RELEASE -----\r\n"
)


def console_of(*parts: str) -> str:
    return "\x1bc\x1b[?7l" + "".join(parts)


def boot(boot_id: str, cmdline: str, version: str | None, up: bool) -> str:
    text = f"C3OS-STANDIN BOOTED\r\nC3OS-STANDIN BOOT {boot_id}\r\nC3OS-STANDIN CMDLINE {cmdline}\r\n"
    if version:
        text += RELEASE.format(v=version)
    return text + ("C3OS-STANDIN READY\r\n" if up else "")


def test_boots_splits_the_console_at_each_boot_and_reads_each_one_s_release_and_cmdline() -> None:
    console = console_of(
        boot("b1", "root=LABEL=COS_ACTIVE panic=5", "v1.33.4+k3s1", True),
        "C3OS-STANDIN KAIROS-AGENT Upgrade completed: active is v1.34.1+k3s1\r\nC3OS-STANDIN REBOOTING\r\n",
        boot("b2", "root=LABEL=COS_ACTIVE panic=5", None, False)
        + "C3OS-STANDIN BROKEN IMAGE: init exits\r\n",
        boot("b3", "root=LABEL=COS_PASSIVE upgrade_failure", "v1.33.4+k3s1", True),
    )
    found = boots(console)
    assert [(b.boot_id, b.up) for b in found] == [("b1", True), ("b2", False), ("b3", True)]
    assert found[0].release["KAIROS_SOFTWARE_VERSION"] == "v1.33.4+k3s1"
    assert "Upgrade completed" in found[0].text and "Upgrade completed" not in found[1].text
    assert found[2].cmdline == "root=LABEL=COS_PASSIVE upgrade_failure"
    assert boots("no markers: an image without them") == []


def test_a_boot_cut_short_is_not_up() -> None:
    (only,) = boots(boot("b1", "root=LABEL=COS_ACTIVE", "v1.33.4+k3s1", False)[:-10])
    assert not only.up


@pytest.mark.parametrize(
    ("cmdline", "state"),
    [
        ("BOOT_IMAGE=/active/vmlinuz root=LABEL=COS_ACTIVE", "active"),
        ("root=LABEL=COS_PASSIVE upgrade_failure", "passive"),
        ("root=LABEL=COS_RECOVERY", "recovery"),
        ("rd.live.image root=live:CDLABEL=COS_LIVE", "livecd"),
        ("console=ttyS0", "unknown"),  # directKernelBoot: no slots
        ("COS_PASSIVE COS_ACTIVE", "active"),  # labeler.go checks active first
    ],
)
def test_boot_state_is_the_labelers(cmdline: str, state: str) -> None:
    assert boot_state(cmdline) == state


def test_node_report_is_what_the_node_labeler_writes() -> None:
    (b,) = boots(boot("b1", "root=LABEL=COS_PASSIVE", "v1.34.1+k3s1", True))
    labels, annotations = node_report(b)
    assert labels == {
        "kairos.io/managed": "true",
        "kairos.io/boot-state": "passive",
        "kairos.io/software-version": "v1.34.1-k3s1",
        "kairos.io/software-version-prefix": "k3s",
    }
    assert annotations == {"kairos.io/name": "c3os-standin", "kairos.io/version": "v3.5.3-c3os-standin"}


def test_label_values_are_sanitized_as_the_labeler_does() -> None:
    assert sanitize_label_value("v1.34.1+k3s1") == "v1.34.1-k3s1"
    assert sanitize_label_value("+weird value+") == "weird-value"
    assert len(sanitize_label_value("x" * 62 + "+" + "y" * 10)) == 62


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    for tag in ("k3sv1.34.1-k3s1", "broken-k3sv1.34.1-k3s1"):
        (tmp_path / "oci" / tag / "boot").mkdir(parents=True)
    return Registry(tmp_path)


@pytest.mark.parametrize(
    ("ref", "found"),
    [
        (f"{REGISTRY}:k3sv1.34.1-k3s1", "k3sv1.34.1-k3s1"),
        (f"{REGISTRY}:broken-k3sv1.34.1-k3s1", "broken-k3sv1.34.1-k3s1"),
        (f"{REGISTRY}:k3sv9.9.9-k3s1", None),
        ("quay.io/kairos/c3os-standin:k3sv1.34.1-k3s1", None),
        (f"{REGISTRY}@sha256:{'a' * 64}", None),
        (f"{REGISTRY}:..", None),
        (f"{REGISTRY}:k3sv1.34.1-k3s1/../../etc", None),
        (REGISTRY, None),
    ],
)
def test_registry_serves_only_its_own_tags(registry: Registry, ref: str, found: str | None) -> None:
    resolved = registry.resolve(ref)
    assert (resolved.name if resolved else None) == found


JOB = upgrade_job("n", f"{REGISTRY}:k3sv1.34.1-k3s1", "")


def as_job(body: dict[str, Any]) -> kc.V1Job:
    api = kc.ApiClient()
    return api._ApiClient__deserialize(body, "V1Job")


def changed(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(JOB)
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(last) if last.isdigit() else last] = value
    return body


POD = "spec.template.spec"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (changed(f"{POD}.containers.0.command", ["/bin/sh", "-c", "rm -rf /host"]), "not the upgrade script"),
        (
            changed(f"{POD}.containers.0.command", ["/bin/sh", "-c", UPGRADE_SCRIPT + "echo more\n"]),
            "not the upgrade",
        ),
        (changed(f"{POD}.containers.0.securityContext", {"privileged": False}), "privileged"),
        (changed(f"{POD}.hostPID", False), "hostPID"),
        (changed(f"{POD}.volumes", [{"name": "host-root", "hostPath": {"path": "/etc"}}]), "hostPath"),
        (changed(f"{POD}.containers", []), "one container"),
    ],
)
def test_the_stand_in_kubelet_refuses_anything_but_the_contract_job(body: dict[str, Any], says: str) -> None:
    assert job_problem(as_job(JOB)) is None
    problem = job_problem(as_job(body))
    assert problem is not None and says in problem


def test_manifest_lists_regular_files_with_digest_and_mode(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz").write_bytes(b"k")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "busybox").write_bytes(b"b")
    (tmp_path / "bin" / "busybox").chmod(0o755)
    (tmp_path / "bin" / "sh").symlink_to("busybox")
    assert manifest(tmp_path) == [
        ("3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d", "755", "bin/busybox"),
        ("8254c329a92850f6d539dd376f4816ee2764517da5e0235514af433164480d7a", "644", "boot/vmlinuz"),
    ]
