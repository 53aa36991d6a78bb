"""Choosing another provider's API version from its CRD's contract label, as CAPI does."""

from __future__ import annotations

import pytest

from capi_c3os.reconcilers.contract import ContractError, crd_name, latest_version, plural


def test_the_newest_version_in_kubernetes_order_wins() -> None:
    labels = {"cluster.x-k8s.io/v1beta2": "v1alpha3_v1beta1_v1alpha10"}
    assert latest_version(labels, "x") == "v1beta1"
    assert latest_version({"cluster.x-k8s.io/v1beta2": "v2beta1_v1"}, "x") == "v1"
    assert latest_version({"cluster.x-k8s.io/v1beta2": "v1alpha2_v1alpha10"}, "x") == "v1alpha10"


def test_the_v1beta2_contract_label_wins_over_v1beta1() -> None:
    labels = {"cluster.x-k8s.io/v1beta1": "v1beta1", "cluster.x-k8s.io/v1beta2": "v1alpha1"}
    assert latest_version(labels, "x") == "v1alpha1"
    assert latest_version({"cluster.x-k8s.io/v1beta1": "v1alpha4"}, "x") == "v1alpha4"


def test_a_crd_without_a_contract_label_is_a_readable_error() -> None:
    with pytest.raises(ContractError, match=r"foos.example.test has no cluster.x-k8s.io/v1beta2 or"):
        latest_version({"cluster.x-k8s.io/v1beta2": ""}, "foos.example.test")


def test_crd_names_follow_the_kind() -> None:
    assert crd_name("infrastructure.cluster.x-k8s.io", "C3osMachineTemplate") == (
        "c3osmachinetemplates.infrastructure.cluster.x-k8s.io"
    )
    assert plural("Proxy") == "proxies"
    assert plural("Gateway") == "gateways"
    assert plural("MetalBox") == "metalboxes"
