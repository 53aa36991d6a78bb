"""The bootstrap provider as a real process, under its own generated RBAC, with the
real CAPI core manager: Cluster + Machines + C3osConfigs in, contract-shaped Secrets
out, CAPI copying `dataSecretName` and mirroring `Ready`.

Every wait polls the API server until a deadline (a hang guard, not a timing claim)."""

from __future__ import annotations

import base64
import hashlib
import signal
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from capi_c3os.dev.manager import Manager
from tests.integration.bootstrap.conftest import CLUSTER_NAME, Capi, condition_of
from tests.support import eventually

pytestmark = pytest.mark.integration

P2P_TOKEN = "p2p-token-that-must-stay-secret"
FILE_SECRET = "file-content-that-must-stay-secret"


def _secret_spec(capi: Capi) -> dict[str, Any]:
    """A spec whose rendering needs Secret contents, for the no-leak checks."""
    capi.core.create_namespaced_secret(capi.namespace, {
        "metadata": {"name": "node-files"},
        "stringData": {"p2p": P2P_TOKEN, "motd": FILE_SECRET},
    })  # fmt: skip
    return {
        "files": [{"path": "/etc/motd", "contentFrom": {"secret": {"name": "node-files", "key": "motd"}}}],
        "p2p": {"networkTokenSecretRef": {"name": "node-files", "key": "p2p"}},
        "users": [{"name": "kairos", "groups": ["admin"], "sshAuthorizedKeys": ["ssh-ed25519 AAAA me@host"]}],
    }


def await_reason(capi: Capi, name: str, reason: str, manager: Manager | None = None) -> None:
    """Wait for the config's Ready reason; on timeout say what it holds and what the
    manager logged last."""

    def explain() -> str:
        tail = manager.process.tail(15) if manager else ""
        return f"{name} status: {capi.config(name).get('status')}\n{tail}"

    eventually(lambda: capi.ready_reason(name) == reason, f"{name} Ready reason {reason}", explain=explain)


def _cloud_config(capi: Capi, name: str) -> dict[str, Any]:
    text = capi.secret_data(name)
    assert text.startswith("#cloud-config\n")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _files(doc: dict[str, Any]) -> dict[str, bytes]:
    result = {}
    for step in doc["stages"]["initramfs"]:
        for file in step.get("files", []):
            raw = file["content"]
            result[file["path"]] = base64.b64decode(raw) if file.get("encoding") == "b64" else raw.encode()
    return result


def _data_secret_copied(capi: Capi, name: str) -> bool:
    machine = capi.machine(name) or {}
    return bool((machine.get("spec") or {}).get("bootstrap", {}).get("dataSecretName") == name)


def _secret_values(capi: Capi, cluster: str) -> list[str]:
    """Every secret string this cluster's bootstrap involves (token, CA keys, user secrets)."""
    token = capi.secret_data(f"{cluster}-token")
    values = [token, token.rsplit(":", 1)[1], P2P_TOKEN, FILE_SECRET]
    for suffix in ("ca", "cca", "etcd"):
        key = capi.secret_data(f"{cluster}-{suffix}", "tls.key")
        values.append(key.splitlines()[1])  # a line of the key's base64 body
    return values


def _assert_no_leak(capi: Capi, manager: Manager, cluster: str, configs: list[str]) -> None:
    log = manager.process.log_path.read_text()
    events = capi.events_text()
    for value in _secret_values(capi, cluster):
        assert value not in log, "a secret value reached the manager log"
        assert value not in events, "a secret value reached an event"
    for name in configs:
        config = capi.config(name)
        for value in _secret_values(capi, cluster):
            assert value not in str(config.get("status")), "a secret value reached a status"


def _assert_contract_secret(capi: Capi, name: str, cluster: str) -> None:
    """The bootstrap Secret exactly as the CAPI contract (and CABPK) shape it."""
    config = capi.config(name)
    secret = capi.secret(name)
    assert secret is not None
    assert secret.type == "cluster.x-k8s.io/secret"
    assert secret.metadata.labels[CLUSTER_NAME] == cluster
    assert set(secret.data) == {"value", "format"}
    assert capi.secret_data(name, "format") == "cloud-config"
    [owner] = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "C3osConfig", name, config["metadata"]["uid"], True,
    )  # fmt: skip


