"""What a Node's kubelet version means against its Machine's spec.version, and CAPI's
status.versions ordering (capi/versions.py, reconcilers/node_version.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from capi_c3os.capi.versions import image_tag, matches, status_versions, version_from_image_name
from capi_c3os.reconcilers import node_version

NOW = datetime(2026, 12, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("wanted", "running", "same"),
    [
        ("v1.33.4+k3s1", "v1.33.4+k3s1", True),
        ("v1.33.4", "v1.33.4+k3s2", True),  # no build wanted: any k3s build of it
        ("1.33.4+k3s1", "v1.33.4+k3s1", True),  # CAPI adds the v; k3s always has it
        ("v1.34.1+k3s1", "v1.33.4+k3s1", False),
        ("v1.33.4+k3s2", "v1.33.4+k3s1", False),
        ("v1.34.0-rc1+k3s1", "v1.34.0+k3s1", False),
        ("v1.33.4", "v1.33.40", False),
    ],
)
def test_a_node_matches_its_machine_by_semver_and_k3s_build(wanted: str, running: str, same: bool) -> None:
    assert matches(wanted, running) is same


def test_status_versions_are_counted_and_ordered_oldest_first_with_build_tags() -> None:
    reported = ["v1.10.0+k3s1", "v1.9.3+k3s1", "v1.10.0+k3s10", "v1.10.0+k3s2", "v1.9.3+k3s1", "", "weird"]
    assert status_versions(reported) == [
        {"version": "v1.9.3+k3s1", "replicas": 2},
        {"version": "v1.10.0+k3s1", "replicas": 1},
        {"version": "v1.10.0+k3s2", "replicas": 1},
        {"version": "v1.10.0+k3s10", "replicas": 1},
        {"version": "weird", "replicas": 1},
    ]
    assert status_versions([]) == []


def test_kairos_image_names_carry_their_k3s_version() -> None:
    kairos = "quay.io/kairos/ubuntu:24.04-standard-amd64-generic-v3.2.1-k3sv1.33.4-k3s1"
    assert version_from_image_name(kairos) == "v1.33.4+k3s1"
    assert version_from_image_name("https://images.example/c3os-k3sv1.34.1-k3s2.qcow2") == "v1.34.1+k3s2"
    assert version_from_image_name("c3os-core.qcow2") is None
    assert image_tag("v1.34.1+k3s1") == "k3sv1.34.1-k3s1"


def machine(version: str | None, kubelet: str | None = None) -> dict[str, Any]:
    status = {"nodeInfo": {"kubeletVersion": kubelet}} if kubelet else {}
    return {"spec": {"version": version} if version else {}, "status": status}


def test_a_mismatch_names_the_image_and_both_versions() -> None:
    wanted = machine("v1.34.1+k3s1", "v1.33.4+k3s1")
    image = node_version.describe_image(
        {"image": {"url": "https://user:pw@images.example/c3os.qcow2?sig=secret", "checksum": "0" * 64}}
    )
    got = node_version.condition(wanted, node_version.reported_version(wanted), image, 3, NOW)
    assert (got["type"], got["status"], got["reason"]) == ("VersionMismatch", "True", "VersionMismatch")
    assert got["message"] == (
        "image https://images.example/c3os.qcow2 runs v1.33.4+k3s1, Machine wants v1.34.1+k3s1"
    )
    assert got["observedGeneration"] == 3


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (machine("v1.33.4+k3s1", "v1.33.4+k3s1"), "VersionMatches"),
        (machine("v1.33.4+k3s1"), "NodeVersionUnknown"),  # no Node yet: nothing to compare
        (machine(None, "v1.33.4+k3s1"), "NodeVersionUnknown"),
    ],
)
def test_no_mismatch_without_both_versions_or_when_they_match(obj: dict[str, Any], reason: str) -> None:
    got = node_version.condition(obj, node_version.reported_version(obj), "volume c3os", None, NOW)
    assert (got["status"], got["reason"]) == ("False", reason)


def test_an_image_is_named_by_url_or_volume() -> None:
    assert node_version.describe_image({"image": {"volume": "c3os-k3sv1.33.4-k3s1"}}) == (
        "volume c3os-k3sv1.33.4-k3s1"
    )
    assert node_version.describe_image(None) == "(unknown image)"


def template(image: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "cp-2"}, "spec": {"template": {"spec": {"image": image}}}}


def test_a_template_whose_image_name_ships_another_version_is_refused_before_any_replacement() -> None:
    tagged = template(
        {"url": "https://images.example/c3os-k3sv1.33.4-k3s1.qcow2?sig=x", "checksum": "0" * 64}
    )
    assert node_version.template_mismatch("v1.34.1+k3s1", tagged) == (
        "the image of template cp-2, https://images.example/c3os-k3sv1.33.4-k3s1.qcow2, ships v1.33.4+k3s1 "
        "by its name, the version is v1.34.1+k3s1: no server is replaced until the template names an image "
        "of v1.34.1+k3s1"
    )
    assert node_version.template_mismatch("v1.33.4+k3s1", tagged) is None
    assert node_version.template_mismatch("v1.33.4", tagged) is None
    # A name that says nothing: only the Node can tell.
    assert node_version.template_mismatch("v1.34.1+k3s1", template({"volume": "c3os"})) is None
    assert node_version.template_mismatch("v1.34.1+k3s1", None) is None
