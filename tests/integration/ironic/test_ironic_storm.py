"""The crash storm (tests/storm.py) on the real Ironic: machines created and deleted at
random while our manager is SIGKILLed at random moments; no duplicate allocation or
node, no leak, everything deleted, no bootstrap data in the logs. A CI size; bigger:
bench/storm.py. The seed is printed; CAPI_C3OS_STORM_SEED replays a schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capi_c3os.dev.ironic import IronicServer
from tests.integration.ironic.lab import IronicLab, new_resource_class
from tests.integration.libvirt.conftest import Capi
from tests.storm import IronicStormSite, Storm, StormPlan, run_clean, storm_seed

pytestmark = pytest.mark.integration

NODES = 5


def test_random_kills_leave_no_duplicate_and_no_leak_on_ironic(
    capi: Capi, ironic_server: IronicServer, start_manager: Any, tmp_path: Path
) -> None:
    lab = IronicLab(ironic_server)
    rc = new_resource_class()
    lab.enroll(NODES, rc)
    site = IronicStormSite(lab, capi.namespace, rc, NODES)
    plan = StormPlan(seed=storm_seed(default=11), cycles=6, kills=6)
    run_clean(Storm(plan, "ironic", capi, site, start_manager, tmp_path, print))
