"""A seeded crash storm: C3osMachines (each with its Machine of one Cluster, as CAPI
makes them) created and deleted at random while our real manager is SIGKILLed and
restarted at random moments, against the real management plane + CAPI core and a real
site (Ironic with fake-hardware nodes, or a private libvirtd). Then the invariants of
issue 13: no duplicate (never two allocations, nodes, domains or volume sets for one
machine; each provisioned C3osMachine maps to exactly one backend resource), no leak
once everything is deleted (no allocation, node back to `available` without our marks,
no domain or volume of ours, no temporary file), every C3osMachine gone within a
deadline, and no bootstrap data in the managers' logs or the namespace's events.

The schedule (what is created and deleted, when the manager dies and for how long) is a
function of the seed; what the real servers do in between is not, so a seed reproduces
the schedule, not the interleaving. Bounded: `cycles` create/delete rounds, `kills`
SIGKILLs, every wait has a deadline. Used by tests/integration/*/test_*_storm.py (a CI
size) and bench/storm.py (bigger)."""

from __future__ import annotations

import base64
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import libvirt  # type: ignore[import-untyped]

from capi_c3os.backends.base import MachineIdentity
from capi_c3os.backends.ironic.instance import PROVIDER_ID
from capi_c3os.backends.libvirt import domain as dx
from capi_c3os.dev.libvirtd import PrivateLibvirtd
from capi_c3os.dev.manager import Manager
from tests.integration.ironic.lab import CHECKSUM, IronicLab
from tests.integration.libvirt.conftest import BASE_VOLUME, CAPI, INFRA, Capi

SEED_ENV = "CAPI_C3OS_STORM_SEED"
CLUSTER = "storm"
# Safety nets against hangs (a loaded 2-core CI machine), never performance assertions.
READY_TIMEOUT = 120.0
PROVISION_TIMEOUT = 300.0
DELETE_TIMEOUT = 300.0
SETTLE_TIMEOUT = 60.0
CHANGE_WAIT = 10.0
"""How long a kill waits for the backend to change (nothing in flight: it kills anyway)."""


def storm_seed(default: int | None = None) -> int:
    """$CAPI_C3OS_STORM_SEED, else `default`, else a fresh one (printed with every result).
    `make test` passes a fixed default so a red CI run can be replayed; the bench explores
    fresh seeds."""
    given = os.environ.get(SEED_ENV)
    if given:
        return int(given)
    return default if default is not None else random.SystemRandom().randrange(2**32)


def identity(namespace: str, name: str) -> MachineIdentity:
    return MachineIdentity(namespace, name, f"c3os://{namespace}/{name}")


class StormSite(Protocol):
    """One backend as the storm sees it: how to place a machine there, and what of the
    storm's namespace it holds."""

    @property
    def capacity(self) -> int:
        """Machines that may exist at once (Ironic: nodes less a spare)."""
        ...

    def site(self, credentials: str) -> dict[str, Any]:
        """The C3osCluster's site; `credentials` names the Secret `credentials()` fills."""
        ...

    def credentials(self, rng: random.Random) -> dict[str, bytes]:
        """The site's credentials (values that must never reach a log), or nothing."""
        ...

    def machine_spec(self) -> dict[str, Any]: ...

    def state(self) -> frozenset[str]:
        """Everything of the namespace's machines the backend holds, one string each
        (resource and its state): what the storm watches to kill at a change."""
        ...

    def duplicates(self) -> list[str]: ...

    def mapping(self, machine: dict[str, Any]) -> str | None:
        """Why a provisioned C3osMachine does not map to exactly one resource, or None."""
        ...

    def leaks(self) -> list[str]: ...

    def plant_leak(self, name: str) -> Callable[[], None]:
        """Leave behind what a leaking deletion of machine `name` would; returns its
        cleanup (a check of the checks: `leaks()` must see it)."""
        ...


# ------------------------------------------------------------------ Ironic


