"""Kubernetes versions as CAPI and k3s spell them, and what a Node reports against what
its Machine wants.

On c3os/Kairos k3s is part of the OS image (the standard images are tagged with it,
`...-k3sv1.33.4-k3s1`): a Machine's `spec.version` is only a wish, the image decides.
So after a Node joins we compare its `status.nodeInfo.kubeletVersion` (k3s reports
`v1.33.4+k3s1`) with the Machine's `spec.version`, and the control plane's
`status.versions` counts what the Nodes run (CAPI v1.14 control-plane contract; KCP's
`internal/util/version.VersionsFromMachines` likewise prefers the Node's kubelet version
over the Machine's spec).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

VERSION_MISMATCH = "VersionMismatch"
"""Condition type (True: a Node runs another version than its Machine wants) and reason."""
VERSION_MATCHES = "VersionMatches"
NODE_VERSION_UNKNOWN = "NodeVersionUnknown"
"""No Node yet, or one that reports no kubelet version: nothing to compare."""

_SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+(?P<build>[0-9A-Za-z.-]+))?$"
)
_KAIROS_TAG = re.compile(r"k3s(?P<core>v\d+\.\d+\.\d+(?:-rc\d+)?)-(?P<build>k3s\d+)")


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: str | None
    build: str | None

    @classmethod
    def parse(cls, text: str) -> Version | None:
        match = _SEMVER.match(text.strip())
        if match is None:
            return None
        return cls(
            int(match["major"]), int(match["minor"]), int(match["patch"]), match["pre"], match["build"]
        )

    def sort_key(self) -> tuple[object, ...]:
        # A release sorts after its pre-releases; build tags (k3s1 < k3s2) compare by
        # their numbers, as CAPI's version.Compare(..., WithBuildTags()) does.
        return (self.major, self.minor, self.patch, self.pre is None, _parts(self.pre), _parts(self.build))


def _parts(text: str | None) -> tuple[tuple[int, int | str], ...]:
    if not text:
        return ()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[A-Za-z]+", text))


def matches(wanted: str, running: str) -> bool:
    """Whether a Node running `running` is what a Machine wanting `wanted` asked for.
    A wanted version without build metadata (`v1.33.4`) accepts any k3s build of it;
    with it (`v1.33.4+k3s1`) only that build."""
    want, have = Version.parse(wanted), Version.parse(running)
    if want is None or have is None:
        return wanted.strip() == running.strip()
    if (want.major, want.minor, want.patch, want.pre) != (have.major, have.minor, have.patch, have.pre):
        return False
    return want.build is None or want.build == have.build


def mismatch_message(image: str, running: str, wanted: str) -> str:
    return f"image {image} runs {running}, Machine wants {wanted}"


def version_from_image_name(name: str) -> str | None:
    """The k3s version a Kairos-style image name carries (`...-k3sv1.33.4-k3s1...` ->
    `v1.33.4+k3s1`), or None."""
    match = _KAIROS_TAG.search(name)
    return f"{match['core']}+{match['build']}" if match else None


def image_tag(version: str) -> str:
    """The reverse: `v1.33.4+k3s1` -> `k3sv1.33.4-k3s1` (Kairos image tags have no `+`)."""
    return "k3s" + version.replace("+", "-")


def status_versions(versions: Iterable[str]) -> list[dict[str, object]]:
    """CAPI's `status.versions`: one entry per version with its count, oldest first
    (semver with build tags; unparsable ones last, in the order first seen)."""
    counts: dict[str, int] = {}
    for version in versions:
        if version:
            counts[version] = counts.get(version, 0) + 1
    order = {v: i for i, v in enumerate(counts)}

    def key(version: str) -> tuple[object, ...]:
        parsed = Version.parse(version)
        return (0, parsed.sort_key(), 0) if parsed else (1, (), order[version])

    return [{"version": v, "replicas": counts[v]} for v in sorted(counts, key=key)]


__all__ = [
    "NODE_VERSION_UNKNOWN",
    "VERSION_MATCHES",
    "VERSION_MISMATCH",
    "Version",
    "image_tag",
    "matches",
    "mismatch_message",
    "status_versions",
    "version_from_image_name",
]
