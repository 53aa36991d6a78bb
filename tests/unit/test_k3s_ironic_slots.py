"""Bare-metal machines of the k3s stand-in keep two slots per machine (file level: nothing
boots there) and upgrade them as the stand-in image's kairos-agent and boot assessment do
on a VM: new OS into active, active into passive (unless booted passive), reboot into
active, or back into passive when the new OS does not come up."""

from __future__ import annotations

from pathlib import Path

import pytest

from capi_c3os.dev.k3s_ironic import IronicMachines, replaces_init, upgrade_image
from capi_c3os.dev.nodeupgrade import boot_state

NAME = "ironic/node-1/instance-1"


@pytest.fixture
def machines() -> IronicMachines:
    source = IronicMachines(server=None)  # type: ignore[arg-type]  # nothing asked of Ironic here
    release = b'KAIROS_SOFTWARE_VERSION_PREFIX="k3s"\nKAIROS_SOFTWARE_VERSION="v1.33.4+k3s1"\n'
    source._received[NAME] = {"USER-DATA": b"", "META-DATA": b"{}", "KAIROS-RELEASE": release}
    return source


def version(source: IronicMachines) -> tuple[str, str]:
    boot = source.boot(NAME)
    assert boot is not None and boot.up
    return boot_state(boot.cmdline), boot.release["KAIROS_SOFTWARE_VERSION"]


def test_broken_images_replace_init_and_good_ones_do_not(tmp_path: Path) -> None:
    broken = upgrade_image(tmp_path / "b", "v1", broken=True)
    assert replaces_init((broken / "boot" / "release.img").read_bytes())
    assert not replaces_init((upgrade_image(tmp_path / "g", "v1") / "boot" / "release.img").read_bytes())


def test_upgrade_boots_the_new_os_from_active_and_a_broken_one_falls_back_to_passive(
    machines: IronicMachines, tmp_path: Path
) -> None:
    first = machines.boot(NAME)
    assert first is not None and version(machines) == ("active", "v1.33.4+k3s1")

    assert machines.upgrade(NAME, upgrade_image(tmp_path / "a", "v1.34.1+k3s1")) == (
        True,
        "upgrade written, node rebooting",
    )
    second = machines.boot(NAME)
    assert second is not None and second.boot_id != first.boot_id
    assert version(machines) == ("active", "v1.34.1+k3s1")

    assert machines.upgrade(NAME, upgrade_image(tmp_path / "b", "v1.34.2+k3s1", broken=True))[0]
    third = machines.boot(NAME)
    assert third is not None and third.boot_id != second.boot_id and "upgrade_failure" in third.cmdline
    assert version(machines) == ("passive", "v1.34.1+k3s1")

    # Upgraded again from passive: active is replaced, the good passive kept.
    assert machines.upgrade(NAME, upgrade_image(tmp_path / "c", "v1.34.3+k3s1", broken=True))[0]
    assert version(machines) == ("passive", "v1.34.1+k3s1")
    slots = machines.slots(NAME)
    assert slots is not None and slots.passive.release["KAIROS_SOFTWARE_VERSION"] == "v1.34.1+k3s1"
    assert machines.upgrade(NAME, upgrade_image(tmp_path / "d", "v1.35.0+k3s1"))[0]
    assert version(machines) == ("active", "v1.35.0+k3s1")


def test_upgrade_refuses_what_is_not_an_os(machines: IronicMachines, tmp_path: Path) -> None:
    machines.boot(NAME)
    ok, message = machines.upgrade(NAME, tmp_path)
    assert not ok and "not a c3os stand-in OS" in message
    assert version(machines) == ("active", "v1.33.4+k3s1")