def _assert_init_data_and_cluster_secrets(capi: Capi, name: str, cluster: str) -> str:
    """The first server's data: --cluster-init, the CAs, the token pinning that CA; the
    cluster Secrets owned by the Cluster. Returns the token."""
    init = _cloud_config(capi, name)
    assert init["hostname"] == name
    assert "--cluster-init" in init["k3s"]["args"]
    files = _files(init)
    server_ca = files["/var/lib/rancher/k3s/server/tls/server-ca.crt"]
    token = files["/etc/rancher/k3s/cluster-api/token"].decode().strip()
    # The token pins exactly the server CA the first server is given, and the one stored.
    assert token == f"K10{hashlib.sha256(server_ca).hexdigest()}::server:{token.rsplit(':', 1)[1]}"
    assert server_ca.decode() == capi.secret_data(f"{cluster}-ca", "tls.crt")
    assert token == capi.secret_data(f"{cluster}-token")
    assert files["/etc/motd"].decode() == FILE_SECRET
    assert init["p2p"]["network_token"] == P2P_TOKEN
    # Every CA and key k3s would otherwise make and keep only in its datastore comes from
    # a cluster Secret, so the cluster can be recreated from its Secrets.
    tls = "/var/lib/rancher/k3s/server/tls"
    for suffix, stem in (("etcd-peer", "etcd/peer-ca"), ("proxy", "request-header-ca")):
        assert files[f"{tls}/{stem}.crt"].decode() == capi.secret_data(f"{cluster}-{suffix}", "tls.crt")
        assert files[f"{tls}/{stem}.key"].decode() == capi.secret_data(f"{cluster}-{suffix}", "tls.key")
    sa_key = files[f"{tls}/service.key"]
    assert sa_key.decode() == capi.secret_data(f"{cluster}-sa", "tls.key")
    public = serialization.load_pem_private_key(sa_key, None).public_key()
    assert public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == (capi.secret_data(f"{cluster}-sa", "tls.crt").encode())
    for suffix in ("ca", "cca", "etcd", "etcd-peer", "proxy", "sa", "token"):
        cluster_secret = capi.secret(f"{cluster}-{suffix}")
        assert cluster_secret is not None and cluster_secret.type == "cluster.x-k8s.io/secret"
        assert cluster_secret.metadata.labels[CLUSTER_NAME] == cluster
        assert [(r.kind, r.name) for r in cluster_secret.metadata.owner_references] == [("Cluster", cluster)]
    return token


