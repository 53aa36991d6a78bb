"""The extension's own serving certificate against a real API server: replicas starting
at once settle on one Secret, and a certificate near its end is renewed in the Secret
(same CA) by the next manager that looks."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.reconcilers import serving
from capi_c3os.reconcilers.kube import Kube
from capi_c3os.reconcilers.serving import ServingMaterial
from capi_c3os.runtime.registration import ensure_serving_secret

pytestmark = pytest.mark.integration

HOSTS = serving.service_hosts("c3os-infrastructure-extension", "c3os-infrastructure-system")


def test_replicas_starting_at_once_share_one_certificate(k8s: Any, namespace: str) -> None:
    results: list[ServingMaterial] = []
    start = threading.Barrier(3)

    def replica() -> None:
        start.wait()
        results.append(ensure_serving_secret(Kube(k8s), namespace, "ext-tls", HOSTS))

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stored = serving.from_secret_data(kc.CoreV1Api(k8s).read_namespaced_secret("ext-tls", namespace).data)
    assert len(results) == 3 and all(r == stored for r in results)


def test_a_certificate_near_its_end_is_renewed_in_the_secret_under_the_same_ca(
    k8s: Any, namespace: str
) -> None:
    kube = Kube(k8s)
    first = ensure_serving_secret(kube, namespace, "ext-tls", HOSTS)
    # 250 days later (a third of the certificate's year left): the next manager to look renews it.
    later = first.serving.certificate.not_valid_after_utc - dt.timedelta(days=115)
    assert (
        ensure_serving_secret(kube, namespace, "ext-tls", HOSTS, now=later - dt.timedelta(days=20)) == first
    )
    renewed = ensure_serving_secret(kube, namespace, "ext-tls", HOSTS, now=later)
    assert renewed.serving != first.serving
    assert (renewed.ca, renewed.ca_bundle) == (first.ca, first.ca_bundle)
    secret = kc.CoreV1Api(k8s).read_namespaced_secret("ext-tls", namespace)
    assert base64.b64decode(secret.data["tls.crt"]) == renewed.serving.cert_pem
    assert secret.type == "kubernetes.io/tls"
    # Everyone after that reads the renewed one.
    assert ensure_serving_secret(kube, namespace, "ext-tls", HOSTS) == renewed
