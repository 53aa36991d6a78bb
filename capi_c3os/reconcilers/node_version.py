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
