"""What the Ironic backend asks of Ironic for one machine: the allocation request, the node's
instance_info and the config drive. Pure functions of the intent, so unit-testable."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from capi_c3os.api.common import MachineAddress
from capi_c3os.api.infrastructure import IronicMachine, RootDeviceHints
from capi_c3os.backends.base import BackendError, MachineIdentity, MachineIntent

# Keys in the node's `extra` that tie a node to a machine while Ironic's own link
# (instance_uuid) is gone: from the start of undeploy until cleaning has finished.
MARKER = "c3os_machine"
PROVIDER_ID = "c3os_provider_id"
NAME = "c3os_name"
NAMESPACE = "c3os_namespace"
CLUSTER = "c3os_cluster"
DEPLOY_ATTEMPTS = "c3os_deploy_attempts"
CLEAN_ATTEMPTS = "c3os_clean_attempts"
OUR_EXTRA_KEYS = (MARKER, PROVIDER_ID, NAME, NAMESPACE, CLUSTER, DEPLOY_ATTEMPTS, CLEAN_ATTEMPTS)


def tags(identity: MachineIdentity, cluster: str) -> dict[str, str]:
    """Who the machine is, on the allocation and the node: enough to rebuild its identity
    (orphan sweeps) and for an operator reading Ironic."""
    found = {PROVIDER_ID: identity.provider_id, NAMESPACE: identity.namespace, NAME: identity.name}
    if cluster:
        found[CLUSTER] = cluster
    return found


def names(extra: Mapping[str, Any], identity: MachineIdentity) -> bool:
    """The tags name exactly this machine. The UUID alone is not enough: it is derived from
    the provider ID, which an object could claim for itself; namespace and name are its own."""
    found = (extra.get(PROVIDER_ID), extra.get(NAMESPACE), extra.get(NAME))
    return found == (identity.provider_id, identity.namespace, identity.name)


def marked_for(extra: Mapping[str, Any], identity: MachineIdentity) -> bool:
    """The node's extra says it is this machine's: written by its deploy or its undeploy."""
    return extra.get(MARKER) == identity.uuid and names(extra, identity)


def owner_label(*extras: Mapping[str, Any]) -> str:
    """Who the first tagged extra names, for messages (`namespace/name`)."""
    for extra in extras:
        owner = identity_from_tags(extra)
        if owner is not None:
            return f"{owner.namespace}/{owner.name}"
    return "an object this manager cannot name (no c3os tags)"


def attempts(extra: Mapping[str, Any], key: str, identity: MachineIdentity) -> int:
    """A counter of this machine's (`DEPLOY_ATTEMPTS`, `CLEAN_ATTEMPTS`): what another
    machine left on the node counts nothing."""
    if not marked_for(extra, identity):
        return 0
    try:
        return max(0, int(extra.get(key, 0)))
    except (TypeError, ValueError):
        return 0


def claim(
    extra: Mapping[str, Any], identity: MachineIdentity, values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """JSON patch writing the marker, the tags and `values` (more of our keys) in one
    request, and removing every other c3os key: what a machine torn down before left
    (counters, tags) must not be read as this machine's."""
    wanted: dict[str, Any] = {MARKER: identity.uuid, **tags(identity, ""), **values}
    patch: list[dict[str, Any]] = [
        {"op": "add", "path": f"/extra/{k}", "value": v} for k, v in wanted.items()
    ]
    patch += [
        {"op": "remove", "path": f"/extra/{k}"} for k in OUR_EXTRA_KEYS if k in extra and k not in wanted
    ]
    return patch


def identity_from_tags(extra: Mapping[str, Any]) -> MachineIdentity | None:
    values = [extra.get(PROVIDER_ID), extra.get(NAMESPACE), extra.get(NAME)]
    if not all(isinstance(v, str) and v for v in values):
        return None
    return MachineIdentity(namespace=str(values[1]), name=str(values[2]), provider_id=str(values[0]))


def machine_of(intent: MachineIntent) -> IronicMachine:
    if intent.ironic is None:
        raise BackendError(
            "WrongBackend",
            "the machine's site is an Ironic site but spec.backend.ironic is not set",
            retry_after=None,
        )
    return intent.ironic


def allocation_request(
    identity: MachineIdentity, machine: IronicMachine, cluster: str = ""
) -> dict[str, Any]:
    """Named and numbered after the machine: a repeated request is refused by Ironic (409)
    instead of taking a second node, and the node's instance_uuid becomes identity.uuid."""
    request: dict[str, Any] = {
        "name": identity.resource_name,
        "uuid": identity.uuid,
        "resource_class": machine.resource_class,
        "extra": tags(identity, cluster),
    }
    if machine.traits:
        request["traits"] = list(machine.traits)
    if machine.candidate_nodes:
        request["candidate_nodes"] = list(machine.candidate_nodes)
    return request


