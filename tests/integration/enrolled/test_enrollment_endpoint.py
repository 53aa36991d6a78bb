"""Issue 17, phase 1: the enrollment endpoint's security properties, against the real
API server with our manager as a process (its generated RBAC). The hosts' agents are
the test's own HTTPS client (agent.py); phase 2 puts a real agent in the live ISO."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from kubernetes import client as kc

from tests.integration.enrolled.agent import Agent, hardware
from tests.integration.enrolled.conftest import (
    POOL,
    Endpoint,
    StartEndpoint,
    enrolled_site,
    host_of,
    make_site,
    new_token,
)
from tests.integration.libvirt.conftest import INFRA, Capi
from tests.support import eventually

pytestmark = pytest.mark.integration

UUID_A = "4C4C4544-0031-4A10-8044-B4C04F4A3032"
UUID_B = "4C4C4544-0031-4A10-8044-B4C04F4A3033"
UNAUTHORIZED = b'{"error": "unauthorized"}'


def name_of(system_uuid: str) -> str:
    return "host-" + system_uuid.lower()


def refused(answer: Any) -> bool:
    """The one answer every refusal gets: nothing tells which part was wrong."""
    return bool(answer.status == 401 and answer.raw == UNAUTHORIZED)


def never_logged(endpoint: Endpoint, *secrets: str) -> None:
    log = endpoint.manager.log_path.read_text()
    for secret in secrets:
        assert secret not in log


def test_a_host_registers_with_the_site_token_and_reads_only_its_own_assignment(
    capi: Capi, start_endpoint: StartEndpoint
) -> None:
    token = make_site(capi)
    endpoint = start_endpoint()
    a, b = endpoint.agent(), endpoint.agent()

    answer = a.register(capi.namespace, POOL, token, hardware(UUID_A))
    assert answer.status == 200, answer.body
    assert (answer.body["name"], answer.body["accepted"]) == (name_of(UUID_A), True)
    assert b.register(capi.namespace, POOL, token, hardware(UUID_B, memory_mib=8192)).status == 200

    host = capi.must_get(INFRA, "c3oshosts", name_of(UUID_A))
    labels = host["metadata"]["labels"]
    assert (labels["host.c3os.io/pool"], labels["host.c3os.io/memory-gib"]) == (POOL, "16")
    assert (labels["host.c3os.io/tpm"], labels["host.c3os.io/disks"]) == ("true", "1")
    assert host["spec"] == {"accepted": True}
    status = host["status"]
    assert (status["phase"], status["pool"], status["registrations"]) == ("Available", POOL, 1)
    assert status["hardware"]["system"]["uuid"] == UUID_A
    assert status["hardware"]["disks"][1]["removable"] is True
    # Only the digest is kept; the credential is nowhere in the object.
    assert status["credential"]["sha256"] == hashlib.sha256(a.credential.encode()).hexdigest()
    assert a.credential not in json.dumps(host) and token not in json.dumps(host)

    assert a.assignment().body == {"action": "wait", "reason": "Idle", "pollSeconds": 15}
    # A host reads nothing of another, and an unknown host or a wrong credential gets the
    # same answer as a wrong token, a made-up pool or namespace, or no header at all.
    assert refused(a.assignment(name=name_of(UUID_B)))
    assert refused(a.assignment(name="host-00000000-0000-0000-0000-000000000001"))
    assert refused(
        Agent(endpoint.url, endpoint.ca_pem, credential="x" * 43).assignment(capi.namespace, b.name)
    )
    assert refused(endpoint.agent().register(capi.namespace, POOL, new_token(), hardware(UUID_A)))
    assert refused(endpoint.agent().register(capi.namespace, "other-pool", token, hardware(UUID_A)))
    assert refused(endpoint.agent().register("kube-system", POOL, token, hardware(UUID_A)))
    assert refused(endpoint.agent().register(capi.namespace, POOL, "", hardware(UUID_A)))
    assert refused(a.call("GET", "/enrollment/v1/anything", a.credential))
    never_logged(endpoint, token, a.credential, b.credential)


def test_a_host_may_only_report_about_its_own_claim(capi: Capi, start_endpoint: StartEndpoint) -> None:
    token = make_site(capi)
    endpoint = start_endpoint()
    a = endpoint.agent()
    assert a.register(capi.namespace, POOL, token, hardware(UUID_A)).status == 200
    answer = a.report("installing", "not-my-claim")
    assert answer.status == 409, answer.body
    assert a.report("teleported", "x").status == 400


def test_tokens_rotate_and_revoke(capi: Capi, k8s: Any, start_endpoint: StartEndpoint) -> None:
    old = make_site(capi)
    endpoint = start_endpoint()
    assert endpoint.agent().register(capi.namespace, POOL, old, hardware(UUID_A)).status == 200

    # Rotation: the new token and, for a while, the old one.
    new = new_token()
    core = kc.CoreV1Api(k8s)
    core.patch_namespaced_secret(
        "shop-token", capi.namespace, {"stringData": {"token": new, "previous-token": old}}
    )
    assert endpoint.agent().register(capi.namespace, POOL, new, hardware(UUID_B)).status == 200
    assert endpoint.agent().register(capi.namespace, POOL, old, hardware(UUID_B)).status == 200
    # The rotation ends: the old token is revoked.
    core.patch_namespaced_secret(
        "shop-token", capi.namespace, [{"op": "remove", "path": "/data/previous-token"}]
    )
    assert refused(endpoint.agent().register(capi.namespace, POOL, old, hardware(UUID_B)))
    # Revoking the last token closes the pool to new registrations; a registered host
    # keeps its own credential (revoke that by deleting its C3osHost).
    a = endpoint.agent()
    assert a.register(capi.namespace, POOL, new, hardware(UUID_A)).status == 200
    core.delete_namespaced_secret("shop-token", capi.namespace)
    assert refused(endpoint.agent().register(capi.namespace, POOL, new, hardware(UUID_B)))
    assert a.assignment().status == 200
    capi.delete(INFRA, "c3oshosts", name_of(UUID_A))
    assert refused(a.assignment())
    never_logged(endpoint, old, new, a.credential)


def test_registering_again_voids_the_previous_credential(capi: Capi, start_endpoint: StartEndpoint) -> None:
    token = make_site(capi)
    endpoint = start_endpoint()
    first, second = endpoint.agent(), endpoint.agent()
    assert first.register(capi.namespace, POOL, token, hardware(UUID_A)).status == 200
    assert second.register(capi.namespace, POOL, token, hardware(UUID_A, memory_mib=32768)).status == 200
    assert refused(first.assignment())
    assert second.assignment().status == 200
    host = capi.must_get(INFRA, "c3oshosts", name_of(UUID_A))
    assert host["status"]["registrations"] == 2
    assert host["metadata"]["labels"]["host.c3os.io/memory-gib"] == "32"


def test_a_token_of_another_pool_does_not_take_over_a_registered_host(
    capi: Capi, start_endpoint: StartEndpoint
) -> None:
    """Every host of a pool holds its token; one of another pool (a lab's, say) must not
    re-register a host of this pool and so receive its claim and bootstrap data."""
    token = make_site(capi)
    other = new_token()
    capi.create_secret("other-token", {"token": other.encode()})
    site = enrolled_site(token_secret="other-token")
    site["enrolled"]["pool"] = "other"
    capi.create_cluster("o", site)
    endpoint = start_endpoint()
    a = endpoint.agent()
    assert a.register(capi.namespace, POOL, token, hardware(UUID_A)).status == 200
    thief = endpoint.agent()
    assert refused(thief.register(capi.namespace, "other", other, hardware(UUID_A)))
    assert a.assignment().status == 200, "the host's own credential was replaced"
    host = capi.must_get(INFRA, "c3oshosts", name_of(UUID_A))
    assert (host["status"]["pool"], host["status"]["registrations"]) == (POOL, 1)
    assert host["metadata"]["labels"]["host.c3os.io/pool"] == POOL
    # A host of the other pool registers there as before.
    assert thief.register(capi.namespace, "other", other, hardware(UUID_B)).status == 200
    never_logged(endpoint, token, other, a.credential)


def test_under_approval_a_host_waits_until_accepted(capi: Capi, start_endpoint: StartEndpoint) -> None:
    token = make_site(capi, acceptance="Approval")
    endpoint = start_endpoint()
    a = endpoint.agent()
    answer = a.register(capi.namespace, POOL, token, hardware(UUID_A))
    assert (answer.status, answer.body["accepted"]) == (200, False)
    assert capi.must_get(INFRA, "c3oshosts", a.name)["spec"] == {"accepted": False}
    assert a.assignment().body["reason"] == "AwaitingApproval"
    capi.custom.patch_namespaced_custom_object(
        *INFRA, capi.namespace, "c3oshosts", a.name, {"spec": {"accepted": True}}
    )
    assert a.assignment().body["reason"] == "Idle"
    # A new registration does not undo a person's decision.
    assert a.register(capi.namespace, POOL, token, hardware(UUID_A)).body["accepted"] is True


def test_a_namespace_is_a_tenant_boundary(capi: Capi, tenant_b: Capi, start_endpoint: StartEndpoint) -> None:
    token_a = make_site(capi)
    token_b = make_site(tenant_b)
    endpoint = start_endpoint(also=(tenant_b.namespace,))
    a = endpoint.agent()
    assert a.register(capi.namespace, POOL, token_a, hardware(UUID_A)).status == 200
    # A's token cannot register into B's pool of the same name, nor B's into A's.
    assert refused(endpoint.agent().register(tenant_b.namespace, POOL, token_a, hardware(UUID_B)))
    assert refused(endpoint.agent().register(capi.namespace, POOL, token_b, hardware(UUID_B)))
    assert tenant_b.get(INFRA, "c3oshosts", name_of(UUID_B)) is None
    # The same machine registered in B is another object; A's credential reads nothing there.
    b = endpoint.agent()
    assert b.register(tenant_b.namespace, POOL, token_b, hardware(UUID_A)).status == 200
    assert refused(a.assignment(namespace=tenant_b.namespace))
    assert refused(b.assignment(namespace=capi.namespace))
    assert host_of(capi, name_of(UUID_A)) is not None and host_of(tenant_b, name_of(UUID_A)) is not None


def test_a_namespace_the_manager_does_not_serve_gets_nothing(
    capi: Capi, tenant_b: Capi, start_endpoint: StartEndpoint
) -> None:
    token_b = make_site(tenant_b)
    endpoint = start_endpoint()  # serves the test namespace only
    assert refused(endpoint.agent().register(tenant_b.namespace, POOL, token_b, hardware(UUID_A)))
    assert tenant_b.get(INFRA, "c3oshosts", name_of(UUID_A)) is None


def test_bodies_and_request_rates_are_limited(capi: Capi, start_endpoint: StartEndpoint) -> None:
    token = make_site(capi)
    endpoint = start_endpoint("--enrollment-rate=1")
    agent = endpoint.agent()
    path = f"/enrollment/v1/namespaces/{capi.namespace}/pools/{POOL}/hosts"
    assert agent.call("POST", path, token, raw=b"{" + b" " * 70000 + b"}").status == 413
    # Facts are judged only after the token: without one, bad facts get the same 401.
    assert refused(agent.call("POST", path, new_token(), {"hardware": {"cpu": "fast"}}))
    assert refused(agent.call("POST", path, new_token(), raw=b"not json"))
    assert agent.call("POST", path, token, raw=b"not json").status == 400
    bad = agent.call("POST", path, token, {"hardware": {**hardware(UUID_A), "memoryMiB": -1}})
    assert bad.status == 400 and "memoryMiB" in bad.body["error"]
    statuses = [agent.assignment(capi.namespace, "host-x").status for _ in range(30)]
    assert 429 in statuses
    eventually(
        lambda: agent.assignment(capi.namespace, "host-x").status == 401, "the bucket to refill", 30, 1
    )


def sites_ready(objects: Capi) -> dict[str, Any]:
    cluster = objects.get(INFRA, "c3osclusters", "c") or {}
    found = [c for c in (cluster.get("status") or {}).get("conditions") or [] if c["type"] == "SitesReady"]
    return found[0] if found else {}


def test_an_enrolled_site_reports_a_missing_or_weak_token(capi: Capi, start_endpoint: StartEndpoint) -> None:
    capi.create_cluster("c", enrolled_site())
    endpoint = start_endpoint()
    eventually(
        lambda: "registration token Secret shop-token not found" in sites_ready(capi).get("message", ""),
        "SitesReady to name the missing Secret",
        60,
        explain=lambda: str(sites_ready(capi)),
    )
    weak = "short-token"
    capi.create_secret("shop-token", {"token": weak.encode()})
    eventually(
        lambda: "at least 16 characters" in sites_ready(capi).get("message", ""),
        "SitesReady to refuse the short token",
        90,
        explain=lambda: str(sites_ready(capi)),
    )
    assert weak not in json.dumps(sites_ready(capi))
    assert refused(endpoint.agent().register(capi.namespace, POOL, weak, hardware(UUID_A)))
