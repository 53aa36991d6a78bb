"""The pure rules of a pool of enrolled hosts (backends/enrolled/pool.py): labels from
facts, the install disk, which hosts a machine may claim, and how reports move a host."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from capi_c3os.api.hosts import C3osHost, EnrolledMachine, HostHardware
from capi_c3os.backends.enrolled import pool

NOW = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 1024**3


def hardware(**changes: Any) -> HostHardware:
    facts: dict[str, Any] = {
        "cpu": {"arch": "amd64", "model": "Intel(R) Core(TM) i5", "cores": 4, "threads": 8},
        "memoryMiB": 16384,
        "disks": [
            {
                "name": "/dev/sda",
                "sizeBytes": 512 * GIB,
                "model": "SSD 860",
                "serial": "S1",
                "rotational": False,
            },
            {
                "name": "/dev/sdb",
                "sizeBytes": 128 * GIB,
                "model": "SSD 860",
                "serial": "S2",
                "rotational": False,
            },
            {"name": "/dev/sdc", "sizeBytes": 16 * GIB, "removable": True},
        ],
        "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56"}],
        "system": {
            "uuid": "4C4C4544-0000-1111-2222-333344445555",
            "manufacturer": "Intel Corp.",
            "product": "NUC 8",
        },
        "tpm": {"present": True, "version": "2.0"},
    }
    facts.update(changes)
    return HostHardware.model_validate(facts)


def host(name: str = "h1", accepted: bool = True, **status: Any) -> C3osHost:
    facts = hardware()
    return C3osHost.model_validate({
        "metadata": {"name": name, "namespace": "ns", "labels": pool.host_labels(facts, "shop"),
                     "resourceVersion": "1"},
        "spec": {"accepted": accepted},
        "status": {"phase": "Available", "pool": "shop", "hardware": facts.to_wire(), **status},
    })  # fmt: skip


def test_facts_become_labels_under_the_host_prefix() -> None:
    labels = pool.host_labels(hardware(), "shop")
    assert labels == {
        "host.c3os.io/pool": "shop",
        "host.c3os.io/arch": "amd64",
        "host.c3os.io/cpus": "8",
        "host.c3os.io/cores": "4",
        "host.c3os.io/memory-gib": "16",
        "host.c3os.io/disks": "2",  # the removable stick is not counted
        "host.c3os.io/largest-disk-gib": "512",
        "host.c3os.io/nics": "1",
        "host.c3os.io/tpm": "true",
        "host.c3os.io/manufacturer": "Intel-Corp",
        "host.c3os.io/product": "NUC-8",
    }


def test_the_install_disk_is_the_smallest_fitting_fixed_disk() -> None:
    facts = hardware()
    assert (d := pool.choose_disk(facts, None)) is not None and d.name == "/dev/sdb"
    hints = EnrolledMachine.model_validate({"installDisk": {"minSizeGiB": 200}}).install_disk
    assert (d := pool.choose_disk(facts, hints)) is not None and d.name == "/dev/sda"
    hints = EnrolledMachine.model_validate({"installDisk": {"deviceName": "/dev/sdc"}}).install_disk
    assert pool.choose_disk(facts, hints) is None  # removable: never an install target
    hints = EnrolledMachine.model_validate({"installDisk": {"serial": "S1"}}).install_disk
    assert (d := pool.choose_disk(facts, hints)) is not None and d.name == "/dev/sda"


@pytest.mark.parametrize(
    ("what", "candidate", "wants"),
    [
        ("not accepted", host(accepted=False), None),
        ("another pool", host(pool="other"), None),
        ("claimed", host(phase="Claimed", claim={"machine": "m", "id": "1", "installDisk": "/dev/sda",
                                                  "time": "2026-01-01T00:00:00Z"}), None),
        ("resetting", host(phase="Resetting", reset={"machine": "m", "id": "1",
                                                     "time": "2026-01-01T00:00:00Z"}), None),
        ("lost", host(phase="Lost"), None),
        ("selector", host(), {"hostSelector": {"matchLabels": {"host.c3os.io/arch": "arm64"}}}),
        ("no fitting disk", host(), {"installDisk": {"minSizeGiB": 1024}}),
    ],
)  # fmt: skip
def test_a_host_is_not_claimable_when(what: str, candidate: C3osHost, wants: dict[str, Any] | None) -> None:
    machine = EnrolledMachine.model_validate(wants) if wants is not None else None
    assert pool.claimable(candidate, "shop", machine) is None, what


def test_an_accepted_idle_matching_host_is_claimable() -> None:
    wants = EnrolledMachine.model_validate({"hostSelector": {"matchLabels": {"host.c3os.io/tpm": "true"}}})
    assert (disk := pool.claimable(host(), "shop", wants)) is not None and disk.name == "/dev/sdb"


def test_claim_order_is_stable_per_machine_and_differs_between_machines() -> None:
    hosts = [host(f"h{i}") for i in range(8)]
    first = [h.metadata.name for h in pool.claim_order("m1", hosts)]
    assert first == [h.metadata.name for h in pool.claim_order("m1", list(reversed(hosts)))]
    assert first != [h.metadata.name for h in pool.claim_order("m2", hosts)]


def test_reports_move_a_claimed_host_and_name_its_claim() -> None:
    status = pool.claim(host().status, "m", "c1", "/dev/sdb", NOW)  # type: ignore[arg-type]
    with pytest.raises(pool.StaleReportError):
        pool.apply_report(status, "installing", "c0", "", NOW)
    with pytest.raises(ValueError, match="booted does not follow phase Claimed"):
        pool.apply_report(status, "booted", "c1", "", NOW)
    status = pool.apply_report(status, "installing", "c1", "writing /dev/sdb", NOW)
    status = pool.apply_report(status, "installed", "c1", "", NOW)
    status = pool.apply_report(status, "booted", "c1", "", NOW)
    assert (status.phase, status.reason) == ("Provisioned", "Booted")


def test_a_failed_install_says_why() -> None:
    status = pool.claim(host().status, "m", "c1", "/dev/sdb", NOW)  # type: ignore[arg-type]
    status = pool.apply_report(status, "no-matching-disk", "c1", "no /dev/sdb", NOW)
    assert (status.phase, status.reason, status.message) == ("Failed", "NoMatchingDisk", "no /dev/sdb")


def test_a_released_host_is_available_only_after_it_reports_that_reset() -> None:
    status = pool.release(pool.claim(host().status, "m", "c1", "/dev/sdb", NOW), NOW)  # type: ignore[arg-type]
    assert (status.phase, status.claim) == ("Resetting", None)
    with pytest.raises(pool.StaleReportError):
        pool.apply_report(status, "installed", "c1", "", NOW)  # the claim is gone
    with pytest.raises(pool.StaleReportError):
        pool.apply_report(status, "reset-done", "c0", "", NOW)
    status = pool.apply_report(status, "reset-done", "c1", "", NOW)
    assert (status.phase, status.reset) == ("Available", None)


def test_a_lost_host_that_registers_again_must_reset_first() -> None:
    released = pool.release(pool.claim(host().status, "m", "c1", "/dev/sdb", NOW), NOW)  # type: ignore[arg-type]
    lost = pool.lose(released, 60)
    again = pool.register(lost, hardware(), "shop", "0" * 64, NOW)
    assert (again.phase, again.reason, again.reset) == ("Resetting", "ResetRequired", released.reset)
    assert again.registrations == 1


def test_registering_again_keeps_a_claim() -> None:
    claimed = pool.claim(host().status, "m", "c1", "/dev/sdb", NOW)  # type: ignore[arg-type]
    again = pool.register(claimed, hardware(), "shop", "1" * 64, NOW)
    assert again.claim == claimed.claim and again.phase == "Claimed"
    assert again.credential is not None and again.credential.sha256 == "1" * 64


@pytest.mark.parametrize(
    "placeholder", ["00000000-0000-0000-0000-000000000000", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"]
)
def test_a_placeholder_system_uuid_is_refused(placeholder: str) -> None:
    with pytest.raises(ValueError, match="firmware placeholder"):
        hardware(system={"uuid": placeholder})
