"""Pure rules of a pool of enrolled hosts: the labels a host's facts give it, which disk
a machine installs onto, which hosts a machine may claim and in what order, and how a
host's status moves on a claim, a release, a report of its agent and a registration.
No I/O: the backend and the registration endpoint apply these to what they read."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime

from capi_c3os.api.hosts import (
    HOST_LABEL_PREFIX,
    POOL_LABEL,
    C3osHost,
    C3osHostStatus,
    EnrolledMachine,
    HostClaim,
    HostCredential,
    HostDisk,
    HostHardware,
    HostReset,
    InstallDiskHints,
)

GIB = 1024**3

_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


def _label_value(text: str | None) -> str | None:
    """Free text (a product name) as a label value, or None when nothing is left."""
    if not text:
        return None
    value = _NOT_LABEL.sub("-", text.strip())[:63].strip("-_.")
    return value or None


def host_labels(hardware: HostHardware, pool: str) -> dict[str, str]:
    """The labels a host's facts give its C3osHost (all under host.c3os.io/)."""
    disks = install_candidates(hardware)
    labels = {
        POOL_LABEL: pool,
        "arch": hardware.cpu.arch,
        "cpus": str(hardware.cpu.threads),
        "cores": str(hardware.cpu.cores),
        "memory-gib": str(hardware.memory_mib // 1024),
        "disks": str(len(disks)),
        "largest-disk-gib": str(max((d.size_bytes for d in disks), default=0) // GIB),
        "nics": str(len(hardware.nics)),
        "tpm": "true" if hardware.tpm.present else "false",
    }
    for key, text in (("manufacturer", hardware.system.manufacturer), ("product", hardware.system.product)):
        value = _label_value(text)
        if value is not None:
            labels[key] = value
    return {key if "/" in key else HOST_LABEL_PREFIX + key: value for key, value in labels.items()}


def is_host_label(key: str) -> bool:
    return key.startswith(HOST_LABEL_PREFIX)


def install_candidates(hardware: HostHardware) -> list[HostDisk]:
    """Disks one may install onto: never removable media (the registration stick)."""
    return [disk for disk in hardware.disks if not disk.removable]


def choose_disk(hardware: HostHardware, hints: InstallDiskHints | None) -> HostDisk | None:
    """The install target: of the non-removable disks matching every hint, the smallest
    (ties by name), so the rule is the same on every run and for every reader."""
    matching = [d for d in install_candidates(hardware) if _disk_matches(d, hints)]
    return min(matching, key=lambda d: (d.size_bytes, d.name), default=None)


def _disk_matches(disk: HostDisk, hints: InstallDiskHints | None) -> bool:
    if hints is None:
        return disk.size_bytes > 0
    return (
        disk.size_bytes > 0
        and (hints.device_name is None or disk.name == hints.device_name)
        and (hints.model is None or disk.model == hints.model)
        and (hints.serial is None or disk.serial == hints.serial)
        and (hints.min_size_gib is None or disk.size_bytes >= hints.min_size_gib * GIB)
        and (hints.rotational is None or disk.rotational == hints.rotational)
    )


def host_pool(host: C3osHost) -> str | None:
    return host.status.pool if host.status is not None else None


def is_idle(host: C3osHost) -> bool:
    status = host.status
    return (
        status is not None and status.phase == "Available" and status.claim is None and status.reset is None
    )


def claimable(host: C3osHost, pool: str, wants: EnrolledMachine | None) -> HostDisk | None:
    """The disk `host` would install onto for a machine that `wants` this, when the host
    may be claimed by it: in the pool, accepted, idle, matching the selector, with a
    fitting disk. None otherwise."""
    status = host.status
    if status is None or status.hardware is None or host_pool(host) != pool:
        return None
    if not host.spec.accepted or not is_idle(host):
        return None
    selector = wants.host_selector if wants is not None else None
    if selector is not None and not selector.matches(host.metadata.labels or {}):
        return None
    return choose_disk(status.hardware, wants.install_disk if wants is not None else None)


def claim_order(machine: str, hosts: Sequence[C3osHost]) -> list[C3osHost]:
    """Candidates in an order stable per machine but different between machines: many
    machines claiming at once mostly try different hosts first (fewer conflicts), and a
    retry of one machine tries the same host again."""

    def rank(host: C3osHost) -> str:
        return hashlib.sha256(f"{machine}\0{host.metadata.name}".encode()).hexdigest()

    return sorted(hosts, key=rank)


def claimed_by(hosts: Sequence[C3osHost], machine: str) -> list[C3osHost]:
    """The hosts `machine` holds, oldest claim first (there is at most one, unless
    someone edited a host's status by hand)."""
    mine = [h for h in hosts if h.status is not None and h.status.claim and h.status.claim.machine == machine]
    return sorted(mine, key=lambda h: (h.status.claim.time, h.metadata.name or ""))  # type: ignore[union-attr]


def resetting_for(hosts: Sequence[C3osHost], machine: str) -> list[C3osHost]:
    return [
        h
        for h in hosts
        if h.status is not None
        and h.status.phase == "Resetting"
        and h.status.reset is not None
        and h.status.reset.machine == machine
    ]


# --- status transitions -------------------------------------------------------------------


def claim(
    status: C3osHostStatus, machine: str, claim_id: str, disk: str, now: datetime, cluster: str | None = None
) -> C3osHostStatus:
    return status.model_copy(
        update={
            "phase": "Claimed",
            "claim": HostClaim(machine=machine, cluster=cluster, id=claim_id, install_disk=disk, time=now),
            "reason": "Claimed",
            "message": f"claimed by C3osMachine {machine}",
        }
    )


def release(status: C3osHostStatus, now: datetime) -> C3osHostStatus:
    """The machine is being deleted: the host must wipe what it installed."""
    assert status.claim is not None
    return status.model_copy(
        update={
            "phase": "Resetting",
            "claim": None,
            "reset": HostReset(machine=status.claim.machine, id=status.claim.id, time=now),
            "reason": "Released",
            "message": f"released by C3osMachine {status.claim.machine}: waiting for the host to reset",
        }
    )


def lose(status: C3osHostStatus, timeout: float) -> C3osHostStatus:
    return status.model_copy(
        update={
            "phase": "Lost",
            "reason": "ResetTimeout",
            "message": f"the host did not report its reset within {timeout:.0f}s; it must reset "
            "before it is claimed again (it is asked to when it registers)",
        }
    )


REPORTS = ("installing", "installed", "booted", "install-failed", "no-matching-disk", "reset-done")
"""What a host's agent may report (`event` of a report)."""


class StaleReportError(Exception):
    """A report about a claim or reset the host no longer has (from before a release)."""


def apply_report(
    status: C3osHostStatus, event: str, claim_id: str, message: str, now: datetime
) -> C3osHostStatus:
    """The host's status after its agent reported `event` for the claim (or reset)
    `claim_id`. Raises StaleReportError for a report about something else, and ValueError for
    an event that does not fit the host's phase."""
    update: dict[str, object] = {"last_report_time": now, "message": message or None}
    if event == "reset-done":
        if status.reset is None or status.reset.id != claim_id or status.phase not in ("Resetting", "Lost"):
            raise StaleReportError
        update |= {"phase": "Available", "reset": None, "reason": "ResetDone"}
        return status.model_copy(update=update)
    if status.claim is None or status.claim.id != claim_id:
        raise StaleReportError
    phase = status.phase
    if event == "installing" and phase in ("Claimed", "Installing"):
        update |= {"phase": "Installing", "reason": "Installing"}
    elif event == "installed" and phase in ("Claimed", "Installing", "Installed"):
        update |= {"phase": "Installed", "reason": "Installed"}
    elif event == "booted" and phase in ("Installed", "Provisioned"):
        update |= {"phase": "Provisioned", "reason": "Booted"}
    elif event in ("install-failed", "no-matching-disk") and phase in ("Claimed", "Installing"):
        reason = "InstallFailed" if event == "install-failed" else "NoMatchingDisk"
        update |= {"phase": "Failed", "reason": reason}
    else:
        raise ValueError(f"{event} does not follow phase {phase}")
    return status.model_copy(update=update)


def register(
    status: C3osHostStatus | None,
    hardware: HostHardware,
    pool: str,
    digest: str,
    now: datetime,
) -> C3osHostStatus:
    """The host's status after it registered (again). A new host is Available; a Lost
    one must reset first (it may still hold what its machine installed); a claimed or
    resetting one keeps its claim or reset (the new credential carries on with it)."""
    current = status or C3osHostStatus()
    phase = current.phase or "Available"
    reason = "Registered"
    if phase == "Lost":
        phase, reason = "Resetting", "ResetRequired"
    return current.model_copy(
        update={
            "phase": phase,
            "pool": pool,
            "hardware": hardware,
            "credential": HostCredential(sha256=digest, time=now),
            "registrations": (current.registrations or 0) + 1,
            "last_registration_time": now,
            "reason": reason,
            "message": None,
        }
    )
