"""How often a running domain without an address is looked at again."""

from __future__ import annotations

from capi_c3os.backends.libvirt.backend import ADDRESS_RETRY, ADDRESS_RETRY_MAX, address_retry


def test_looks_get_rarer_the_longer_no_address_came_but_never_stop() -> None:
    assert address_retry(0) == ADDRESS_RETRY
    assert address_retry(8) == ADDRESS_RETRY
    assert address_retry(60) == 30
    assert address_retry(3600) == ADDRESS_RETRY_MAX
    assert address_retry(10**9) == ADDRESS_RETRY_MAX > 0


def test_an_hour_without_an_address_costs_a_few_dozen_looks_not_720() -> None:
    waited, looks = 0.0, 0
    while waited < 3600:
        waited += address_retry(waited)
        looks += 1
    assert looks < 40  # every 5 s would be 720
