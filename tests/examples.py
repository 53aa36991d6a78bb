"""Good and bad objects of every kind, shared by the unit tests (the models) and the
integration tests (the real API server with the generated CRDs): both must agree."""

from __future__ import annotations

import copy
from typing import Any

from capi_c3os.api import (
    C3osCluster,
    C3osClusterTemplate,
    C3osConfig,
    C3osConfigTemplate,
    C3osControlPlane,
    C3osControlPlaneTemplate,
    C3osHost,
    C3osMachine,
    C3osMachineTemplate,
    KubeObject,
)

SHA256 = "a" * 64
META = {"name": "x", "namespace": "default"}

MACHINE_SPEC: dict[str, Any] = {
    "backend": {"libvirt": {"firmware": "uefi"}},
    "image": {"url": "https://images.example/c3os.qcow2", "checksum": SHA256},
    "cpus": 2,
    "memoryMiB": 2048,
    "diskGiB": 30,
}
CLUSTER_SPEC: dict[str, Any] = {
    "controlPlaneEndpoint": {"host": "10.0.0.10", "port": 6443},
    "sites": [
        {
            "name": "lab",
            "libvirt": {"uri": "qemu+ssh://root@127.0.0.1:9/system", "credentialsSecretRef": {"name": "ssh"}},
        },
        # Loopback, closed ports: tests that run a manager on these objects must send
        # nothing anywhere else (not even a DNS query for a made-up host name).
        {"name": "rack", "controlPlane": False, "ironic": {"endpoint": "https://127.0.0.1:9"}},
    ],
    "defaultSite": "lab",
}
CONFIG_SPEC: dict[str, Any] = {
    "k3s": {
        "args": ["--flannel-backend=wireguard-native"],
        "nodeLabels": {"site": "lab"},
        "nodeTaints": [{"key": "dedicated", "value": "edge", "effect": "NoSchedule"}],
        "kubeletArgs": ["max-pods=200"],
        "registries": {"mirrors": {"docker.io": {"endpoints": ["https://mirror.local"]}}},
        "server": {
            "tlsSANs": ["api.example"],
            "clusterCIDR": "10.42.0.0/16",
            "serviceCIDR": "10.43.0.0/16",
            "disableComponents": ["traefik", "servicelb"],
            "etcd": {"snapshotRetention": 5},
            "systemDefaultRegistry": "registry.local:5000",
            "kubeVIP": {"interface": "eth0"},
        },
    },
    "hostname": "node-1",
    "users": [{"name": "kairos", "groups": ["admin"], "sshAuthorizedKeys": ["ssh-ed25519 AAAA me@host"]}],
    "install": {"device": "/dev/vda"},
    "files": [
        {"path": "/etc/motd", "content": "hello", "permissions": "0644"},
        {"path": "/etc/secret", "contentFrom": {"secret": {"name": "s", "key": "k"}}, "permissions": "0600"},
    ],
    "stages": {"boot": [{"name": "say hi", "commands": ["echo hi"], "if": "[ -e /x ]"}]},
    "p2p": {"networkTokenSecretRef": {"name": "p2p", "key": "token"}},
    "providerIDFallback": "k3s://{{hostname}}",
}
CONTROL_PLANE_SPEC: dict[str, Any] = {
    "replicas": 3,
    "version": "v1.33.4+k3s1",
    "machineTemplate": {
        "metadata": {"labels": {"tier": "cp"}},
        "spec": {
            "infrastructureRef": {
                "apiGroup": "infrastructure.cluster.x-k8s.io",
                "kind": "C3osMachineTemplate",
                "name": "cp",
            },
            "deletion": {"nodeDrainTimeoutSeconds": 300},
        },
    },
    "serverConfig": CONFIG_SPEC,
    "rollout": {"after": "2025-06-01T00:00:00Z", "strategy": {"rollingUpdate": {"maxSurge": 0}}},
    "remediation": {"maxRetry": 3, "retryPeriodSeconds": 60},
}