def test_machines_get_contract_shaped_bootstrap_secrets_workers_wait_for_init_then_join(
    capi: Capi, start_bootstrap_manager: Callable[[str], Manager]
) -> None:
    capi.create_cluster("edge")
    eventually(lambda: capi.infrastructure_provisioned("edge"), "CAPI: infrastructure provisioned + endpoint")
    spec = _secret_spec(capi)
    manager = start_bootstrap_manager("bootstrap")
    manager.wait_ready()

    capi.create_machine("edge", "w-0", control_plane=False, spec=spec)
    capi.create_machine("edge", "cp-0", control_plane=True, spec=spec)

    # The first server initialises.
    await_reason(capi, "cp-0", "DataSecretAvailable", manager)
    config = capi.config("cp-0")
    assert config["status"]["dataSecretName"] == "cp-0"
    assert config["status"]["initialization"] == {"dataSecretCreated": True}
    assert config["status"]["observedGeneration"] == config["metadata"]["generation"]
    assert condition_of(config, "Ready")["observedGeneration"] == config["metadata"]["generation"]  # type: ignore[index]
    assert condition_of(config, "Paused")["status"] == "False"  # type: ignore[index]

    _assert_contract_secret(capi, "cp-0", "edge")
    token = _assert_init_data_and_cluster_secrets(capi, "cp-0", "edge")

    # CAPI copies the name to the Machine and mirrors Ready as BootstrapConfigReady.
    eventually(lambda: _data_secret_copied(capi, "cp-0"), "Machine.spec.bootstrap.dataSecretName")
    eventually(
        lambda: (
            (condition_of(capi.machine("cp-0") or {}, "BootstrapConfigReady") or {}).get("status") == "True"
        ),
        "Machine cp-0 BootstrapConfigReady=True",
    )

    # The worker waits, with a reason a script can match, mirrored on its Machine.
    await_reason(capi, "w-0", "WaitingForControlPlaneInitialized", manager)
    assert capi.secret("w-0") is None
    assert "dataSecretName" not in (capi.config("w-0").get("status") or {})
    eventually(
        lambda: (
            (condition_of(capi.machine("w-0") or {}, "BootstrapConfigReady") or {}).get("reason")
            == "WaitingForControlPlaneInitialized"
        ),
        "Machine w-0 mirrors the waiting reason",
    )

    # A second server created now waits too: the lock is held by cp-0.
    capi.create_machine("edge", "cp-1", control_plane=True)
    await_reason(capi, "cp-1", "WaitingForControlPlaneInitialized", manager)
    assert "Machine cp-0 holds the init lock" in capi.ready("cp-1")["message"]  # type: ignore[index]

    # The control plane serves: everyone joins, and the lock is gone.
    capi.initialise_control_plane("edge")
    eventually(lambda: capi.control_plane_initialised("edge"), "CAPI: controlPlaneInitialized")
    for name in ("w-0", "cp-1"):
        await_reason(capi, name, "DataSecretAvailable", manager)
        eventually(lambda name=name: _data_secret_copied(capi, name), f"{name} dataSecretName on Machine")  # type: ignore[misc]
    agent = _cloud_config(capi, "w-0")
    assert "k3s" not in agent
    assert agent["k3s-agent"]["args"][:1] == ["--server=https://10.0.0.10:6443"]
    assert not [p for p in _files(agent) if p.startswith("/var/lib/rancher/k3s/server/tls")]
    assert _files(agent)["/etc/rancher/k3s/cluster-api/token"].decode().strip() == token
    joiner = _cloud_config(capi, "cp-1")
    assert "--cluster-init" not in joiner["k3s"]["args"]
    assert joiner["k3s"]["args"][0] == "--server=https://10.0.0.10:6443"
    eventually(lambda: capi.config_map("edge-lock") is None, "the init lock to be released")

    # Deleting a Machine removes its bootstrap Secret (CAPI deletes the config, the
    # garbage collector follows our controller reference).
    capi.delete_machine("w-0")
    eventually(lambda: capi.secret("w-0") is None, "w-0's bootstrap Secret to be deleted")

    _assert_no_leak(capi, manager, "edge", ["cp-0", "cp-1"])
    assert manager.stop() == 0
    assert "Forbidden" not in manager.process.log_path.read_text()


def test_three_control_plane_machines_at_once_exactly_one_initialises(
    capi: Capi, start_bootstrap_manager: Callable[[str], Manager]
) -> None:
    capi.create_cluster("trio")
    eventually(lambda: capi.infrastructure_provisioned("trio"), "CAPI: infrastructure provisioned")
    manager = start_bootstrap_manager("bootstrap")
    manager.wait_ready()
    names = ["cp-a", "cp-b", "cp-c"]
    for name in names:
        capi.create_machine("trio", name, control_plane=True)

    def settled() -> bool:
        return all(
            capi.ready_reason(n) in ("DataSecretAvailable", "WaitingForControlPlaneInitialized")
            for n in names
        ) and any(capi.ready_reason(n) == "DataSecretAvailable" for n in names)

    eventually(settled, "one initialises, the others wait")
    ready = [n for n in names if capi.ready_reason(n) == "DataSecretAvailable"]
    assert len(ready) == 1
    [holder] = ready
    assert "--cluster-init" in _cloud_config(capi, holder)["k3s"]["args"]
    lock = capi.config_map("trio-lock")
    assert lock is not None and holder in lock.data["lock-information"]
    for name in set(names) - {holder}:
        assert capi.secret(name) is None
        assert f"Machine {holder} holds the init lock" in capi.ready(name)["message"]  # type: ignore[index]

    # The initialising machine fails (is deleted) before the control plane came up:
    # its lock is released and exactly one of the others initialises instead.
    capi.delete_machine(holder)
    eventually(lambda: capi.machine(holder) is None, f"Machine {holder} gone")
    rest = [n for n in names if n != holder]
    eventually(lambda: any(capi.ready_reason(n) == "DataSecretAvailable" for n in rest), "a new initialiser")
    new_ready = [n for n in rest if capi.ready_reason(n) == "DataSecretAvailable"]
    assert len(new_ready) == 1
    assert "--cluster-init" in _cloud_config(capi, new_ready[0])["k3s"]["args"]
    assert manager.stop() == 0


