"""What `make release` writes is what clusterctl installs: providers at v0.1.0 (the
committed repository) are offered the release by `clusterctl upgrade plan`, and
`clusterctl upgrade apply` installs its components, image tag substituted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client as kc

from capi_c3os.dev.clusterctl import OUR_PROVIDERS, write_repository
from capi_c3os.dev.mgmt import ManagementPlane, api_client
from capi_c3os.dev.release import CHECKSUMS, write_release
from tests.conftest import REPO
from tests.integration.test_clusterctl_init import bare_plane, clusterctl  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

VERSION = "v0.2.0"


def local_repository(release: Path, root: Path) -> Path:
    """clusterctl's local repository layout ({label}/{version}/...) with v0.1.0 from
    config/clusterctl and VERSION from the release's flat files; `latest` in the URLs."""
    ours = root / "ours"
    shutil.copytree(REPO / "config" / "clusterctl", ours, ignore=shutil.ignore_patterns("clusterctl.yaml"))
    for label in OUR_PROVIDERS.values():
        target = ours / label / VERSION
        target.mkdir()
        shutil.copy(release / f"{label.removesuffix('-c3os')}-components.yaml", target)
        shutil.copy(release / "metadata.yaml", target)
    for template in [*release.glob("cluster-template-*.yaml"), *release.glob("clusterclass-*.yaml")]:
        shutil.copy(template, ours / "infrastructure-c3os" / VERSION)
    config = write_repository(root / "repository", ours)
    settings = yaml.safe_load(config.read_text())
    for provider in settings["providers"]:
        if provider["name"] == "c3os":
            path = Path(provider["url"])
            provider["url"] = str(path.parent.parent / "latest" / path.name)
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    return config


def test_clusterctl_upgrades_the_providers_to_the_release_files(
    bare_plane: ManagementPlane,  # noqa: F811
    tmp_path: Path,
) -> None:
    release = tmp_path / "dist"
    write_release(VERSION, release, with_image=False)  # the archive: `make release`, measured apart
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", CHECKSUMS], cwd=release, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout

    config = local_repository(release, tmp_path)
    init = clusterctl(
        bare_plane, tmp_path, "init", "--config", str(config), "--core", "cluster-api",
        "--bootstrap", "c3os:v0.1.0", "--control-plane", "c3os:v0.1.0", "--infrastructure", "c3os:v0.1.0",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr + init.stdout

    plan = clusterctl(bare_plane, tmp_path, "upgrade", "plan", "--config", str(config))
    assert plan.returncode == 0, plan.stderr + plan.stdout
    for label in OUR_PROVIDERS.values():
        row = next(line for line in plan.stdout.splitlines() if line.startswith(label))
        assert row.split()[-2:] == ["v0.1.0", VERSION], plan.stdout

    apply = clusterctl(
        bare_plane, tmp_path, "upgrade", "apply", "--config", str(config), "--contract", "v1beta2"
    )
    assert apply.returncode == 0, apply.stderr + apply.stdout
    with api_client(bare_plane.kubeconfig) as client:
        inventory = kc.CustomObjectsApi(client).list_cluster_custom_object(
            "clusterctl.cluster.x-k8s.io", "v1alpha3", "providers"
        )["items"]
        versions = {p["metadata"]["name"]: p["version"] for p in inventory}
        assert {versions[label] for label in OUR_PROVIDERS.values()} == {VERSION}
        images = {
            d.metadata.namespace: [c.image for c in d.spec.template.spec.containers]
            for d in kc.AppsV1Api(client).list_deployment_for_all_namespaces().items
            if d.metadata.namespace.startswith("c3os-")
        }
    assert len(images) == 3
    assert all(found == [f"ghcr.io/capi-c3os/manager:{VERSION}"] for found in images.values()), images
