"""Helpers for tests against the real Ironic: enrolling nodes the way an operator does,
machine intents, and driving the non-blocking backend to a phase."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ironicclient import client as ironic_client
from keystoneauth1 import http_basic, noauth, session
from keystoneauth1.identity import v3

from capi_c3os.api.infrastructure import IronicMachine, IronicSite, MachineImage, Site
from capi_c3os.backends.base import (
    BackendError,
    MachineIdentity,
    MachineIntent,
    Phase,
    Progress,
    SiteCredentials,
)
from capi_c3os.dev.ironic import IronicServer
from tests.support import eventually

CHECKSUM = "ab" * 32
USER_DATA = b"#cloud-config\nk3s:\n  enabled: true\n  args: [--token=super-secret-join-token]\n"


@dataclass
class IronicLab:
    server: IronicServer
    admin: Any = field(init=False)

    def __post_init__(self) -> None:
        auth: Any = noauth.NoAuth(endpoint=self.server.url)
        if self.server.http_basic:
            user, password = self.server.http_basic
            auth = http_basic.HTTPBasicAuth(endpoint=self.server.url, username=user, password=password)
        if self.server.keystone:
            operator = self.server.keystone.operator
            auth = v3.Password(
                auth_url=operator.auth_url,
                username=operator.username,
                password=operator.password,
                user_domain_name=operator.user_domain_name,
                system_scope="all",
            )
        verify: bool | str = str(self.server.ca_file) if self.server.ca_file else True
        self.admin = ironic_client.Client(
            "1",
            endpoint_override=self.server.url,
            session=session.Session(auth=auth, verify=verify),
            os_ironic_api_version="1.89",
            max_retries=0,
        )

    # --- what an operator does ---------------------------------------------------------------

    def enroll(
        self, count: int, resource_class: str, traits: Iterable[str] = (), owner: str | None = None
    ) -> list[str]:
        """Nodes enrolled, managed and provided until `available`, with power off (allocations
        skip nodes whose power state is unknown); `owner` is a Keystone project id."""
        uuids = []
        for _ in range(count):
            node = self.admin.node.create(
                driver="fake-hardware",
                name=f"{resource_class}-{uuid.uuid4().hex[:6]}",
                resource_class=resource_class,
                deploy_interface="fake",
                **({"owner": owner} if owner else {}),
            )
            if traits:
                self.admin.node.set_traits(node.uuid, list(traits))
            uuids.append(node.uuid)
        for node_uuid in uuids:
            self.admin.node.set_provision_state(node_uuid, "manage")
        self.wait_states(uuids, "manageable")
        for node_uuid in uuids:
            self.admin.node.set_provision_state(node_uuid, "provide")
        self.wait_states(uuids, "available")
        for node_uuid in uuids:
            self.admin.node.set_power_state(node_uuid, "off")
        # Power changes are asynchronous: until Ironic records it, allocations skip the node.
        eventually(
            lambda: all(self.node(u)["power_state"] == "power off" for u in uuids), "nodes powered off", 60
        )
        return uuids

    def wait_states(self, uuids: list[str], state: str) -> None:
        def settled() -> bool:
            nodes = [self.node(u) for u in uuids]
            return all(n["provision_state"] == state and not n["target_provision_state"] for n in nodes)

        eventually(settled, f"nodes {uuids} to be {state}", timeout=60)

    def node(self, ident: str) -> dict[str, Any]:
        result: dict[str, Any] = self.admin.node.get(ident).to_dict()
        return result

    def allocations_named(self, name: str) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.admin.allocation.list(limit=0) if a.name == name]

    def allocations_for_class(self, resource_class: str) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.admin.allocation.list(resource_class=resource_class, limit=0)]

    def nodes_of_class(self, resource_class: str) -> list[dict[str, Any]]:
        return [self.node(n.uuid) for n in self.admin.node.list(resource_class=resource_class, limit=0)]

    # --- what the reconciler hands the backend -----------------------------------------------

    def site(self, max_concurrent: int = 20, **overrides: Any) -> Site:
        ironic = IronicSite(endpoint=self.server.url, max_concurrent_provisioning=max_concurrent, **overrides)
        return Site(name="rack-1", ironic=ironic)

    def intent(
        self,
        name: str,
        machine: IronicMachine,
        site: Site | None = None,
        image: MachineImage | None = None,
        credentials: SiteCredentials | None = None,
        network_config: dict[str, Any] | None = None,
        cluster: str = "edge/c1",
        provisioned: bool = False,
    ) -> MachineIntent:
        namespace = "edge"
        identity = MachineIdentity(namespace, name, f"c3os://{namespace}/{name}")
        return MachineIntent(
            identity=identity,
            site=site or self.site(),
            credentials=credentials or SiteCredentials(),
            image=image or MachineImage(url="http://images.example/c3os.qcow2", checksum=CHECKSUM),
            cpus=2,
            memory_mib=4096,
            disk_gib=20,
            hostname=name,
            user_data=USER_DATA,
            meta_data={
                "instance-id": identity.uuid,
                "local-hostname": name,
                "provider-id": identity.provider_id,
            },
            network_config=network_config,
            ironic=machine,
            cluster=cluster,
            provisioned=provisioned,
        )


def drive(
    step: Callable[[], Progress],
    until: set[Phase],
    seen: list[Progress] | None = None,
    timeout: float = 90.0,
    every: float = 0.2,
) -> Progress:
    """Call a backend step again and again (sooner than requeue_after, to keep tests short)
    until it reports one of `until` (or FAILED); every Progress is appended to `seen`."""
    log = seen if seen is not None else []
    wanted = until | {Phase.FAILED}

    def probe() -> Progress | None:
        try:
            progress = step()
        except BackendError as err:
            # What the reconciler does too: a retryable failure is a condition and a requeue.
            if err.retry_after is None:
                raise
            log.append(Progress(Phase.PROVISIONING, err.reason, err.message, requeue_after=err.retry_after))
            return None
        log.append(progress)
        assert progress.requeue_after is not None or progress.phase in wanted, progress
        return progress if progress.phase in wanted else None

    def explain() -> str:
        return "; ".join(f"{p.reason}: {p.message}" for p in log[-3:])

    return eventually(
        probe, f"phase in {sorted(p.value for p in until)}", timeout=timeout, every=every, explain=explain
    )


def settle(step: Callable[[], Progress], timeout: float = 60.0) -> Progress:
    """Call a step until it is past Ironic's own short waits (allocation, busy node)."""

    def probe() -> Progress | None:
        progress = step()
        return None if progress.reason in ("AllocatingNode", "IronicBusy") else progress

    return eventually(probe, "a step past allocation", timeout=timeout, every=0.1)


def new_resource_class() -> str:
    """Each test enrolls nodes of its own class, so tests sharing one Ironic never meet."""
    return f"rc-{uuid.uuid4().hex[:8]}"
