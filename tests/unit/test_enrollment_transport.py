"""The enrollment endpoint's pure parts: the per-address rate limit and the serving
certificate (names, renewal)."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509

from capi_c3os.bootstrap.certificates import new_ca
from capi_c3os.operator.enrollment import RateLimit
from capi_c3os.reconcilers import serving


def test_an_address_gets_its_burst_then_waits_for_the_refill() -> None:
    limit = RateLimit(rate=1.0, burst=3.0)
    assert [limit.allow("10.0.0.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("10.0.0.2", 0.0)  # another address has its own bucket
    assert not limit.allow("10.0.0.1", 0.5)
    assert limit.allow("10.0.0.1", 1.6)


def test_the_serving_certificate_names_what_hosts_connect_to_and_is_renewed_in_time() -> None:
    ca = new_ca("test")
    leaf = serving.serving_certificate(ca, ("enroll.example", "192.0.2.7"))
    sans = leaf.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["enroll.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    now = dt.datetime.now(dt.UTC)
    assert not serving.needs_renewal(leaf, now)
    assert serving.needs_renewal(leaf, leaf.not_after - dt.timedelta(days=9))
