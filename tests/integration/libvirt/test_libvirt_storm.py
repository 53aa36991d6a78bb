"""The crash storm (tests/storm.py) on the private libvirtd: machines created and
deleted at random (many mid-boot) while our manager is SIGKILLed at random moments; no
duplicate domain or volume, no leak, everything deleted, no bootstrap data in the logs.
A CI size; bigger: bench/storm.py. The seed is printed; CAPI_C3OS_STORM_SEED replays a
schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capi_c3os.dev.libvirtd import PrivateLibvirtd
from tests.integration.libvirt.conftest import Capi
from tests.storm import LibvirtStormSite, Storm, StormPlan, run_clean, storm_seed

pytestmark = pytest.mark.integration


def test_random_kills_leave_no_duplicate_and_no_leak_on_libvirt(
    capi: Capi, libvirtd: PrivateLibvirtd, standin_image: Path, start_manager: Any, tmp_path: Path
) -> None:
    site = LibvirtStormSite(libvirtd, capi.namespace, standin_image, capacity=3)
    plan = StormPlan(seed=storm_seed(default=11), cycles=5, kills=5)
    run_clean(Storm(plan, "libvirt", capi, site, start_manager, tmp_path, print))
