"""uv.lock is what `make venv` and the image install (with hashes); it must say what
pyproject.toml says. The same comparison `uv lock --locked` makes, without uv or network:
the lock records the project's requirements as it resolved them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
Wanted = tuple[str, SpecifierSet, str]


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _lock() -> dict[str, Any]:
    return tomllib.loads((REPO / "uv.lock").read_text())


def _key(name: str, specifier: str, marker: str | None) -> Wanted:
    return (canonicalize_name(name), SpecifierSet(specifier), str(Marker(marker)) if marker else "")


def _declared(project: dict[str, Any]) -> set[Wanted]:
    wanted: set[Wanted] = set()
    groups = [(None, project["dependencies"]), *project.get("optional-dependencies", {}).items()]
    for extra, requirements in groups:
        for line in requirements:
            req = Requirement(line)
            marker = f"extra == '{extra}'" if extra else (str(req.marker) if req.marker else None)
            wanted.add(_key(req.name, str(req.specifier), marker))
    return wanted


def _recorded(lock: dict[str, Any], name: str) -> set[Wanted]:
    (root,) = [p for p in lock["package"] if p["name"] == name]
    return {
        _key(r["name"], r.get("specifier", ""), r.get("marker")) for r in root["metadata"]["requires-dist"]
    }


def test_lock_records_exactly_the_requirements_of_pyproject() -> None:
    pyproject, lock = _pyproject(), _lock()
    project = pyproject["project"]
    declared, recorded = _declared(project), _recorded(lock, project["name"])
    assert declared - recorded == set(), "pyproject.toml changed without `make lock`"
    assert recorded - declared == set(), "uv.lock holds requirements pyproject.toml dropped; `make lock`"
    assert SpecifierSet(lock["requires-python"]) == SpecifierSet(project["requires-python"])


def test_every_locked_direct_dependency_satisfies_its_range() -> None:
    # Guards against a hand-edited lock: the recorded ranges match, but a pin outside them.
    project, lock = _pyproject()["project"], _lock()
    versions: dict[str, list[Version]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], []).append(Version(package["version"]))
    for name, specifier, _ in _declared(project):
        pins = versions.get(name, [])
        assert pins, f"{name} is not in uv.lock"
        assert all(specifier.contains(v, prereleases=True) for v in pins), f"{name} {pins} not {specifier}"


def test_uv_itself_is_pinned_by_hash_and_installed_only_so() -> None:
    """The installer of the lock is part of the supply chain too: one exact version,
    sha256 hashes only, and `make venv` refuses anything else (hashes, wheels only)."""
    lines = (REPO / "hack" / "uv-requirements.txt").read_text().splitlines()
    body = " ".join(line.rstrip("\\").strip() for line in lines if line and not line.startswith("#"))
    requirement, *options = body.split()
    pins = list(Requirement(requirement).specifier)
    assert len(pins) == 1 and pins[0].operator == "=="
    assert options and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", o) for o in options)
    makefile = (REPO / "Makefile").read_text()
    install = next(
        line for line in makefile.splitlines() if "uv-requirements.txt" in line and "pip install" in line
    )
    assert "--require-hashes" in install and "--only-binary :all:" in install