GOOD: dict[type[KubeObject], dict[str, Any]] = {
    C3osCluster: {"spec": CLUSTER_SPEC},
    C3osClusterTemplate: {"spec": {"template": {"spec": CLUSTER_SPEC}}},
    C3osMachine: {"spec": MACHINE_SPEC},
    C3osMachineTemplate: {"spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": MACHINE_SPEC}}},
    C3osConfig: {"spec": CONFIG_SPEC},
    C3osConfigTemplate: {"spec": {"template": {"spec": CONFIG_SPEC}}},
    C3osControlPlane: {"spec": CONTROL_PLANE_SPEC},
    C3osControlPlaneTemplate: {"spec": {"template": {"spec": {"serverConfig": CONFIG_SPEC}}}},
    C3osHost: {"spec": {"accepted": True}},
}

ENROLLED_SITE: dict[str, Any] = {
    "name": "shop",
    "controlPlane": False,
    "enrolled": {
        "pool": "shop-floor",
        "registrationTokenSecretRef": {"name": "shop-token"},
        "acceptance": "Token",
    },
}
ENROLLED_MACHINE: dict[str, Any] = {
    "hostSelector": {
        "matchLabels": {"host.c3os.io/arch": "amd64"},
        "matchExpressions": [
            {"key": "host.c3os.io/memory-gib", "operator": "In", "values": ["16", "32"]},
            {"key": "host.c3os.io/tpm", "operator": "Exists"},
        ],
    },
    "installDisk": {"deviceName": "/dev/nvme0n1", "minSizeGiB": 100, "rotational": False},
}
"""An enrolled site and a machine for it, accepted by models and server alike."""


