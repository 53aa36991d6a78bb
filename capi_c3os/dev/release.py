"""`make release VERSION=vX.Y.Z` (`python -m capi_c3os.dev.release vX.Y.Z`): what a
release publishes, flat in one directory (the assets of one GitHub release, which
clusterctl's GitHub provider reads for all three of our providers):

- `{infrastructure,bootstrap,control-plane}-components.yaml`: the generated components
  with the manager image `<image repository>:<version>`;
- `metadata.yaml`: the release series, with the version's major.minor;
- the cluster templates and ClusterClasses (`cluster-template-*.yaml`, `clusterclass-*.yaml`);
- `manager-image.oci.tar`: the manager image (hack/manager-image.sh) tagged
  `<image repository>:<version>`, as an OCI archive (`podman load -i` / `skopeo copy
  oci-archive:...` pushes it);
- `SHA256SUMS` of all of the above (`sha256sum -c SHA256SUMS`).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from capi_c3os import manifests
from capi_c3os.api.crd import PROVIDERS
from capi_c3os.dev import image

IMAGE_REPOSITORY = manifests.MANAGER_IMAGE.rsplit(":", 1)[0]
IMAGE_ARCHIVE = "manager-image.oci.tar"
CHECKSUMS = "SHA256SUMS"
# clusterctl reads versions as semver with a leading v.
VERSION = re.compile(r"^v(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")


def release_metadata(version: str) -> dict[str, Any]:
    """metadata.yaml with `version`'s series added (clusterctl refuses a version whose
    major.minor no series names)."""
    match = VERSION.match(version)
    if not match:
        raise ValueError(f"{version!r} is not a version like v1.2.3")
    major, minor = int(match["major"]), int(match["minor"])
    series = [dict(s) for s in manifests.RELEASE_SERIES]
    if not any((s["major"], s["minor"]) == (major, minor) for s in series):
        series.append({"major": major, "minor": minor, "contract": series[-1]["contract"]})
    return {**manifests.metadata(), "releaseSeries": series}


def write_manifests(version: str, out: Path, image_repository: str = IMAGE_REPOSITORY) -> list[Path]:
    """Everything but the image archive and the checksums; returns the files written."""
    if not VERSION.match(version):
        raise ValueError(f"{version!r} is not a version like v1.2.3")
    out.mkdir(parents=True, exist_ok=True)
    rendered = {path.as_posix(): text for path, text in manifests.render().items()}
    written: list[Path] = []
    labels = [manifests.ProviderManifests(p).label for p in PROVIDERS]
    for path, generated in sorted(rendered.items()):
        text = generated
        parts = path.split("/")
        if parts[:2] != ["config", "clusterctl"] or len(parts) != 5 or parts[2] not in labels:
            continue  # CRDs (inside the components) and clusterctl.yaml (a dev convenience)
        name = parts[4]
        if name == "metadata.yaml":
            continue
        if name.endswith("-components.yaml"):
            old = manifests.MANAGER_IMAGE
            assert text.count(old) == 1, f"{name}: expected one manager image"
            text = text.replace(old, f"{image_repository}:{version}")
        target = out / name
        target.write_text(text)
        written.append(target)
    metadata = out / "metadata.yaml"
    metadata.write_text(manifests.HEADER + yaml.safe_dump(release_metadata(version), sort_keys=True))
    return [*written, metadata]


def write_image(version: str, out: Path, image_repository: str = IMAGE_REPOSITORY) -> Path:
    reference = f"{image_repository}:{version}"
    subprocess.run([*image.PODMAN, "tag", image.build(), reference], check=True, capture_output=True)
    archive = out / IMAGE_ARCHIVE
    archive.unlink(missing_ok=True)  # podman save refuses to overwrite
    subprocess.run(
        [*image.PODMAN, "save", "--quiet", "--format", "oci-archive", "--output", str(archive), reference],
        check=True,
        capture_output=True,
    )
    return archive


def write_checksums(out: Path, files: list[Path]) -> Path:
    lines = []
    for path in sorted(files, key=lambda p: p.name):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        lines.append(f"{digest.hexdigest()}  {path.name}\n")
    target = out / CHECKSUMS
    target.write_text("".join(lines))
    return target


def write_release(
    version: str, out: Path, image_repository: str = IMAGE_REPOSITORY, with_image: bool = True
) -> list[Path]:
    files = write_manifests(version, out, image_repository)
    if with_image:
        files.append(write_image(version, out, image_repository))
    return [*files, write_checksums(out, files)]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m capi_c3os.dev.release", description=__doc__)
    parser.add_argument("version", help="vX.Y.Z")
    parser.add_argument("--out", type=Path, help="default: dist/<version>")
    parser.add_argument("--image-repository", default=IMAGE_REPOSITORY)
    parser.add_argument("--no-image", action="store_true", help="manifests and checksums only")
    args = parser.parse_args(argv)
    if not VERSION.match(args.version):
        parser.error(f"{args.version!r} is not a version like v1.2.3")
    out = args.out or Path("dist") / args.version
    for path in write_release(args.version, out, args.image_repository, with_image=not args.no_image):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