@dataclass
class IronicStormSite:
    lab: IronicLab
    namespace: str
    resource_class: str
    nodes: int

    @property
    def capacity(self) -> int:
        return self.nodes - 1  # a spare node: a second allocation would find it

    def site(self, credentials: str) -> dict[str, Any]:
        # HTTP basic credentials, which this Ironic (noauth) ignores: still sent with
        # every request, so they must never reach a log.
        return {
            "ironic": {
                "endpoint": self.lab.server.url,
                "authType": "basic",
                "credentialsSecretRef": {"name": credentials},
            }
        }

    def credentials(self, rng: random.Random) -> dict[str, bytes]:
        return {"username": b"storm", "password": f"storm-password-{rng.getrandbits(64):016x}".encode()}

    def machine_spec(self) -> dict[str, Any]:
        return {
            "backend": {"ironic": {"resourceClass": self.resource_class}},
            "image": {"url": "http://images.example/c3os.qcow2", "checksum": CHECKSUM},
        }

    def _read(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The class's allocations and nodes: two requests (the storm polls this)."""
        nodes = self.lab.admin.node.list(resource_class=self.resource_class, detail=True, limit=0)
        return self.lab.allocations_for_class(self.resource_class), [n.to_dict() for n in nodes]

    def state(self) -> frozenset[str]:
        allocations, nodes = self._read()
        return frozenset(
            [f"allocation {a['name']} {a['state']}" for a in allocations]
            + [
                f"node {n['uuid']} {n['provision_state']} {n['instance_uuid']} {sorted(n['extra'])}"
                for n in nodes
                if n["provision_state"] != "available" or n["instance_uuid"] or n["extra"]
            ]
        )

    def duplicates(self) -> list[str]:
        """Per machine, at most one allocation and one node, counted both by the names
        the backend derives from the machine and by the machine tags it writes (so a
        second allocation under another name counts too)."""
        allocations, nodes = self._read()
        counts = {
            "allocations named": Counter(a["name"] for a in allocations),
            "allocations tagged": Counter(a["extra"].get(PROVIDER_ID) for a in allocations),
            "nodes with instance_uuid": Counter(n["instance_uuid"] for n in nodes),
            "nodes tagged": Counter(n["extra"].get(PROVIDER_ID) for n in nodes),
        }
        return [
            f"{count} {what} {key}"
            for what, counter in counts.items()
            for key, count in counter.items()
            if key and count > 1
        ]

    def mapping(self, machine: dict[str, Any]) -> str | None:
        ident = identity(self.namespace, machine["metadata"]["name"])
        allocations, nodes = self._read()
        node_uuid = ((machine.get("status") or {}).get("backend") or {}).get("ironic", {}).get("nodeUUID")
        holding = [n["uuid"] for n in nodes if n["instance_uuid"] == ident.uuid]
        named = [a["uuid"] for a in allocations if a["name"] == ident.resource_name]
        if holding != [node_uuid] or len(named) != 1:
            return f"{ident.name}: status node {node_uuid}, nodes holding it {holding}, allocations {named}"
        return None

    def leaks(self) -> list[str]:
        allocations, nodes = self._read()
        found = [f"allocation {a['name']} ({a['state']})" for a in allocations]
        for node in nodes:
            marks = sorted(k for k in node["extra"] if k.startswith("c3os_"))
            if (
                node["provision_state"] != "available"
                or node["target_provision_state"]
                or node["instance_uuid"]
                or node["maintenance"]
                or marks
            ):
                found.append(
                    f"node {node['uuid']}: {node['provision_state']}->{node['target_provision_state']}, "
                    f"instance_uuid {node['instance_uuid']}, maintenance {node['maintenance']}, extra {marks}"
                )
        return found

    def plant_leak(self, name: str) -> Callable[[], None]:
        ident = identity(self.namespace, name)
        allocation = self.lab.admin.allocation.create(
            resource_class=self.resource_class, name=ident.resource_name
        )
        return lambda: self.lab.admin.allocation.delete(allocation.uuid)


# ------------------------------------------------------------------ libvirt


@dataclass
class LibvirtStormSite:
    daemon: PrivateLibvirtd
    namespace: str
    standin: Path
    capacity: int = 3

    def site(self, credentials: str) -> dict[str, Any]:
        return {"libvirt": {"uri": self.daemon.uri}}  # a local socket: no credentials

    def credentials(self, rng: random.Random) -> dict[str, bytes]:
        return {}

    def machine_spec(self) -> dict[str, Any]:
        """The stand-in kernel booted directly, 1 vCPU, 256 MiB: the machine is
        provisioned once its domain runs, whether or not the guest has booted."""
        return {
            "backend": {
                "libvirt": {
                    "directKernelBoot": {
                        "kernel": str(self.standin / "vmlinuz"),
                        "initrd": str(self.standin / "initrd.img"),
                        "cmdline": "console=ttyS0 quiet",
                    }
                }
            },
            "image": {"volume": BASE_VOLUME},
            "cpus": 1,
            "memoryMiB": 256,
            "diskGiB": 1,
        }

    def _read(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Domains and volumes of the namespace, by the provider ID they belong to (a
        domain by its tag, else by its name; a volume by its name)."""
        domains: dict[str, list[str]] = {}
        volumes: dict[str, list[str]] = {}
        with self.daemon.connect() as conn:
            for dom in conn.listAllDomains(0):
                try:
                    xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dx.METADATA_NS)
                except libvirt.libvirtError:
                    xml = None
                tag = dx.parse_tag(xml)
                if tag is not None and tag.namespace == self.namespace:
                    domains.setdefault(tag.provider_id, []).append(dom.name())
                elif dom.name().startswith(f"{self.namespace}-"):
                    domains.setdefault(f"untagged {dom.name()}", []).append(dom.name())
            # No refresh: the backend makes its volumes through libvirt, which lists them at
            # once (a refresh fails when a volume vanishes during its scan).
            pool = conn.storagePoolLookupByName(self.daemon.pool_name)
            for name in pool.listVolumes():
                owner = dx.identity_of_volume(name)
                if owner is not None and owner.namespace == self.namespace:
                    volumes.setdefault(owner.provider_id, []).append(name)
                elif name.startswith(f"{self.namespace}-"):
                    volumes.setdefault(f"undecodable {name}", []).append(name)
        return domains, volumes

    def state(self) -> frozenset[str]:
        domains, volumes = self._read()
        return frozenset([f"domain {d}" for ds in domains.values() for d in ds] + [
            f"volume {v}" for vs in volumes.values() for v in vs
        ])  # fmt: skip

    def duplicates(self) -> list[str]:
        domains, volumes = self._read()
        found = [f"{owner}: domains {names}" for owner, names in domains.items() if len(names) > 1]
        for owner, names in volumes.items():
            ident = dx.identity_of_volume(names[0])
            expected = (
                {dx.disk_volume_name(ident), dx.config_drive_volume_name(ident)}
                if ident is not None
                else set()
            )
            if not set(names) <= expected:
                found.append(f"{owner}: volumes {sorted(names)}")
        return found

    def mapping(self, machine: dict[str, Any]) -> str | None:
        ident = identity(self.namespace, machine["metadata"]["name"])
        domains, volumes = self._read()
        status = ((machine.get("status") or {}).get("backend") or {}).get("libvirt", {})
        expected = {dx.disk_volume_name(ident), dx.config_drive_volume_name(ident)}
        mine = domains.get(ident.provider_id, [])
        if mine != [status.get("domainName")] or set(volumes.get(ident.provider_id, [])) != expected:
            return (
                f"{ident.name}: status domain {status.get('domainName')}, domains {mine}, "
                f"volumes {sorted(volumes.get(ident.provider_id, []))}"
            )
        return None

    def leaks(self) -> list[str]:
        domains, volumes = self._read()
        return [f"domain {d}" for ds in domains.values() for d in ds] + [
            f"volume {v}" for vs in volumes.values() for v in vs
        ]

    def plant_leak(self, name: str) -> Callable[[], None]:
        volume = dx.disk_volume_name(identity(self.namespace, name))
        with self.daemon.connect() as conn:
            conn.storagePoolLookupByName(self.daemon.pool_name).createXML(
                dx.volume_xml(volume, 1 << 20, "raw"), 0
            )

        def remove() -> None:
            with self.daemon.connect() as conn:
                conn.storagePoolLookupByName(self.daemon.pool_name).storageVolLookupByName(volume).delete(0)

        return remove


# ------------------------------------------------------------------ the storm


@dataclass(frozen=True)
class StormPlan:
    seed: int
    cycles: int
    kills: int
    batch: int = 2
    """Machines created per cycle, at most."""
    max_pause: float = 3.0
    """Longest random wait before an action or a kill, seconds."""
    max_downtime: float = 1.5
    """Longest time the manager stays dead, seconds."""
    delete_chance: float = 0.4
    """Chance of each machine to be deleted in a cycle (the rest live on, through more
    kills, to the final round)."""

    def __post_init__(self) -> None:
        if not 0 <= self.kills <= self.points:
            raise ValueError(
                f"{self.kills} kills do not fit {self.points} kill points ({self.cycles} cycles)"
            )

    @property
    def points(self) -> int:
        """Moments a kill may follow: each creation, each deletion, the final deletion."""
        return 2 * self.cycles + 1


@dataclass
class StormReport:
    plan: StormPlan
    backend: str
    created: int = 0
    deleted_early: int = 0
    """Deleted before the final round."""
    deleted_provisioned: int = 0
    """Deleted once provisioned (the others mid-provisioning, or before it began)."""
    kills: list[str] = field(default_factory=list)
    """How each kill was triggered."""
    crashes: list[str] = field(default_factory=list)
    """Managers found dead that the storm had not killed."""
    duplicates: list[str] = field(default_factory=list)
    mappings: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    """C3osMachines still there after the deletion deadline, or never provisioned."""
    leaks: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        return [*self.crashes, *self.duplicates, *self.mappings, *self.stuck, *self.leaks, *self.secrets]

    def summary(self) -> str:
        return (
            f"storm {self.backend} seed={self.plan.seed} (replay: {SEED_ENV}={self.plan.seed}): "
            f"{self.plan.cycles} cycles, {self.created} machines ({self.deleted_early} deleted early, "
            f"{self.deleted_provisioned} of all deleted once provisioned), "
            f"{len(self.kills)} kills, {self.seconds:.0f}s; duplicates {len(self.duplicates)}, "
            f"mapping errors {len(self.mappings)}, stuck {len(self.stuck)}, leaks {len(self.leaks)}, "
            f"secrets in logs {len(self.secrets)}, unplanned crashes {len(self.crashes)}"
        )

    def explain(self) -> str:
        return "\n".join([self.summary(), "kills: " + "; ".join(self.kills), *self.problems])


def user_data(token: str) -> bytes:
    return f"#cloud-config\nk3s:\n  enabled: true\n  args: [--token={token}]\n".encode()


class StartManager(Protocol):
    def __call__(self, name: str, env: dict[str, str] | None = None) -> Manager: ...


class Storm:
    """One storm in one namespace; `start_manager(name, env)` starts our manager scoped
    to the namespace and returns it unwaited. Its TMPDIR is `workdir`/tmp (checked empty
    at the end)."""

    def __init__(
        self,
        plan: StormPlan,
        backend: str,
        capi: Capi,
        site: StormSite,
        start_manager: StartManager,
        workdir: Path,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.capi = capi
        self.site = site
        self.start_manager = start_manager
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.report = StormReport(plan, backend)
        self.managers: list[Manager] = []
        self.live: list[str] = []
        self.tokens: list[str] = []
        self.secrets: list[str] = []
        """Secret values of the site's credentials."""
        self.kill_points = set(self.rng.sample(range(plan.points), plan.kills))
        self.down: float | None = None
        """The downtime of a killed manager not restarted yet."""
        self.point = 0

    # --- the manager

    @property
    def manager(self) -> Manager:
        return self.managers[-1]

    def restart(self) -> None:
        self.managers.append(
            self.start_manager(f"storm-{len(self.managers)}", env={"TMPDIR": str(self.tmpdir)})
        )

    def ensure_ready(self) -> None:
        """The current manager leading and ready; one that died by itself is a finding
        (and is replaced)."""
        self.restart_if_down()
        if not self.manager.alive():
            self.report.crashes.append(
                f"manager {len(self.managers) - 1} died unkilled:\n{self.manager.tail()}"
            )
            self.restart()
        self.manager.wait_ready(READY_TIMEOUT)

    def kill_point(self) -> None:
        """Maybe (per the schedule) SIGKILL the manager: after a random pause, as soon as
        the backend changes (mid-request, mid-deploy, mid-teardown), or after a random
        pause without waiting for it to be ready first (mid-startup, mid-resync)."""
        point, self.point = self.point, self.point + 1
        self.restart_if_down()
        if point not in self.kill_points:
            time.sleep(self.rng.uniform(0, self.plan.max_pause / 3))
            return
        trigger = self.rng.choice(["pause", "change", "startup"])
        pause = self.rng.uniform(0, self.plan.max_pause)
        downtime = self.rng.uniform(0, self.plan.max_downtime)
        if trigger != "startup":
            self.ensure_ready()
        if trigger == "change":
            before = self.site.state()
            deadline = time.monotonic() + CHANGE_WAIT
            while self.site.state() == before and time.monotonic() < deadline:
                time.sleep(0.05)
            what = "at a backend change" if self.site.state() != before else "after no backend change"
        else:
            time.sleep(pause)
            what = f"after {pause:.1f}s" + (" (ready or not)" if trigger == "startup" else "")
        self.manager.stop(sig=signal.SIGKILL)
        held = len(self.site.state())
        # Down for a while, or until after the next creation or deletion (which the next
        # manager then finds done: a machine deleted while its provisioning was cut short).
        later = self.rng.random() < 0.5
        self.down = downtime
        down = "until after the next action" if later else f"down {downtime:.1f}s"
        self.report.kills.append(f"point {point} {what}, {held} backend resources, {down}")
        self.log(f"kill {len(self.report.kills)}: {self.report.kills[-1]}")
        self.check_duplicates()
        if not later:
            self.restart_if_down()

    def restart_if_down(self) -> None:
        if self.down is not None:
            time.sleep(self.down)
            self.down = None
            self.restart()

    # --- machines

    def create(self, name: str) -> None:
        token = f"storm-secret-{self.rng.getrandbits(64):016x}"
        self.tokens.append(token)
        self.capi.create_machine(CLUSTER, name, self.site.machine_spec(), user_data(token))
        self.live.append(name)
        self.report.created += 1

    def delete(self, name: str) -> None:
        self.report.deleted_provisioned += self.capi.provisioned(name) is not None
        self.capi.delete(CAPI, "machines", name)
        self.capi.core.delete_namespaced_secret(f"{name}-bootstrap", self.capi.namespace)
        self.live.remove(name)

    def check_duplicates(self) -> None:
        """Each duplicate once (by what it is, not how many: the first count seen)."""
        seen = {d.split(" ", 1)[1] for d in self.report.duplicates}
        for found in self.site.duplicates():
            if found.split(" ", 1)[1] not in seen:
                self.report.duplicates.append(found)

    def remaining(self) -> list[str]:
        return [m["metadata"]["name"] for m in self.capi.custom.list_namespaced_custom_object(
            *INFRA, self.capi.namespace, "c3osmachines")["items"]]  # fmt: skip

    def wait(self, done: Callable[[], list[str]], timeout: float) -> list[str]:
        """Poll `done` (what is still missing) until it is empty or the deadline passes;
        what is still missing then. Checks duplicates along the way."""
        deadline = time.monotonic() + timeout
        while (missing := done()) and time.monotonic() < deadline:
            self.check_duplicates()
            time.sleep(0.5)
        return missing

    # --- the whole storm

    def run(self) -> StormReport:
        started = time.monotonic()
        self.restart()
        self.ensure_ready()
        credentials = self.site.credentials(self.rng)
        self.secrets += [v.decode() for v in credentials.values() if v.startswith(b"storm-")]
        if credentials:
            self.capi.create_secret(f"{CLUSTER}-site", credentials)
        self.capi.create_cluster(CLUSTER, self.site.site(f"{CLUSTER}-site"))
        for cycle in range(self.plan.cycles):
            room = self.site.capacity - len(self.live)
            for i in range(min(self.rng.randint(1, self.plan.batch), room)):
                self.create(f"s{cycle}-{i}")
            self.check_duplicates()
            self.kill_point()
            doomed = [name for name in self.live if self.rng.random() < self.plan.delete_chance]
            for name in doomed:
                self.delete(name)
            self.report.deleted_early += len(doomed)
            self.check_duplicates()
            self.kill_point()
        self.finish()
        self.report.seconds = time.monotonic() - started
        return self.report

    def finish(self) -> None:
        """The machines left provisioned and each mapped to one resource; all deleted
        (through one more kill point) and gone; nothing left behind."""
        self.ensure_ready()
        if not self.live:  # every machine was deleted early: one to check the mapping with
            self.create("final")
        survivors = list(self.live)
        unprovisioned = self.wait(
            lambda: [n for n in survivors if not self.capi.provisioned(n)], PROVISION_TIMEOUT
        )
        self.report.stuck += [f"{n} not provisioned: {self.capi.ready_message(n)}" for n in unprovisioned]
        for name in survivors:
            machine = self.capi.provisioned(name)
            if machine is not None and (problem := self.site.mapping(machine)):
                self.report.mappings.append(problem)
        for name in survivors:
            self.delete(name)
        self.kill_point()
        self.ensure_ready()
        stuck = self.wait(self.remaining, DELETE_TIMEOUT)
        self.report.stuck += [f"{n} not deleted: {self.capi.ready_message(n)}" for n in stuck]
        self.report.leaks += self.wait(self.site.leaks, SETTLE_TIMEOUT)
        self.check_duplicates()
        # A clean stop removes what the last manager had in use; the rest was left by the
        # killed ones.
        code = self.manager.stop()
        if code != 0:
            self.report.crashes.append(f"the last manager exited {code} on SIGTERM:\n{self.manager.tail()}")
        self.check_temporary_files()
        self.check_secrets()

    def check_temporary_files(self) -> None:
        """Nothing left in the managers' TMPDIR: what a killed manager left (a download's
        or its kubeconfig files' directory) is removed by the next one, and the last one
        stopped cleanly."""
        for path in sorted(self.tmpdir.rglob("*")):
            self.report.leaks.append(f"temporary file {path}")

    def check_secrets(self) -> None:
        """No bootstrap data (its token, or the whole of it base64-encoded) and no site
        credential in any manager's log or any event of the namespace."""
        needles = self.secrets + self.tokens + [base64.b64encode(user_data(t)).decode() for t in self.tokens]
        texts = {f"log of {m.process.name}": m.log_path.read_text(errors="replace") for m in self.managers}
        events = self.capi.core.list_namespaced_event(self.capi.namespace).items
        texts["events"] = "\n".join(f"{e.reason} {e.message}" for e in events)
        for where, text in texts.items():
            for needle in needles:
                if needle in text:
                    self.report.secrets.append(f"a bootstrap or credential value in the {where}")
                    break

    def check_the_checks(self) -> None:
        """A leak planted after the storm is seen (the leak check is not vacuous)."""
        remove = self.site.plant_leak("planted")
        try:
            seen = self.site.leaks()
        finally:
            remove()
        assert seen, f"a planted leak went unseen by {type(self.site).__name__}.leaks()"
        assert not self.site.leaks()


def run_clean(storm: Storm) -> StormReport:
    """The storm run in a test: every kill made, no problem, and the leak check shown
    to see a planted leak."""
    report = storm.run()
    print(report.summary())
    assert not report.problems, report.explain()
    assert len(report.kills) == storm.plan.kills, report.kills
    storm.check_the_checks()
    return report
