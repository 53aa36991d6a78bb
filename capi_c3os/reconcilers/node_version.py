"""Does the Node run the version its Machine wants? Shared by the C3osMachine (which
reads what CAPI copied from the Node into `Machine.status.nodeInfo`) and the control
plane (which reads the workload cluster's Nodes itself).

A mismatch is never healed by replacing the Machine: the next one boots the same image.
So it is reported (condition `VersionMismatch`, naming the image and both versions) and
the Machine is not counted up to date, but not replaced; the fix is an image for the
wanted version in the machine template (README: "How versions map to images").
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from capi_c3os.backends.images import shown
from capi_c3os.capi import conditions as cond
from capi_c3os.capi.versions import (
    NODE_VERSION_UNKNOWN,
    VERSION_MATCHES,
    VERSION_MISMATCH,
    matches,
    mismatch_message,
    version_from_image_name,
)


def describe_image(infra_spec: dict[str, Any] | None) -> str:
    """The image of an infrastructure machine, for messages (URLs without user info or
    query). Other providers' machines have no `spec.image`: named by what we know."""
    image = (infra_spec or {}).get("image")
    if isinstance(image, dict):
        if image.get("url"):
            return shown(str(image["url"]))
        if image.get("volume"):
            return f"volume {image['volume']}"
    return "(unknown image)"


def template_mismatch(version: str, template: dict[str, Any] | None) -> str | None:
    """Before any machine is made from an infrastructure template: the message when its
    image's name says (Kairos style, `...-k3sv1.33.4-k3s1...`) it ships another k3s than
    `version`, else None (also for names that say nothing: only the Node can tell then)."""
    spec = (((template or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    image = spec.get("image")
    if not isinstance(image, dict):
        return None
    named = str(image.get("url") or image.get("volume") or "")
    ships = version_from_image_name(named)
    if ships is None or matches(version, ships):
        return None
    name = ((template or {}).get("metadata") or {}).get("name")
    return (
        f"the image of template {name}, {describe_image(spec)}, ships {ships} by its name, "
        f"the version is {version}: no server is replaced until the template names an image of {version}"
    )


def wanted_version(machine: dict[str, Any]) -> str | None:
    version = (machine.get("spec") or {}).get("version")
    return str(version) if version else None


def reported_version(machine: dict[str, Any]) -> str | None:
    """The kubelet version CAPI copied from the Machine's Node."""
    info = (machine.get("status") or {}).get("nodeInfo") or {}
    version = info.get("kubeletVersion")
    return str(version) if version else None


def mismatch(machine: dict[str, Any], running: str | None, image: str) -> str | None:
    """The message when the Node runs another version than the Machine wants, else None
    (also when either is unknown: nothing to compare yet)."""
    wanted = wanted_version(machine)
    if not wanted or not running or matches(wanted, running):
        return None
    return mismatch_message(image, running, wanted)


def condition(
    machine: dict[str, Any], running: str | None, image: str, generation: int | None, now: datetime
) -> cond.Condition:
    """`VersionMismatch`: True (reason VersionMismatch) with the message, False with
    VersionMatches or NodeVersionUnknown."""
    message = mismatch(machine, running, image)
    if message is not None:
        return cond.new_condition(
            VERSION_MISMATCH, cond.TRUE, VERSION_MISMATCH, message, generation=generation, now=now
        )
    wanted = wanted_version(machine)
    if running and wanted:
        return cond.new_condition(
            VERSION_MISMATCH,
            cond.FALSE,
            VERSION_MATCHES,
            f"the Node runs {running}",
            generation=generation,
            now=now,
        )
    why = "no version wanted" if not wanted else "no Node has reported a kubelet version yet"
    return cond.new_condition(
        VERSION_MISMATCH, cond.FALSE, NODE_VERSION_UNKNOWN, why, generation=generation, now=now
    )
