"""A site's credentials Secret, checked on the C3osCluster by our manager (a real process
under the infrastructure provider's generated RBAC, against the real API server): a
missing Secret, a missing key, a garbage CA and a garbage SSH key each turn SitesReady
and Ready False with the site, Secret and key named; the cluster stays provisioned (its
other sites go on); fixing the Secret turns both True again without touching the
cluster; and no byte of the Secrets shows in status, events or the manager's log.

And a Machine whose bootstrap data Secret exists without `value` says so."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from kubernetes import client as kc

from capi_c3os.dev.manager import Manager
from capi_c3os.reconcilers import c3oscluster, c3osmachine
from capi_c3os.reconcilers.c3osmachine import C3OS_CLUSTERS
from capi_c3os.reconcilers.kube import Kube, Resource
from tests.integration.libvirt.conftest import CAPI, INFRA, Capi
from tests.integration.libvirt.remote import issue, make_ca, secret_lines
from tests.support import eventually

pytestmark = pytest.mark.integration

RECHECK = 90.0
"""Safety net for one recheck of a broken site (c3oscluster.SITE_RECHECK is 30 s)."""

GARBAGE_CA = b"-----BEGIN CERTIFICATE-----\nR0FSQkFHRS1DQS1kMGUxZjI=\n-----END CERTIFICATE-----\n"
GARBAGE_SSH_KEY = b"GARBAGE-SSH-KEY-7f3a9c51e2"


def ssh_key() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )


def conditions(capi: Capi, name: str) -> dict[str, dict[str, Any]]:
    obj = capi.get(INFRA, "c3osclusters", name) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def put_secret(capi: Capi, name: str, data: dict[str, bytes]) -> None:
    body = kc.V1Secret(
        metadata=kc.V1ObjectMeta(name=name), data={k: base64.b64encode(v).decode() for k, v in data.items()}
    )
    try:
        # A Secret's type is immutable: keep the one it was made with (a bootstrap Secret
        # is CAPI's cluster.x-k8s.io/secret).
        body.type = capi.core.read_namespaced_secret(name, capi.namespace).type
        capi.core.replace_namespaced_secret(name, capi.namespace, body)
    except kc.exceptions.ApiException as exc:
        if exc.status != 404:
            raise
        capi.core.create_namespaced_secret(capi.namespace, body)


def test_broken_site_secrets_are_named_on_the_cluster_and_healing_them_makes_it_ready(
    capi: Capi, start_manager: Callable[..., Manager]
) -> None:
    ca, ca_key, ca_cert = make_ca("site test CA")
    client = issue(ca_key, ca_cert, "capi-c3os", server=False)
    good_ssh_key = ssh_key()
    manager = start_manager()
    manager.wait_ready()
    # Only loopback port 1 is named: nothing is connected to (the checks read Secrets).
    tls = {"uri": "qemu+tls://127.0.0.1:1/system", "credentialsSecretRef": {"name": "tls-creds"}}
    ssh = {"uri": "qemu+ssh://root@127.0.0.1:1/system", "credentialsSecretRef": {"name": "ssh-creds"}}
    capi.create(INFRA, "c3osclusters", {
        "apiVersion": "/".join(INFRA), "kind": "C3osCluster", "metadata": {"name": "sc"},
        "spec": {"sites": [
            {"name": "local", "libvirt": {"uri": "test:///default"}},
            {"name": "tls", "controlPlane": False, "libvirt": tls},
            {"name": "ssh", "controlPlane": False, "libvirt": ssh},
        ]},
    })  # fmt: skip

    def sites_say(status: str, *fragments: str) -> Callable[[], bool]:
        def probe() -> bool:
            found = conditions(capi, "sc").get("SitesReady")
            return bool(found and found["status"] == status and all(f in found["message"] for f in fragments))

        return probe

    def explain() -> str:
        return json.dumps(conditions(capi, "sc"))

    # Neither Secret exists: both sites named, the good one not.
    eventually(
        sites_say(
            "False",
            "site tls: credentials Secret tls-creds not found",
            "site ssh: credentials Secret ssh-creds",
        ),
        "both Secrets reported missing",
        60,
        explain=explain,
    )
    found = conditions(capi, "sc")
    assert "local" not in found["SitesReady"]["message"]
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("False", "SiteCredentialsInvalid")
    status = capi.must_get(INFRA, "c3osclusters", "sc")["status"]
    assert status["initialization"]["provisioned"] is True
    assert [d["name"] for d in status["failureDomains"]] == ["local", "tls", "ssh"]

    # A Secret without the CA, and a garbage SSH key.
    put_secret(capi, "tls-creds", {"tls.crt": client.cert, "tls.key": client.key})
    put_secret(capi, "ssh-creds", {"ssh-privatekey": GARBAGE_SSH_KEY})
    eventually(
        sites_say(
            "False",
            "site tls: Secret tls-creds lacks key ca.crt (needed for qemu+tls)",
            "site ssh: key ssh-privatekey of Secret ssh-creds is not an unencrypted OpenSSH or PEM",
        ),
        "missing ca.crt and garbage SSH key reported",
        RECHECK,
        explain=explain,
    )

    # A garbage CA; the SSH key fixed.
    put_secret(capi, "tls-creds", {"ca.crt": GARBAGE_CA, "tls.crt": client.cert, "tls.key": client.key})
    put_secret(capi, "ssh-creds", {"ssh-privatekey": good_ssh_key})
    eventually(
        sites_say("False", "site tls: key ca.crt of Secret tls-creds is not a PEM certificate bundle"),
        "garbage CA reported",
        RECHECK,
        explain=explain,
    )
    assert "site ssh" not in conditions(capi, "sc")["SitesReady"]["message"]

    # Fixed: both conditions True again, by the recheck alone.
    put_secret(capi, "tls-creds", {"ca.crt": ca.cert, "tls.crt": client.cert, "tls.key": client.key})
    eventually(sites_say("True"), "SitesReady True after the fix", RECHECK, explain=explain)
    found = conditions(capi, "sc")
    assert (found["Ready"]["status"], found["Ready"]["reason"]) == ("True", "Provisioned")

    # No secret material anywhere a person or a log shipper reads.
    events = capi.core.list_namespaced_event(capi.namespace).items
    texts = {
        "status": json.dumps(capi.must_get(INFRA, "c3osclusters", "sc")["status"]),
        "events": "\n".join(f"{e.reason} {e.message}" for e in events),
        "log": manager.log_path.read_text(),
    }
    secret_text = [
        *secret_lines(client.key),
        *secret_lines(good_ssh_key),
        *secret_lines(GARBAGE_CA),
        GARBAGE_SSH_KEY.decode(),
        base64.b64encode(GARBAGE_SSH_KEY).decode(),
        base64.b64encode(client.key).decode()[:40],
    ]
    for where, text in texts.items():
        for line in secret_text:
            assert line not in text, f"secret material in {where}"


MACHINES = Resource(INFRA[0], INFRA[1], "c3osmachines", "C3osMachine")


def test_bootstrap_secret_without_value_is_reported_as_such_not_as_missing(capi: Capi, k8s: Any) -> None:
    kube = Kube(k8s)
    capi.create_cluster("bv", {"libvirt": {"uri": "test:///default"}})
    capi.create_machine(
        "bv", "m-0", {"backend": {"libvirt": {}}, "image": {"volume": "base"}}, b"#cloud-config\n"
    )
    put_secret(capi, "m-0-bootstrap", {"format": b"cloud-config"})  # `value` gone

    def cluster_up() -> Any:
        c3oscluster.reconcile(kube, C3OS_CLUSTERS, capi.must_get(INFRA, "c3osclusters", "bv"))
        cluster = capi.must_get(CAPI, "clusters", "bv")
        return ((cluster.get("status") or {}).get("initialization") or {}).get("infrastructureProvisioned")

    def machine_says() -> str:
        c3osmachine.reconcile(
            kube, MACHINES, capi.must_get(INFRA, "c3osmachines", "m-0"), record_key=b"k" * 32
        )
        return capi.ready_message("m-0")

    eventually(cluster_up, "Cluster infrastructure provisioned", 60)
    eventually(
        lambda: machine_says().startswith(
            "WaitingForBootstrapData: bootstrap data Secret m-0-bootstrap exists"
        ),
        "the missing key reported",
        60,
        explain=lambda: capi.ready_message("m-0"),
    )
    assert capi.ready_message("m-0").endswith("m-0-bootstrap exists but lacks key value (keys: format)")
