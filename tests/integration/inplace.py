"""What the in-place upgrade e2e tests share (libvirt VMs, Ironic bare metal): a cluster
with a MachineDeployment set up to upgrade in place, reading what CAPI says about a
Machine's update, moving the MachineDeployment to another release. Our manager serving
the extension is the fixture `extension_manager` (conftest.py)."""

from __future__ import annotations

from typing import Any

from tests.integration.libvirt.conftest import CAPI, INFRA, Capi

BOOT = ("bootstrap.cluster.x-k8s.io", "v1alpha1")
CP = ("controlplane.cluster.x-k8s.io", "v1alpha1")
IN_PROGRESS = "in-place-updates.internal.cluster.x-k8s.io/update-in-progress"


def create_cluster(
    capi: Capi,
    name: str,
    port: int,
    site: dict[str, Any],
    control_plane: dict[str, Any],
    worker_version: str,
    workers: int = 1,
) -> None:
    """C3osCluster `name` (endpoint 127.0.0.1:`port`, the one `site`), its C3osControlPlane
    (`control_plane`: the spec), the Cluster, and MachineDeployment `md` of `workers` workers
    on template `md-old`, its Machines labelled `pool: md`."""
    capi.create(INFRA, "c3osclusters", {
        "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": name},
        "spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": port}, "sites": [site]},
    })  # fmt: skip
    capi.create(CP, "c3oscontrolplanes", {
        "apiVersion": "/".join(CP), "kind": "C3osControlPlane", "metadata": {"name": name},
        "spec": control_plane,
    })  # fmt: skip
    capi.create(CAPI, "clusters", {
        "apiVersion": "/".join(CAPI), "kind": "Cluster", "metadata": {"name": name},
        "spec": {"infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osCluster", "name": name},
                 "controlPlaneRef": {"apiGroup": CP[0], "kind": "C3osControlPlane", "name": name}},
    })  # fmt: skip
    capi.create(BOOT, "c3osconfigtemplates", {
        "apiVersion": "/".join(BOOT), "kind": "C3osConfigTemplate", "metadata": {"name": "md"},
        "spec": {"template": {"spec": {}}},
    })  # fmt: skip
    capi.create(CAPI, "machinedeployments", {
        "apiVersion": "/".join(CAPI), "kind": "MachineDeployment", "metadata": {"name": "md"},
        "spec": {"clusterName": name, "replicas": workers, "selector": {"matchLabels": {"pool": "md"}},
                 # A Machine being updated counts as unavailable (CAPI): allow one, or CAPI adds one first.
                 "rollout": {"strategy": {"type": "RollingUpdate",
                                          "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}},
                 "template": {"metadata": {"labels": {"pool": "md"}}, "spec": {
                     "clusterName": name, "version": worker_version,
                     "bootstrap": {"configRef": {"apiGroup": BOOT[0], "kind": "C3osConfigTemplate",
                                                 "name": "md"}},
                     "infrastructureRef": {"apiGroup": INFRA[0], "kind": "C3osMachineTemplate",
                                           "name": "md-old"}}}},
    })  # fmt: skip


def control_plane_spec(version: str, replicas: int, template: str, **more: Any) -> dict[str, Any]:
    """A C3osControlPlane spec on C3osMachineTemplate `template`."""
    ref = {"apiGroup": INFRA[0], "kind": "C3osMachineTemplate", "name": template}
    return {
        "version": version,
        "replicas": replicas,
        "machineTemplate": {"spec": {"infrastructureRef": ref}},
        **more,
    }


class Machines:
    """The Machines of one test namespace; the worker is the MachineDeployment's."""

    def __init__(self, capi: Capi) -> None:
        self.capi = capi
        self.first_machines: dict[str, str] = {}
        """Name -> uid, as first made: every upgrade in place keeps exactly these."""

    def machines(self) -> list[dict[str, Any]]:
        return list(
            self.capi.custom.list_namespaced_custom_object(*CAPI, self.capi.namespace, "machines")["items"]
        )

    def machine_uids(self) -> dict[str, str]:
        return {m["metadata"]["name"]: m["metadata"]["uid"] for m in self.machines()}

    def worker(self) -> dict[str, Any]:
        (found,) = [m for m in self.machines() if "pool" in (m["metadata"].get("labels") or {})]
        return found

    def update_conditions(self) -> dict[str, list[tuple[str, str, str, str]]]:
        """Machine name -> its Ready, UpToDate and Updating conditions, for failure messages."""
        return {
            m["metadata"]["name"]: [(c["type"], c["status"], c.get("reason"), c.get("message", "")[:200])
                                    for c in (m.get("status") or {}).get("conditions") or []
                                    if c["type"] in ("Ready", "UpToDate", "Updating")]
            for m in self.machines()
        }  # fmt: skip


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    found = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in found if c["type"] == type_), {})


def in_place_update_failures(capi: Capi, machine: str) -> list[str]:
    """The messages of a Machine's InPlaceUpdateFailed Events: CAPI's condition says only
    that the hook failed, the extension's Event says why."""
    selector = f"involvedObject.name={machine},reason=InPlaceUpdateFailed"
    found = capi.core.list_namespaced_event(capi.namespace, field_selector=selector)
    return [e.message for e in found.items]


def roll_worker(capi: Capi, template_name: str, version: str, deployment: str = "md") -> None:
    """The MachineDeployment's machines to another template and version."""
    change = {
        "spec": {"template": {"spec": {"version": version, "infrastructureRef": {"name": template_name}}}}
    }
    deployments = (*CAPI, capi.namespace, "machinedeployments")
    capi.custom.patch_namespaced_custom_object(*deployments, deployment, change)