def wire(model: type[KubeObject], body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": model.api_version_string(), "kind": model.KIND, "metadata": dict(META), **body}


def with_change(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of base with the dotted path set (value None removes the key)."""
    result = copy.deepcopy(base)
    node: Any = result
    *parents, last = path.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    target: int | str = int(last) if isinstance(node, list) else last
    if value is None:
        del node[target]
    else:
        node[target] = value
    return result


# Label maps Kubernetes accepts, at the limits: prefix 253, name 63, value 63, empty value.
GOOD_LABELS: list[dict[str, str]] = [
    {"topology.kubernetes.io/zone": "edge-1", "node-role.example.com/worker": ""},
    {("a" * 50 + ".") * 4 + "a" * 49 + "/" + "n" * 63: "v" * 63},
    {"A_b.c-D": "x_Y.z-9"},
]

BAD: list[tuple[str, type[KubeObject], str, Any]] = [
    ("two backends", C3osMachine, "spec.backend", {"libvirt": {}, "ironic": {}}),
    ("no backend", C3osMachine, "spec.backend", {}),
    ("bad firmware enum", C3osMachine, "spec.backend", {"libvirt": {"firmware": "coreboot"}}),
    ("negative disk", C3osMachine, "spec.diskGiB", -1),
    ("zero cpus", C3osMachine, "spec.cpus", 0),
    ("huge memory", C3osMachine, "spec.memoryMiB", 10**9),
    ("image url without checksum", C3osMachine, "spec.image", {"url": "https://x/y.qcow2"}),
    (
        "image url and volume",
        C3osMachine,
        "spec.image",
        {"volume": "base", "url": "https://x", "checksum": SHA256},
    ),
    (
        "sha512 with a sha256 digest",
        C3osMachine,
        "spec.image",
        {"url": "https://x", "checksum": SHA256, "checksumAlgorithm": "sha512"},
    ),
    ("bad image format", C3osMachine, "spec.image", {"volume": "base", "format": "vmdk"}),
    ("lowercase trait", C3osMachine, "spec.backend", {"ironic": {"traits": ["custom_gpu"]}}),
    ("nic on network and bridge", C3osMachine, "spec.backend", {"libvirt": {"networkInterfaces": [{}]}}),
    ("providerID in a template", C3osMachineTemplate, "spec.template.spec.providerID", "c3os://a/b"),
    ("providerID of another machine", C3osMachine, "spec.providerID", "c3os://default/victim"),
    ("providerID of another scheme", C3osMachine, "spec.providerID", "aws:///us-east-1a/x"),
    ("providerID with a path", C3osMachine, "spec.providerID", "c3os://default/victim/x"),
    ("providerID without namespace", C3osMachine, "spec.providerID", "c3os:///x"),
    ("providerID of a made-up host", C3osMachine, "spec.providerID", "c3os://default/host-nuc/x"),
    (
        "providerID of another on a host",
        C3osMachine,
        "spec.providerID",
        "c3os://default/host-4c4c4544-0031-4a10-8044-b4c04f4a3032/victim",
    ),
    ("site with two kinds", C3osCluster, "spec.sites.0.ironic", {"endpoint": "https://i"}),
    ("site with no kind", C3osCluster, "spec.sites.0.libvirt", None),
    ("unencrypted libvirt tcp", C3osCluster, "spec.sites.0.libvirt", {"uri": "qemu+tcp://h/system"}),
    ("default site unknown", C3osCluster, "spec.defaultSite", "nowhere"),
    ("no sites", C3osCluster, "spec.sites", []),
    ("site ironic and enrolled", C3osCluster, "spec.sites.1.enrolled", ENROLLED_SITE["enrolled"]),
    (
        "pool not a DNS label",
        C3osCluster,
        "spec.sites.1",
        {**ENROLLED_SITE, "enrolled": {**ENROLLED_SITE["enrolled"], "pool": "Shop_Floor"}},
    ),
    (
        "enrolled site without token",
        C3osCluster,
        "spec.sites.1",
        {**ENROLLED_SITE, "enrolled": {"pool": "p"}},
    ),
    (
        "unknown acceptance",
        C3osCluster,
        "spec.sites.1",
        {**ENROLLED_SITE, "enrolled": {**ENROLLED_SITE["enrolled"], "acceptance": "Always"}},
    ),
    ("libvirt and enrolled", C3osMachine, "spec.backend", {"libvirt": {}, "enrolled": {}}),
    (
        "In without values",
        C3osMachine,
        "spec.backend",
        {
            "enrolled": {
                "hostSelector": {"matchExpressions": [{"key": "host.c3os.io/arch", "operator": "In"}]}
            }
        },
    ),
    (
        "Exists with values",
        C3osMachine,
        "spec.backend",
        {
            "enrolled": {
                "hostSelector": {
                    "matchExpressions": [
                        {"key": "host.c3os.io/tpm", "operator": "Exists", "values": ["true"]}
                    ]
                }
            }
        },
    ),
    (
        "selector operator Gt",
        C3osMachine,
        "spec.backend",
        {
            "enrolled": {
                "hostSelector": {
                    "matchExpressions": [{"key": "host.c3os.io/cpus", "operator": "Gt", "values": ["4"]}]
                }
            }
        },
    ),
    (
        "selector value with a space",
        C3osMachine,
        "spec.backend",
        {"enrolled": {"hostSelector": {"matchLabels": {"host.c3os.io/product": "a b"}}}},
    ),
    (
        "install disk not a device",
        C3osMachine,
        "spec.backend",
        {"enrolled": {"installDisk": {"deviceName": "sda"}}},
    ),
    ("install disk of 0 GiB", C3osMachine, "spec.backend", {"enrolled": {"installDisk": {"minSizeGiB": 0}}}),
    ("host accepted not a bool", C3osHost, "spec.accepted", "maybe"),
    ("no control-plane site", C3osCluster, "spec.sites.0.controlPlane", False),
    ("keystone without credentials", C3osCluster, "spec.sites.1.ironic.authType", "keystone"),
    ("site name not a DNS label", C3osCluster, "spec.sites.0.name", "Lab_1"),
    ("even replicas", C3osControlPlane, "spec.replicas", 2),
    ("too many replicas", C3osControlPlane, "spec.replicas", 7),
    ("zero replicas", C3osControlPlane, "spec.replicas", 0),
    ("version without v", C3osControlPlane, "spec.version", "1.33.4"),
    ("version with other distro", C3osControlPlane, "spec.version", "v1.33.4+rke2r1"),
    ("max surge 2", C3osControlPlane, "spec.rollout.strategy.rollingUpdate.maxSurge", 2),
    ("no infrastructure ref", C3osControlPlane, "spec.machineTemplate.spec.infrastructureRef", None),
    ("cluster-init given by hand", C3osConfig, "spec.k3s.args", ["--cluster-init"]),
    ("server given by hand", C3osConfig, "spec.k3s.server.args", ["--server=https://x:6443"]),
    ("flag with separate value", C3osConfig, "spec.k3s.args", ["--node-ip", "10.0.0.1"]),
    # provider-kairos puts k3s args unquoted into systemd's ExecStart= (issue 14).
    ("k3s arg value with a space", C3osConfig, "spec.k3s.args", ["--node-label=a=b c"]),
    ("k3s arg value with a dollar", C3osConfig, "spec.k3s.server.args", ["--etcd-arg=x=$HOME"]),
    ("k3s arg value with a percent", C3osConfig, "spec.k3s.args", ["--node-name=%H"]),
    ("k3s arg value with a quote", C3osConfig, "spec.k3s.args", ['--node-name="x"']),
    ("kube-vip address not an IP", C3osConfig, "spec.k3s.server.kubeVIP.address", "api.edge"),
    ("kube-vip image with a space", C3osConfig, "spec.k3s.server.kubeVIP.image", "a b"),
    ("provider-id kubelet arg", C3osConfig, "spec.k3s.kubeletArgs", ["provider-id=x"]),
    ("bad taint effect", C3osConfig, "spec.k3s.nodeTaints.0.effect", "Sometimes"),
    ("unknown component", C3osConfig, "spec.k3s.server.disableComponents", ["kube-proxy"]),
    ("relative file path", C3osConfig, "spec.files.0.path", "etc/motd"),
    ("file path escaping", C3osConfig, "spec.files.0.path", "/etc/../root/.ssh/authorized_keys"),
    ("file with two sources", C3osConfig, "spec.files.0.contentFrom", {"secret": {"name": "s", "key": "k"}}),
    ("file mode not octal", C3osConfig, "spec.files.0.permissions", "0999"),
    ("file path with a newline", C3osConfig, "spec.files.0.path", "/etc/motd\n/root/.ssh/authorized_keys"),
    ("file path with a tab", C3osConfig, "spec.files.0.path", "/etc/mo\ttd"),
    ("file path with a DEL", C3osConfig, "spec.files.0.path", "/etc/motd\x7f"),
    ("label key with a space", C3osConfig, "spec.k3s.nodeLabels", {"bad key": "x"}),
    ("label key with a newline", C3osConfig, "spec.k3s.nodeLabels", {"site\nrole": "x"}),
    ("label key name of 64", C3osConfig, "spec.k3s.nodeLabels", {"a" * 64: "x"}),
    ("label key prefix over 253", C3osConfig, "spec.k3s.nodeLabels", {("a" * 50 + ".") * 5 + "abc/k": "x"}),
    ("label key uppercase prefix", C3osConfig, "spec.k3s.nodeLabels", {"Example.com/k": "x"}),
    ("label key empty name", C3osConfig, "spec.k3s.nodeLabels", {"example.com/": "x"}),
    ("label value of 64", C3osConfig, "spec.k3s.nodeLabels", {"k": "v" * 64}),
    ("label value with a space", C3osConfig, "spec.k3s.nodeLabels", {"k": "a b"}),
    ("label value ending in a dash", C3osConfig, "spec.k3s.nodeLabels", {"k": "a-"}),
    ("label value with a newline", C3osConfig, "spec.k3s.nodeLabels", {"k": "a\nb"}),
    ("taint key name of 64", C3osConfig, "spec.k3s.nodeTaints.0.key", "a" * 64),
    ("taint key prefix over 253", C3osConfig, "spec.k3s.nodeTaints.0.key", ("a" * 50 + ".") * 5 + "abc/k"),
    ("taint value with a colon", C3osConfig, "spec.k3s.nodeTaints.0.value", "edge:NoExecute"),
    ("taint value with a newline", C3osConfig, "spec.k3s.nodeTaints.0.value", "edge\nx"),
    ("reboot and poweroff", C3osConfig, "spec.install.poweroff", True),
    ("multi-line ssh key", C3osConfig, "spec.users.0.sshAuthorizedKeys", ["ssh-ed25519 A\nssh-rsa B"]),
    ("bad user name", C3osConfig, "spec.users.0.name", "Root User"),
    ("p2p without token", C3osConfig, "spec.p2p.networkTokenSecretRef", None),
]
