"""The C3osConfig reconciler and its helpers called in-process against the real API
server (with the real CAPI core manager linking Machines and configs): concurrency and
crash points made deterministic by calling the pieces directly."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from capi_c3os.bootstrap.tokens import pins
from capi_c3os.capi.outcome import Outcome
from capi_c3os.operator.handlers.bootstrap import C3OS_CONFIG
from capi_c3os.reconcilers import c3osconfig, init_lock
from capi_c3os.reconcilers.cluster_secrets import ClusterSecretsError, ensure_cluster_secrets
from capi_c3os.reconcilers.kube import CLUSTERS, CONFIG_MAPS, SECRETS, ConflictError, Kube
from tests.integration.bootstrap.conftest import BOOTSTRAP, Capi
from tests.support import eventually

pytestmark = pytest.mark.integration


def _cluster(kube: Kube, capi: Capi, name: str) -> dict[str, Any]:
    capi.create_cluster(name)
    eventually(lambda: capi.infrastructure_provisioned(name), "CAPI: infrastructure provisioned")
    cluster = kube.get(CLUSTERS, capi.namespace, name)
    assert cluster is not None
    return cluster


def _linked(capi: Capi, name: str) -> dict[str, Any]:
    """The config once CAPI's Machine controller has made the Machine its owner."""

    def owned() -> dict[str, Any] | None:
        config = capi.config(name)
        refs = config["metadata"].get("ownerReferences") or []
        return config if any(r["kind"] == "Machine" for r in refs) else None

    return eventually(owned, f"CAPI to link Machine {name} and its config")


def _reconcile(kube: Kube, capi: Capi, name: str) -> Outcome:
    for _ in range(5):  # a 409 means: read again and retry, as the handler does
        try:
            return c3osconfig.reconcile(kube, C3OS_CONFIG, capi.config(name))
        except ConflictError:
            continue
    raise AssertionError("kept conflicting")


def test_core_objects_round_trip_and_errors_carry_no_secret_data(kube: Kube, namespace: str) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "b"}},
            "data": {"k": base64.b64encode(b"top-secret").decode()}}  # fmt: skip
    created = kube.create(SECRETS, namespace, body)
    assert created["metadata"]["uid"]
    with pytest.raises(ConflictError):
        kube.create(SECRETS, namespace, body)
    assert [s["metadata"]["name"] for s in kube.list(SECRETS, namespace, label_selector="a=b")] == ["s"]
    assert kube.list(SECRETS, namespace, label_selector="a=c") == []
    got = kube.get(SECRETS, namespace, "s")
    assert got is not None and got["kind"] == "Secret"
    bad = {**body, "metadata": {"name": "Not_Valid"}}
    with pytest.raises(ApiException) as raised:
        kube.create(SECRETS, namespace, bad)
    assert raised.value.status == 422 and "top-secret" not in str(raised.value)
    assert raised.value.body is None
    with pytest.raises(ConflictError):  # a stale resourceVersion
        kube.delete(SECRETS, namespace, "s", resource_version="1")
    assert kube.delete(SECRETS, namespace, "s") is True
    assert kube.delete(SECRETS, namespace, "s") is False
    assert kube.get(CONFIG_MAPS, namespace, "absent") is None


def test_cluster_secrets_created_once_under_concurrency_and_token_pins_the_ca(kube: Kube, capi: Capi) -> None:
    cluster = _cluster(kube, capi, "conc")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ensure_cluster_secrets(kube, cluster), range(8)))
    assert len({r.token for r in results}) == 1
    assert len({r.cas.server.cert_pem for r in results}) == 1
    created = [name for r in results for name in r.created]
    assert sorted(created) == sorted(  # each exactly once
        ["conc-ca", "conc-cca", "conc-etcd", "conc-etcd-peer", "conc-proxy", "conc-sa", "conc-token"]
    )
    assert pins(results[0].token, results[0].cas.server.cert_pem)
    assert ensure_cluster_secrets(kube, cluster).created == ()


