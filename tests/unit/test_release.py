"""The release's version checks and metadata.yaml (clusterctl refuses a version that no
release series names); tests/integration/test_release.py installs a release."""

from __future__ import annotations

from pathlib import Path

import pytest

from capi_c3os import manifests
from capi_c3os.dev.release import release_metadata, write_manifests


@pytest.mark.parametrize("version", ["0.2.0", "v0.2", "v01.2.3", "v1.2.3+build", "latest", ""])
def test_what_is_not_a_version_is_refused_before_anything_is_written(version: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a version"):
        write_manifests(version, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_new_minor_adds_its_series_and_a_patch_of_a_known_one_does_not() -> None:
    known = manifests.RELEASE_SERIES
    assert release_metadata("v0.1.7")["releaseSeries"] == known
    assert release_metadata("v1.0.0-rc.1")["releaseSeries"] == [
        *known,
        {"major": 1, "minor": 0, "contract": known[-1]["contract"]},
    ]
