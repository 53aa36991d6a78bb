"""C3osMachineTemplate: what one machine made from it offers, for the cluster autoscaler
scaling a MachineDeployment up from zero (`status.capacity`, `status.nodeInfo`).

Nothing else happens to a template: CAPI clones it, and the ClusterClass topology
controller server-side-applies it (the CRD has no defaults that would fight that).
Templates carry no conditions, so this writes only those two fields, and only when
they change.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from capi_c3os.api.infrastructure import C3osMachineSpec
from capi_c3os.capi.outcome import Outcome
from capi_c3os.capi.pause import is_paused
from capi_c3os.reconcilers.generic import fetch_owner_cluster
from capi_c3os.reconcilers.kube import Kube, Resource

LIBVIRT_ARCHITECTURE = "amd64"
"""The libvirt backend defines x86_64 domains."""


def offered(spec: C3osMachineSpec) -> dict[str, Any]:
    """`capacity` and `nodeInfo` for a machine with this spec. A bare-metal node has
    what its hardware has, unknown here: only the operating system is reported then."""
    status: dict[str, Any] = {"nodeInfo": {"operatingSystem": "linux"}}
    if spec.backend.libvirt is not None:
        status["capacity"] = {"cpu": str(spec.cpus), "memory": f"{spec.memory_mib}Mi"}
        status["nodeInfo"]["architecture"] = LIBVIRT_ARCHITECTURE
    return status


def reconcile(kube: Kube, resource: Resource, obj: dict[str, Any]) -> Outcome:
    if is_paused(obj, fetch_owner_cluster(kube, obj)):
        return Outcome.paused()
    try:
        spec = C3osMachineSpec.model_validate(
            ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        )
    except ValidationError as exc:
        return Outcome.error("InvalidSpec", f"spec.template.spec is invalid: {exc.errors()[0]['msg']}")
    wanted = offered(spec)
    current = obj.get("status") or {}
    if any(current.get(key) != value for key, value in wanted.items()):
        patch: dict[str, Any] = {"status": wanted}
        if "capacity" not in wanted and current.get("capacity") is not None:
            patch["status"]["capacity"] = None
        meta = obj["metadata"]
        kube.patch_status(resource, meta["namespace"], meta["name"], patch)
    return Outcome.ready()