def test_cluster_secrets_finish_what_a_crashed_run_started(kube: Kube, capi: Capi) -> None:
    cluster = _cluster(kube, capi, "half")
    ensure_cluster_secrets(kube, cluster)
    # As if the earlier run died after the CAs, before the token.
    ca_uid = kube.get(SECRETS, capi.namespace, "half-ca")["metadata"]["uid"]  # type: ignore[index]
    kube.delete(SECRETS, capi.namespace, "half-token")
    again = ensure_cluster_secrets(kube, cluster)
    assert again.created == ("half-token",)
    assert kube.get(SECRETS, capi.namespace, "half-ca")["metadata"]["uid"] == ca_uid  # type: ignore[index]
    assert pins(again.token, again.cas.server.cert_pem)


def test_a_token_that_does_not_pin_the_ca_is_reported_not_overwritten(kube: Kube, capi: Capi) -> None:
    cluster = _cluster(kube, capi, "wrong")
    kube.create(SECRETS, capi.namespace, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrong-token"},
        "data": {"value": base64.b64encode(b"K10" + b"0" * 64 + b"::server:abc").decode()},
    })  # fmt: skip
    with pytest.raises(ClusterSecretsError, match="wrong-token does not hold a K10 token pinned"):
        ensure_cluster_secrets(kube, cluster)


def test_concurrent_reconciles_of_three_servers_give_exactly_one_init(kube: Kube, capi: Capi) -> None:
    _cluster(kube, capi, "race")
    names = ["cp-0", "cp-1", "cp-2"]
    for name in names:
        capi.create_machine("race", name, control_plane=True)
    for name in names:
        _linked(capi, name)
    with ThreadPoolExecutor(3) as pool:
        outcomes = dict(zip(names, pool.map(lambda n: _reconcile(kube, capi, n), names), strict=True))
    done = [n for n, o in outcomes.items() if o.done]
    assert len(done) == 1, outcomes
    waiting = [o for o in outcomes.values() if o.waiting]
    assert {o.reason for o in waiting} == {"WaitingForControlPlaneInitialized"}
    assert all(f"Machine {done[0]} holds the init lock" in o.message for o in waiting)
    # Level-triggered: reconciling everything again changes nothing.
    again = {n: _reconcile(kube, capi, n) for n in names}
    assert [n for n, o in again.items() if o.done] == done


def test_reconcile_after_a_crash_between_lock_and_secret_still_initialises(kube: Kube, capi: Capi) -> None:
    cluster = _cluster(kube, capi, "lock")
    capi.create_machine("lock", "cp-0", control_plane=True)
    _linked(capi, "cp-0")
    machine = capi.machine("cp-0")
    assert machine is not None
    assert init_lock.acquire(kube, cluster, machine).held  # the run that crashed right after this
    outcome = _reconcile(kube, capi, "cp-0")
    assert outcome.done, outcome
    assert "--cluster-init" in capi.secret_data("cp-0")


def test_reconcile_adopts_its_secret_written_before_a_crash(kube: Kube, capi: Capi) -> None:
    _cluster(kube, capi, "adopt")
    capi.create_machine("adopt", "cp-0", control_plane=True)
    _linked(capi, "cp-0")
    assert _reconcile(kube, capi, "cp-0").done
    uid = capi.secret("cp-0").metadata.uid  # type: ignore[union-attr]
    # The crash: the Secret was created, the status never written.
    capi.patch(BOOTSTRAP, "c3osconfigs", "cp-0", {"status": None}, status=True)
    assert "dataSecretName" not in (capi.config("cp-0").get("status") or {})
    assert _reconcile(kube, capi, "cp-0").done
    status = capi.config("cp-0")["status"]
    assert status["dataSecretName"] == "cp-0" and status["initialization"] == {"dataSecretCreated": True}
    assert capi.secret("cp-0").metadata.uid == uid  # type: ignore[union-attr]


def test_a_foreign_secret_with_the_data_name_is_an_error_not_overwritten(kube: Kube, capi: Capi) -> None:
    _cluster(kube, capi, "taken")
    capi.core.create_namespaced_secret(
        capi.namespace, {"metadata": {"name": "cp-0"}, "stringData": {"x": "y"}}
    )
    capi.create_machine("taken", "cp-0", control_plane=True)
    _linked(capi, "cp-0")
    outcome = _reconcile(kube, capi, "cp-0")
    assert outcome.failed and outcome.reason == "DataSecretNameTaken"
    assert capi.ready("cp-0")["reason"] == "DataSecretNameTaken"  # type: ignore[index]
    assert capi.secret_data("cp-0", "x") == "y"


