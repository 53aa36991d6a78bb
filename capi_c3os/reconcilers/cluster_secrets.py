"""The cluster's certificate authorities and k3s join token, created if absent.

The bootstrap provider (for the first server's data) and the control-plane provider
(for the kubeconfig) both need them and either may get there first, so both call
`ensure_cluster_secrets`. It is safe to run concurrently and to crash at any line:
each Secret is read first, created only when absent (the API server lets exactly one
create win; a loser re-reads the winner's Secret), and the token is derived from the
server CA that actually won, so the pair always matches.

| Secret | keys | on the first server |
|---|---|---|
| `<cluster>-ca` | `tls.crt`, `tls.key` | server CA, `server/tls/server-ca.{crt,key}` |
| `<cluster>-cca` | `tls.crt`, `tls.key` | client CA, `server/tls/client-ca.{crt,key}` |
| `<cluster>-etcd` | `tls.crt`, `tls.key` | etcd server CA, `server/tls/etcd/server-ca.{crt,key}` |
| `<cluster>-etcd-peer` | `tls.crt`, `tls.key` | etcd peer CA, `server/tls/etcd/peer-ca.{crt,key}` |
| `<cluster>-proxy` | `tls.crt`, `tls.key` | front-proxy CA, `server/tls/request-header-ca.{crt,key}` |
| `<cluster>-sa` | `tls.crt` (public), `tls.key` | service-account signing key, `server/tls/service.key` |
| `<cluster>-token` | `value` | `K10<sha256 of the server CA PEM>::server:<secret>` |

All of type `cluster.x-k8s.io/secret`, labelled `cluster.x-k8s.io/cluster-name`, with an
ownerReference to the Cluster (not a controller reference: the control plane may take
that), so `clusterctl move` carries them and deleting the Cluster deletes them.

`-proxy` and `-sa` are named as Cluster API's kubeadm control plane names them; without
`-etcd-peer`, `-proxy` and `-sa` k3s would generate those on the first server and keep
them only in its datastore, so the cluster could not be recreated from these Secrets.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from capi_c3os.bootstrap.certificates import KeyPair, new_ca, new_service_account_key
from capi_c3os.bootstrap.cloudconfig import ClusterCAs
from capi_c3os.bootstrap.tokens import new_secret, pinned_token, pins
from capi_c3os.capi.metadata import CLUSTER_NAME_LABEL, CLUSTER_SECRET_TYPE, CORE_API_VERSION
from capi_c3os.reconcilers.kube import SECRETS, ConflictError, Kube
from capi_c3os.reconcilers.view import ClusterView

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
TOKEN_KEY = "value"

CA_PURPOSES = {
    "ca": "server", "cca": "client", "etcd": "etcd", "etcd-peer": "etcd-peer", "proxy": "request-header",
}  # fmt: skip
"""Secret-name suffix -> which CA."""
SA_SUFFIX = "sa"


class ClusterSecretsError(RuntimeError):
    """A cluster Secret exists but cannot be used (malformed, or a token that does not
    pin the server CA). Waiting will not fix it; the message says which Secret."""


def ca_secret_name(cluster: str, suffix: str) -> str:
    return f"{cluster}-{suffix}"


def token_secret_name(cluster: str) -> str:
    return f"{cluster}-token"


@dataclass(frozen=True)
class ClusterSecrets:
    cas: ClusterCAs = field(repr=False)
    token: str = field(repr=False)
    created: tuple[str, ...] = ()
    """Names of the Secrets this call created (the rest existed)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _decoded(secret: dict[str, Any], key: str, name: str) -> bytes:
    data = secret.get("data") or {}
    if key not in data:
        raise ClusterSecretsError(f"Secret {name} has no key {key}")
    return base64.b64decode(data[key])


def _body(cluster: dict[str, Any], name: str, data: dict[str, bytes]) -> dict[str, Any]:
    meta = cluster["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": CLUSTER_SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {CLUSTER_NAME_LABEL: meta["name"]},
            "ownerReferences": [
                {
                    "apiVersion": cluster.get("apiVersion") or CORE_API_VERSION,
                    "kind": "Cluster",
                    "name": meta["name"],
                    "uid": meta["uid"],
                }
            ],
        },
        "data": {key: _b64(value) for key, value in data.items()},
    }


def _get_or_create(
    kube: Kube, view: ClusterView | None, cluster: dict[str, Any], name: str, make: Any, created: list[str]
) -> dict[str, Any]:
    namespace = cluster["metadata"]["namespace"]
    # From the watch when it has the Secret (they never change once made); a GET
    # confirms absence before anything is created.
    existing = view.get(kube, SECRETS, namespace, name) if view else kube.get(SECRETS, namespace, name)
    if existing is not None:
        return existing
    try:
        result = kube.create(SECRETS, namespace, _body(cluster, name, make()))
    except ConflictError:
        # Someone (the other provider, another worker) created it since we looked.
        winner = kube.get(SECRETS, namespace, name)
        if winner is None:  # created and deleted in between: let the caller retry
            raise
        return winner
    created.append(name)
    return result


def _ca(secret: dict[str, Any], name: str) -> KeyPair:
    return KeyPair(_decoded(secret, TLS_CERT, name), _decoded(secret, TLS_KEY, name))


def _new_sa() -> dict[str, bytes]:
    """The key pair as kubeadm's `-sa` Secret holds it: public key PEM, private key PEM."""
    private = new_service_account_key()
    key = serialization.load_pem_private_key(private, password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {TLS_CERT: public, TLS_KEY: private}


def ensure_cluster_secrets(
    kube: Kube, cluster: dict[str, Any], view: ClusterView | None = None
) -> ClusterSecrets:
    """Read (or create) the CAs, the service-account key and the token of `cluster` (a CAPI Cluster as the
    API server returns it), through `view` when given. Raises `ClusterSecretsError` for unusable Secrets and
    `ConflictError` when it should simply run again."""
    name = cluster["metadata"]["name"]
    created: list[str] = []
    pairs: dict[str, KeyPair] = {}
    for suffix, purpose in CA_PURPOSES.items():
        secret_name = ca_secret_name(name, suffix)

        def make(purpose: str = purpose) -> dict[str, bytes]:
            pair = new_ca(f"k3s-{purpose}-ca@{name}")
            return {TLS_CERT: pair.cert_pem, TLS_KEY: pair.key_pem}

        pairs[purpose] = _ca(_get_or_create(kube, view, cluster, secret_name, make, created), secret_name)
    server_ca = pairs["server"].cert_pem
    token_name = token_secret_name(name)
    token_secret = _get_or_create(
        kube,
        view,
        cluster,
        token_name,
        lambda: {TOKEN_KEY: pinned_token(server_ca, new_secret()).encode()},
        created,
    )
    token = _decoded(token_secret, TOKEN_KEY, token_name).decode().strip()
    if not pins(token, server_ca):
        raise ClusterSecretsError(
            f"Secret {token_name} does not hold a K10 token pinned to the CA in Secret "
            f"{ca_secret_name(name, 'ca')}; delete it to have a matching one generated"
        )
    sa_name = ca_secret_name(name, SA_SUFFIX)
    sa_key = _decoded(_get_or_create(kube, view, cluster, sa_name, _new_sa, created), TLS_KEY, sa_name)
    cas = ClusterCAs(
        server=pairs["server"],
        client=pairs["client"],
        etcd=pairs["etcd"],
        etcd_peer=pairs["etcd-peer"],
        request_header=pairs["request-header"],
        service_account_key=sa_key,
    )
    return ClusterSecrets(cas=cas, token=token, created=tuple(created))
