"""Ironic sites with authType keystone, against a real Keystone and a real Ironic that
validates every token with it (keystonemiddleware): deploys through our manager, a wrong
password becomes a readable condition with the password nowhere, a revoked or expiring
token is replaced without the machine noticing, and Ironic really refuses the tokenless."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as kc

from capi_c3os.api.infrastructure import IronicMachine, IronicSite, Site
from capi_c3os.backends.base import BackendError, Phase, Progress, SiteCredentials
from capi_c3os.backends.ironic import IronicBackend
from capi_c3os.backends.ironic.client import IronicApi, connect
from capi_c3os.dev.ironic import IronicServer
from capi_c3os.dev.keystone import SERVICE_PROJECT, Credentials, KeystoneServer
from capi_c3os.dev.processes import free_port
from tests.integration.ironic.lab import IronicLab, drive, new_resource_class, settle
from tests.integration.ironic.test_ironic_machine import machine_spec
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.support import eventually, serving

pytestmark = pytest.mark.integration

# keystoneauth renews a token once it has less than 120 s left: with 180 s tokens a client
# renews after a minute (sooner would make every request of the other tests a renewal).
TOKEN_EXPIRATION = 180


@pytest.fixture(scope="module")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeystoneServer]:
    server = KeystoneServer(tmp_path_factory.mktemp("keystone"), token_expiration=TOKEN_EXPIRATION)
    with serving(server, "keystone"):
        yield server


@pytest.fixture(scope="module")
def ironic(keystone: KeystoneServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IronicServer]:
    server = IronicServer(tmp_path_factory.mktemp("ironic-keystone"))
    server.keystone = keystone.ironic_identities(server.url)
    with serving(server, "ironic-keystone"):
        yield server


# Ironic's default policy lets a project-scoped user work only on nodes its project owns
# (node.owner) or leases, and its allocations pick only those; a `member` of the owning
# project may allocate, deploy and undeploy them (a lessee needs `manager`).
PROJECT = "edge-bare-metal"


@pytest.fixture(scope="module")
def provider(keystone: KeystoneServer) -> Credentials:
    """capi-c3os's user: `member` of the project that owns the site's nodes."""
    return keystone.create_user("capi-c3os", PROJECT, ("member",))


@pytest.fixture(scope="module")
def owner(keystone: KeystoneServer, provider: Credentials) -> str:
    return keystone.project(PROJECT)


def keystone_site(ironic: IronicServer) -> Site:
    ironic_site = IronicSite.model_validate(
        {"endpoint": ironic.url, "authType": "keystone", "credentialsSecretRef": {"name": "ironic-keystone"}}
    )
    return Site(name="keystone", ironic=ironic_site)


def held_token(api: IronicApi) -> str:
    """The token the client's keystoneauth session holds now (no request when fresh)."""
    token: str = api._client.http_client.session.get_token()
    return token