def test_missing_referenced_secret_waits_with_a_reason_then_renders(kube: Kube, capi: Capi) -> None:
    _cluster(kube, capi, "refs")
    spec = {"files": [{"path": "/etc/x", "contentFrom": {"secret": {"name": "later", "key": "k"}}}]}
    capi.create_machine("refs", "cp-0", control_plane=True, spec=spec)
    _linked(capi, "cp-0")
    outcome = _reconcile(kube, capi, "cp-0")
    assert outcome.waiting and outcome.reason == "WaitingForReferencedSecret"
    assert "Secret later referenced by the spec not found" in capi.ready("cp-0")["message"]  # type: ignore[index]
    capi.core.create_namespaced_secret(
        capi.namespace, {"metadata": {"name": "later"}, "stringData": {"j": "v"}}
    )
    outcome = _reconcile(kube, capi, "cp-0")
    assert outcome.waiting and outcome.reason == "InvalidConfig"
    assert "Secret 'later' has no key 'k'" in outcome.message
    capi.core.patch_namespaced_secret("later", capi.namespace, {"stringData": {"k": "v"}})
    assert _reconcile(kube, capi, "cp-0").done


def test_config_template_accepts_server_side_apply_dry_run(k8s: Any, capi: Capi) -> None:
    """What CAPI's topology controller does with a ClusterClass's bootstrap template."""
    templates = DynamicClient(k8s).resources.get(api_version="/".join(BOOTSTRAP), kind="C3osConfigTemplate")
    body = {
        "apiVersion": "/".join(BOOTSTRAP), "kind": "C3osConfigTemplate",
        "metadata": {"name": "workers", "namespace": capi.namespace},
        "spec": {"template": {"spec": {"k3s": {"nodeLabels": {"tier": "edge"}}}}},
    }  # fmt: skip
    dry = templates.server_side_apply(
        body=body,
        namespace=capi.namespace,
        field_manager="capi-topology",
        force_conflicts=True,
        dry_run="All",
    )
    assert dry.spec.template.spec.k3s.nodeLabels.tier == "edge"
    assert capi.get(BOOTSTRAP, "c3osconfigtemplates", "workers") is None  # dry run: nothing stored
    templates.server_side_apply(body=body, namespace=capi.namespace, field_manager="capi-topology")
    assert capi.get(BOOTSTRAP, "c3osconfigtemplates", "workers") is not None


def test_a_server_whose_cluster_read_predates_initialisation_joins_not_initialises(
    kube: Kube, capi: Capi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a crash test once hit: a reconcile reads the Cluster (not initialised),
    then the control plane is initialised and another reconcile releases the init lock;
    the first one finds the lock free. It must still join, never render a second
    `--cluster-init`."""
    stale = _cluster(kube, capi, "late")
    for name in ("cp-0", "cp-1"):
        capi.create_machine("late", name, control_plane=True)
        _linked(capi, name)
    assert _reconcile(kube, capi, "cp-0").done
    assert "--cluster-init" in capi.secret_data("cp-0")
    capi.initialise_control_plane("late")

    def initialised() -> dict[str, Any] | None:
        cluster = kube.get(CLUSTERS, capi.namespace, "late")
        status = (cluster or {}).get("status") or {}
        return cluster if (status.get("initialization") or {}).get("controlPlaneInitialized") else None

    init_lock.release(kube, eventually(initialised, "CAPI: control plane initialised"))
    # cp-1's reconcile read the Cluster before all that.
    monkeypatch.setattr(c3osconfig, "fetch_owner_cluster", lambda _kube, _obj: stale)
    assert _reconcile(kube, capi, "cp-1").done
    data = capi.secret_data("cp-1")
    assert "--cluster-init" not in data and "--server=https://" in data
    assert kube.get(CONFIG_MAPS, capi.namespace, init_lock.lock_name("late")) is None