def deploy_interface_for(machine: IronicMachine, image_format: str, current: str | None) -> str | None:
    """The deploy interface the node must have, or None to keep the node's own. An explicit
    choice wins; otherwise only an interface that cannot deploy the image is changed."""
    if machine.deploy_interface is not None:
        return machine.deploy_interface
    if image_format == "iso":
        return "ramdisk" if current not in ("ramdisk", "fake") else None
    return "direct" if current == "ramdisk" else None


def instance_info(intent: MachineIntent) -> dict[str, Any]:
    machine = machine_of(intent)
    image = intent.image
    if image.url is None:
        raise BackendError(
            "UnsupportedImage",
            "Ironic machines need image.url (an http(s) or file URL the conductor can read); "
            "image.volume is for libvirt sites only",
            retry_after=None,
        )
    info: dict[str, Any] = {}
    if image.format == "iso":
        # The ramdisk deploy boots the live ISO, which installs c3os by itself.
        info["boot_iso"] = image.url
    else:
        info["image_source"] = image.url
        info["image_disk_format"] = image.format
        if image.checksum:
            info["image_os_hash_algo"] = image.checksum_algorithm
            info["image_os_hash_value"] = image.checksum
    if machine.root_device_hints is not None:
        hints = root_device(machine.root_device_hints)
        if hints:
            info["root_device"] = hints
    if machine.boot_mode is not None:
        info["capabilities"] = {"boot_mode": machine.boot_mode}
    if machine.traits:
        # Required traits in instance_info select Ironic deploy templates, as Nova does.
        info["traits"] = list(machine.traits)
    info["display_name"] = intent.hostname
    return info


def root_device(hints: RootDeviceHints) -> dict[str, Any]:
    """Ironic's root_device hints from ours (names as Ironic spells them)."""
    out: dict[str, Any] = {}
    if hints.device_name:
        key = "by_path" if hints.device_name.startswith("/dev/disk/by-path/") else "name"
        out[key] = hints.device_name
    if hints.min_size_gigabytes is not None:
        out["size"] = f">= {hints.min_size_gigabytes}"
    simple = {
        "hctl": hints.hctl,
        "model": hints.model,
        "vendor": hints.vendor,
        "serial": hints.serial_number,
        "wwn": hints.wwn,
        "wwn_with_extension": hints.wwn_with_extension,
        "wwn_vendor_extension": hints.wwn_vendor_extension,
    }
    out.update({k: v for k, v in simple.items() if v is not None})
    if hints.rotational is not None:
        out["rotational"] = hints.rotational
    return out


def configdrive(intent: MachineIntent) -> dict[str, Any]:
    """Ironic builds the config-2 drive from this (API >= 1.56). meta_data carries the
    identity the node's bootstrap reads: uuid/instance-id and provider-id."""
    try:
        user_data = intent.user_data.decode("utf-8")
    except UnicodeDecodeError:
        raise BackendError(
            "InvalidBootstrapData",
            "the bootstrap data is not UTF-8 text; Ironic's config drive carries user_data as text",
            retry_after=None,
        ) from None
    identity = intent.identity
    meta: dict[str, Any] = {
        "uuid": identity.uuid,
        "instance-id": identity.uuid,
        "hostname": intent.hostname,
        "name": intent.hostname,
        "local-hostname": intent.hostname,
        "provider-id": identity.provider_id,
    }
    meta.update(dict(intent.meta_data))
    drive: dict[str, Any] = {"user_data": user_data, "meta_data": meta}
    if intent.network_config is not None:
        drive["network_data"] = dict(intent.network_config)
    return drive


def addresses(intent: MachineIntent) -> tuple[MachineAddress, ...]:
    """Standalone Ironic knows no IP addresses of its nodes; what is known is the hostname
    and any static addresses the network_data gives the node."""
    found: list[MachineAddress] = [MachineAddress(type="Hostname", address=intent.hostname)]
    for net in _networks(intent.network_config):
        ip = net.get("ip_address")
        if isinstance(ip, str):
            try:
                parsed = ipaddress.ip_address(ip.split("/")[0])
            except ValueError:
                continue
            kind = "ExternalIP" if parsed.is_global else "InternalIP"
            found.append(MachineAddress(type=kind, address=str(parsed)))
    return tuple(found)


def _networks(network_data: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not network_data:
        return []
    nets = network_data.get("networks")
    return [n for n in nets if isinstance(n, Mapping)] if isinstance(nets, list) else []
