"""Bare-metal machines for the k3s stand-in: the nodes of a test Ironic.

fake-hardware boots nothing, so what such a machine "receives" is exactly what Ironic
would write to it: the config-2 drive Ironic holds for a node (`read_configdrive`). A node
counts as up while it is `active` (not its power state: fake deploys leave the fake power
as it was, off); it is known by its node and instance
(`ironic/<node name>/<instance uuid>`), so a node deployed again for another machine is a
new machine to k3s, and an undeployed one is down (its Node goes Ready=False). The k3s
version such a machine runs is the one its image ships: the version its image URL's name
carries Kairos style (`...-k3sv1.34.1-k3s1...`), else the stand-in's default, handed to
k3s as the image's `/etc/kairos-release`. What k3s starts from is what yip leaves when it
runs Kairos's boot stages over that drive (`yipnode.apply`, once per instance).

Use: `k3s.sources.append(IronicMachines(server))`.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from capi_c3os.capi.versions import version_from_image_name
from capi_c3os.dev import yipnode
from capi_c3os.dev.ironic import IronicServer, read_configdrive
from capi_c3os.dev.k3s import Booted, shipped_k3s_version
from capi_c3os.dev.workload import STANDIN_K3S_VERSION as DEFAULT_K3S

PREFIX = "ironic/"


class IronicMachines:
    """A `k3s.MachineSource` over the deployed nodes of one Ironic."""

    def __init__(self, server: IronicServer) -> None:
        self.server = server
        self._nodes: dict[str, tuple[str, str]] = {}  # machine name -> (node, instance) uuid
        # What an instance received never changes: master each drive once (a subprocess).
        self._received: dict[str, dict[str, bytes]] = {}
        self._booted: dict[str, Booted] = {}
        self._lock = threading.Lock()

    def running(self) -> dict[str, bool]:
        fields = "uuid,name,provision_state,instance_uuid"
        nodes: list[dict[str, Any]] = self.server.request("GET", f"/v1/nodes?fields={fields}")["nodes"]
        up = {}
        with self._lock:
            for node in nodes:
                if not node.get("instance_uuid"):
                    continue
                name = f"{PREFIX}{node['name'] or node['uuid']}/{node['instance_uuid']}"
                self._nodes[name] = (node["uuid"], node["instance_uuid"])
                up[name] = node["provision_state"] == "active"
        return up

    def received(self, name: str) -> dict[str, bytes] | None:
        with self._lock:
            if name in self._received:
                return self._received[name]
            known = self._nodes.get(name)
        if known is None:
            return None
        node, instance = known
        try:
            user_data, meta_data = read_configdrive(self.server, node)
        except LookupError:  # undeployed meanwhile
            return None
        if meta_data.get("uuid") != instance:  # deployed again meanwhile: another machine's
            return None
        blocks = {
            "USER-DATA": user_data,
            "META-DATA": json.dumps(meta_data).encode(),
            "KAIROS-RELEASE": self._release(node),
        }
        with self._lock:
            self._received[name] = blocks
        return blocks

    def booted(self, name: str) -> Booted | None:
        """The machine's files after yip ran Kairos's boot stages over its drive."""
        with self._lock:
            if name in self._booted:
                return self._booted[name]
        received = self.received(name)
        if received is None:
            return None
        drive = {
            "openstack/latest/user_data": received["USER-DATA"],
            "openstack/latest/meta_data.json": received["META-DATA"],
        }
        files, _log = yipnode.apply(drive, config_2=True)
        booted = Booted(files, shipped_k3s_version(received["KAIROS-RELEASE"].decode()))
        with self._lock:
            self._booted[name] = booted
        return booted

    def _release(self, node: str) -> bytes:
        info = self.server.request("GET", f"/v1/nodes/{node}?fields=instance_info").get("instance_info") or {}
        version = version_from_image_name(str(info.get("image_source") or "")) or DEFAULT_K3S
        return f'KAIROS_SOFTWARE_VERSION_PREFIX="k3s"\nKAIROS_SOFTWARE_VERSION="{version}"\n'.encode()


__all__ = ["IronicMachines"]