def test_paused_cluster_freezes_bootstrap_until_unpaused(
    capi: Capi, start_bootstrap_manager: Callable[[str], Manager]
) -> None:
    capi.create_cluster("frozen", paused=True)
    manager = start_bootstrap_manager("bootstrap")
    manager.wait_ready()
    capi.create_machine("frozen", "cp-0", control_plane=True)

    def paused() -> bool:
        condition = condition_of(capi.config("cp-0"), "Paused") or {}
        return condition.get("status") == "True"

    eventually(paused, "Paused=True on the config")
    config = capi.config("cp-0")
    assert capi.ready("cp-0") is None and "dataSecretName" not in config["status"]
    assert "observedGeneration" not in config["status"]
    assert capi.secret("cp-0") is None and capi.secret("frozen-ca") is None
    assert capi.config_map("frozen-lock") is None

    capi.set_cluster_paused("frozen", False)
    eventually(lambda: capi.infrastructure_provisioned("frozen"), "CAPI: infrastructure provisioned")
    await_reason(capi, "cp-0", "DataSecretAvailable", manager)
    assert (condition_of(capi.config("cp-0"), "Paused") or {}).get("status") == "False"
    assert manager.stop() == 0


def test_manager_killed_mid_way_converges_after_restart_without_duplicates(
    capi: Capi, start_bootstrap_manager: Callable[[str], Manager]
) -> None:
    capi.create_cluster("crash")
    eventually(lambda: capi.infrastructure_provisioned("crash"), "CAPI: infrastructure provisioned")
    names = [f"cp-{i}" for i in range(3)] + [f"w-{i}" for i in range(3)]
    for name in names:
        capi.create_machine("crash", name, control_plane=name.startswith("cp"))
    first = start_bootstrap_manager("first")
    # Kill as soon as the manager has begun writing anything of this cluster.
    eventually(
        lambda: capi.secret("crash-ca") is not None or capi.config_map("crash-lock") is not None,
        "the first writes",
        every=0.02,
    )
    first.process.stop(timeout=5, sig=signal.SIGKILL)
    ca_before = capi.secret("crash-ca")

    second = start_bootstrap_manager("second")
    second.wait_ready()
    capi.initialise_control_plane("crash")
    for name in names:
        await_reason(capi, name, "DataSecretAvailable", second)

    inits = [
        n for n in names if n.startswith("cp") and "--cluster-init" in _cloud_config(capi, n)["k3s"]["args"]
    ]
    # At most one initialiser (none if the control plane was marked initialised before
    # any server got the lock), and the CA written before the crash was kept.
    assert len(inits) <= 1
    if ca_before is not None:
        assert capi.secret("crash-ca").metadata.uid == ca_before.metadata.uid  # type: ignore[union-attr]
    secrets = capi.core.list_namespaced_secret(capi.namespace, label_selector=f"{CLUSTER_NAME}=crash").items
    assert sorted(s.metadata.name for s in secrets) == sorted(
        [*names, *(f"crash-{s}" for s in ("ca", "cca", "etcd", "etcd-peer", "proxy", "sa", "token"))]
    )
    tokens = {_files(_cloud_config(capi, n))["/etc/rancher/k3s/cluster-api/token"] for n in names}
    assert tokens == {capi.secret_data("crash-token").encode() + b"\n"}
    assert second.stop() == 0