def ironic_status(ironic: IronicServer, token: str | None) -> tuple[int, str]:
    """Status and WWW-Authenticate of a node listing with `token` (or none)."""
    headers = {"X-OpenStack-Ironic-API-Version": "1.89", **({"X-Auth-Token": token} if token else {})}
    req = urllib.request.Request(f"{ironic.url}/v1/nodes", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("WWW-Authenticate", "")


def test_ironic_refuses_requests_without_a_valid_token(
    ironic: IronicServer, keystone: KeystoneServer, provider: Credentials
) -> None:
    status, challenge = ironic_status(ironic, None)
    assert status == 401 and keystone.url in challenge, (status, challenge)
    assert ironic_status(ironic, "not-a-token")[0] == 401
    assert ironic_status(ironic, provider.token())[0] == 200


def test_machine_on_a_keystone_site_is_deployed_and_released_and_a_wrong_password_is_a_condition(
    capi: Capi, ironic: IronicServer, provider: Credentials, owner: str, start_manager: Any
) -> None:
    lab = IronicLab(ironic)
    rc = new_resource_class()
    lab.enroll(1, rc, owner=owner)
    wrong = "Wr0ng-keystone-Pa55word"
    capi.create_secret("ironic-keystone", provider.secret_data())
    capi.create_secret("ironic-wrong", {**provider.secret_data(), "password": wrong.encode()})
    site = {"endpoint": ironic.url, "authType": "keystone"}
    capi.create_cluster("bm", {"ironic": {**site, "credentialsSecretRef": {"name": "ironic-keystone"}}})
    capi.create_cluster("bad", {"ironic": {**site, "credentialsSecretRef": {"name": "ironic-wrong"}}})
    capi.create_machine("bm", "metal-0", machine_spec(rc), b"#cloud-config\n")
    capi.create_machine("bad", "refused-0", machine_spec(rc), b"#cloud-config\n")
    manager = start_manager()
    manager.wait_ready()

    obj = eventually(
        lambda: capi.provisioned("metal-0"),
        "C3osMachine provisioned",
        180,
        explain=lambda: capi.ready_message("metal-0"),
    )
    node = lab.node(obj["status"]["backend"]["ironic"]["nodeUUID"])
    assert node["provision_state"] == "active"
    eventually(
        lambda: capi.ready_message("refused-0").startswith("KeystoneAuthenticationFailed: "),
        "refused-0: Ready=False KeystoneAuthenticationFailed",
        120,
        explain=lambda: capi.ready_message("refused-0"),
    )
    assert provider.auth_url in capi.ready_message("refused-0")

    capi.delete(CAPI, "clusters", "bm")
    eventually(lambda: capi.get(INFRA, "c3osmachines", "metal-0") is None, "C3osMachine gone", 180)
    node = lab.node(node["uuid"])
    assert node["provision_state"] == "available" and node["instance_uuid"] is None
    assert lab.allocations_for_class(rc) == []

    events = kc.CoreV1Api(capi.core.api_client).list_namespaced_event(capi.namespace)
    texts = {
        "manager log": manager.process.log_path.read_text(errors="replace"),
        "events": json.dumps([e.to_dict() for e in events.items], default=str),
    }
    for plural in ("c3osmachines", "c3osclusters"):
        texts[plural] = json.dumps(capi.custom.list_namespaced_custom_object(*INFRA, capi.namespace, plural))
    assert "KeystoneAuthenticationFailed" in texts["manager log"]
    for where, text in texts.items():
        assert wrong not in text and provider.password not in text, f"a password in the {where}"


def test_a_revoked_token_is_replaced_and_the_deploy_goes_on(
    ironic: IronicServer, keystone: KeystoneServer, provider: Credentials, owner: str
) -> None:
    lab = IronicLab(ironic)
    rc = new_resource_class()
    lab.enroll(1, rc, owner=owner)
    credentials = SiteCredentials(provider.secret_data())
    intent = lab.intent(
        "revoked", IronicMachine(resource_class=rc), site=keystone_site(ironic), credentials=credentials
    )
    backend = IronicBackend()
    first = backend.provision(intent)
    assert first.phase is Phase.PROVISIONING, first
    api = backend.api(keystone_site(ironic).ironic, credentials)  # type: ignore[arg-type]
    token = held_token(api)

    keystone.revoke(token)

    assert ironic_status(ironic, token)[0] == 401, "Ironic refuses the revoked token"
    seen: list[Progress] = []
    running = drive(lambda: backend.provision(intent), {Phase.RUNNING}, seen)
    assert running.phase is Phase.RUNNING, running
    assert not [p for p in seen if "Authentication" in p.reason], seen
    assert held_token(api) != token
    drive(lambda: backend.deprovision(intent.identity, intent.site, intent.credentials), {Phase.DELETED})
    assert lab.node(running.details["nodeUUID"])["provision_state"] == "available"


def test_a_token_about_to_expire_is_renewed_before_ironic_refuses_it(
    ironic: IronicServer, keystone: KeystoneServer, provider: Credentials
) -> None:
    api = connect(keystone_site(ironic).ironic, SiteCredentials(provider.secret_data()))  # type: ignore[arg-type]
    api.list_nodes(["uuid"])
    token = held_token(api)

    # Each call checks the held token; after a minute it is near enough its end to renew.
    renewed = eventually(
        lambda: api.list_nodes(["uuid"]) is not None and held_token(api) != token,
        "the client to renew its token",
        TOKEN_EXPIRATION,
        every=2,
    )

    assert renewed
    assert ironic_status(ironic, token)[0] == 200, "renewed while the old token was still valid"


def test_an_auth_url_without_its_version_is_discovered(ironic: IronicServer, provider: Credentials) -> None:
    data = {**provider.secret_data(), "auth-url": provider.auth_url.removesuffix("/v3").encode()}
    api = connect(keystone_site(ironic).ironic, SiteCredentials(data))  # type: ignore[arg-type]

    assert isinstance(api.list_nodes(["uuid"]), list)


def test_an_application_credential_acts_for_its_project(
    ironic: IronicServer, keystone: KeystoneServer, provider: Credentials, owner: str
) -> None:
    lab = IronicLab(ironic)
    rc = new_resource_class()
    [owned] = lab.enroll(1, rc, owner=owner)
    data = keystone.application_credential(provider, f"capi-c3os-{rc}")
    data["auth-url"] = provider.auth_url.removesuffix("/v3").encode()  # completed to /v3
    api = connect(keystone_site(ironic).ironic, SiteCredentials(data))  # type: ignore[arg-type]

    assert owned in {node.uuid for node in api.list_nodes(["uuid"])}


def test_the_sites_user_gets_only_the_nodes_its_project_owns(
    ironic: IronicServer, provider: Credentials, owner: str
) -> None:
    lab = IronicLab(ironic)
    rc = new_resource_class()
    [owned] = lab.enroll(1, rc, owner=owner)
    [other] = lab.enroll(1, rc)
    credentials = SiteCredentials(provider.secret_data())
    site = keystone_site(ironic)
    backend = IronicBackend()
    intents = [
        lab.intent(f"tenant-{i}", IronicMachine(resource_class=rc), site=site, credentials=credentials)
        for i in range(2)
    ]

    running = drive(lambda: backend.provision(intents[0]), {Phase.RUNNING})
    assert running.details["nodeUUID"] == owned
    second = settle(lambda: backend.provision(intents[1]))
    assert second.reason == "WaitingForNode", second
    assert lab.node(other)["provision_state"] == "available" and lab.node(other)["instance_uuid"] is None
    drive(lambda: backend.deprovision(intents[1].identity, site, credentials), {Phase.DELETED})
    drive(lambda: backend.deprovision(intents[0].identity, site, credentials), {Phase.DELETED})
    assert lab.node(owned)["provision_state"] == "available"
    assert lab.allocations_for_class(rc) == []


def test_what_ironics_policy_denies_the_sites_user_is_reported_as_forbidden(
    ironic: IronicServer, provider: Credentials, owner: str
) -> None:
    """Changing a node's deploy interface takes `manager` or `admin` of the owning project;
    a `member` is refused, the condition says by whom and what, and the machine can go."""
    lab = IronicLab(ironic)
    rc = new_resource_class()
    [node_uuid] = lab.enroll(1, rc, owner=owner)
    credentials = SiteCredentials(provider.secret_data())
    site = keystone_site(ironic)
    intent = lab.intent(
        "forbidden",
        IronicMachine(resource_class=rc, deploy_interface="direct"),
        site=site,
        credentials=credentials,
    )
    backend = IronicBackend()

    def refusal() -> BackendError | None:
        try:
            backend.provision(intent)
        except BackendError as err:
            return err
        return None

    refused = eventually(refusal, "Ironic to refuse a step", 60)

    assert refused.reason == "IronicForbidden", refused.message
    assert ironic.url in refused.message and "does not allow the site's user to" in refused.message
    assert lab.node(node_uuid)["deploy_interface"] == "fake"
    drive(lambda: backend.deprovision(intent.identity, site, credentials), {Phase.DELETED})
    assert lab.node(node_uuid)["provision_state"] == "available"
    assert lab.allocations_for_class(rc) == []


def test_the_service_role_of_the_service_project_is_not_enough(
    keystone: KeystoneServer, ironic: IronicServer
) -> None:
    """Ironic 39's default policy gives the `service` role system-wide reach only with
    `rbac_service_role_elevated_access` (off by default); without it such a user may not
    even allocate, and says so. (With it, an allocation by a project-scoped user still
    picks only nodes its project owns or leases.)"""
    service_user = keystone.create_user("capi-c3os-service", SERVICE_PROJECT, ("service",))
    credentials = SiteCredentials(service_user.secret_data())
    intent = IronicLab(ironic).intent(
        "service-role", IronicMachine(resource_class="x"), site=keystone_site(ironic), credentials=credentials
    )

    with pytest.raises(BackendError) as raised:
        IronicBackend().provision(intent)

    assert raised.value.reason == "IronicForbidden", raised.value.message
    assert "baremetal:allocation:create" in raised.value.message


def test_a_wrong_password_names_keystone_without_the_password(
    ironic: IronicServer, provider: Credentials
) -> None:
    wrong = "n0t-the-Pa55word"
    credentials = SiteCredentials({**provider.secret_data(), "password": wrong.encode()})
    lab = IronicLab(ironic)
    intent = lab.intent(
        "wrong", IronicMachine(resource_class="x"), site=keystone_site(ironic), credentials=credentials
    )

    with pytest.raises(BackendError) as raised:
        IronicBackend().provision(intent)

    assert raised.value.reason == "KeystoneAuthenticationFailed", raised.value.message
    assert provider.auth_url in raised.value.message
    assert wrong not in str(raised.value) and provider.password not in str(raised.value)
    assert raised.value.__suppress_context__, "the client's exception is not chained into logs"


def test_an_unreachable_keystone_is_named_not_ironic() -> None:
    auth_url = f"http://127.0.0.1:{free_port()}/v3"
    ironic_site = IronicSite.model_validate(
        {
            "endpoint": f"http://127.0.0.1:{free_port()}",
            "authType": "keystone",
            "credentialsSecretRef": {"name": "ironic-keystone"},
        }
    )
    data = {"auth-url": auth_url, "username": "u", "password": "p", "project-name": "p"}
    api = connect(ironic_site, SiteCredentials({k: v.encode() for k, v in data.items()}))

    with pytest.raises(BackendError) as raised:
        api.list_nodes(["uuid"])

    assert raised.value.reason == "KeystoneUnreachable", raised.value.message
    assert auth_url in raised.value.message and raised.value.retry_after
