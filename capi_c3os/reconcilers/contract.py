"""Which API version of another provider's kind to use: CAPI's rule.

A provider labels each CRD with the CAPI contract versions it implements and, for each,
its API versions: `cluster.x-k8s.io/v1beta2: v1alpha1_v1beta1`. CAPI (internal/contract
version.go, GetAPIVersion) reads the CRD named `<plural>.<group>`, takes the newest
contract label it is compatible with (v1beta2, then v1beta1) and from it the newest API
version in Kubernetes order (v1 > v1beta2 > v1beta1 > v1alpha1). We do the same for the
infrastructure template a control plane clones, so another provider's kinds work.
"""

from __future__ import annotations

import re

from capi_c3os.capi.metadata import CONTRACT_LABEL_PREFIX, CORE_VERSION
from capi_c3os.reconcilers.kube import Kube, Resource

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition")
COMPATIBLE_CONTRACTS = (CORE_VERSION, "v1beta1")
"""Newest first; CAPI v1.14 still accepts v1beta1-labelled providers."""

_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


class ContractError(RuntimeError):
    """The kind's CRD is missing or carries no usable contract label; the message says
    which and what to do."""


def version_order(version: str) -> tuple[int, int, int, str]:
    """Sort key in Kubernetes order: GA above beta above alpha, then by numbers; versions
    that are not Kubernetes-like sort lowest (alphabetically), as in Kubernetes."""
    match = _KUBE_VERSION.match(version)
    if not match:
        return (-1, 0, 0, version)
    major, stage, minor = match.groups()
    return ({"alpha": 0, "beta": 1, None: 2}[stage], int(major), int(minor or 0), "")


def plural(kind: str) -> str:
    """The resource name CAPI expects for a kind (lower case, English plural)."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    return lower + "s"


def crd_name(group: str, kind: str) -> str:
    return f"{plural(kind)}.{group}"


def latest_version(labels: dict[str, str], crd: str) -> str:
    for contract in COMPATIBLE_CONTRACTS:
        versions = [v for v in (labels.get(CONTRACT_LABEL_PREFIX + contract) or "").split("_") if v]
        if versions:
            return max(versions, key=version_order)
    wanted = " or ".join(CONTRACT_LABEL_PREFIX + c for c in COMPATIBLE_CONTRACTS)
    raise ContractError(
        f"CustomResourceDefinition {crd} has no {wanted} label naming its API versions "
        "(a Cluster API provider labels its CRDs so)"
    )


def resource_for(kube: Kube, group: str, kind: str) -> Resource:
    """The Resource to use for `kind` of `group`, at the version its CRD's contract label
    names. Raises ContractError when the CRD is missing or unlabelled."""
    name = crd_name(group, kind)
    crd = kube.get_cluster_scoped(CRDS, name)
    if crd is None:
        raise ContractError(f"CustomResourceDefinition {name} does not exist; is its provider installed?")
    labels = (crd.get("metadata") or {}).get("labels") or {}
    return Resource(group, latest_version(labels, name), plural(kind), kind)
