"""Pinned test binaries built from their Go modules into a cache outside the work tree.

Runs with the standard library only, so `make` can call it before the virtualenv exists:
``python3 -m capi_c3os.dev.binaries [name ...]`` prints ``name=path`` per binary.

Explicit paths win: ``CAPI_C3OS_<NAME>`` (e.g. ``CAPI_C3OS_KUBE_APISERVER``), then
``KUBEBUILDER_ASSETS`` for etcd / kube-apiserver / kube-controller-manager.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.14"
CAPI_VERSION = "v1.14.2"
KAIROS_AGENT_VERSION = "v2.31.4"
YIP_VERSION = "v1.25.1"
KAIROS_SDK_VERSION = "v0.25.3"
# yip's own go.mod replaces tredoe/osutil (go install ignores that): the wrapper copies it.
YIP_REPLACES = (("github.com/tredoe/osutil", "github.com/kairos-io/osutil v1.5.0"),)

KAIROS_CHECK_SOURCE = Path(__file__).resolve().parents[2] / "hack" / "kairos-check"
"""Our strict cloud-config checker (Go, against kairos-sdk/yip types), built from the repo."""
C3OS_AGENT_SOURCE = KAIROS_CHECK_SOURCE.parent / "c3os-agent"
"""The enrolled hosts' agent (Go, standard library only, static), built from the repo."""

CACHE = Path(os.environ.get("CAPI_C3OS_CACHE", Path.home() / ".cache" / "capi-c3os")) / "bin"


@dataclass(frozen=True)
class GoBinary:
    name: str
    module: str
    version: str
    package: str
    ldflags: tuple[str, ...] = ()
    replaces: tuple[tuple[str, str], ...] = ()
    """Extra `replace` lines for the wrapper module: (module, "target version")."""
    source: Path | None = None
    """A Go module in this repository, built in place (its version is a hash of it)."""

    @property
    def path(self) -> Path:
        return CACHE / f"{self.name}-{self.version}"

    @property
    def env_var(self) -> str:
        return "CAPI_C3OS_" + self.name.upper().replace("-", "_")


def _k8s_version_ldflags(version: str) -> tuple[str, ...]:
    # Without these the binaries report v0.0.0 and clients (clusterctl) refuse the server.
    major, minor = version.lstrip("v").split(".")[:2]
    base = "k8s.io/component-base/version"
    return (
        f"-X {base}.gitVersion={version}",
        f"-X {base}.gitMajor={major}",
        f"-X {base}.gitMinor={minor}",
        f"-X {base}.gitTreeState=clean",
        f"-X k8s.io/client-go/pkg/version.gitVersion={version}",
    )


def _capi_version_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    base = "sigs.k8s.io/cluster-api/version"
    return (
        f"-X {base}.gitVersion={version}",
        f"-X {base}.gitMajor={major}",
        f"-X {base}.gitMinor={minor}",
        f"-X {base}.gitTreeState=clean",
    )


def _source_version(source: Path) -> str:
    digest = hashlib.sha256()
    # go.mod, go.sum, then the Go files by name (a one-file module hashes as it always did).
    for name in (
        "go.mod",
        "go.sum",
        *sorted(p.name for p in source.glob("*.go") if not p.name.endswith("_test.go")),
    ):
        digest.update((source / name).read_bytes() if (source / name).exists() else b"")
    return "src-" + digest.hexdigest()[:12]


BINARIES: dict[str, GoBinary] = {
    b.name: b
    for b in (
        GoBinary("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "go.etcd.io/etcd/server/v3"),
        GoBinary(
            "kube-apiserver",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-apiserver",
            _k8s_version_ldflags(KUBERNETES_VERSION),
        ),
        GoBinary(
            "kube-controller-manager",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            _k8s_version_ldflags(KUBERNETES_VERSION),
        ),
        GoBinary(
            "kubectl",
            "k8s.io/kubernetes",
            KUBERNETES_VERSION,
            "k8s.io/kubernetes/cmd/kubectl",
            _k8s_version_ldflags(KUBERNETES_VERSION),
        ),
        GoBinary(
            "capi-manager",
            "sigs.k8s.io/cluster-api",
            CAPI_VERSION,
            "sigs.k8s.io/cluster-api/core",
            _capi_version_ldflags(CAPI_VERSION),
        ),
        GoBinary(
            "clusterctl",
            "sigs.k8s.io/cluster-api",
            CAPI_VERSION,
            "sigs.k8s.io/cluster-api/cmd/clusterctl",
            _capi_version_ldflags(CAPI_VERSION),
        ),
        GoBinary(
            "kairos-agent",
            "github.com/kairos-io/kairos-agent/v2",
            KAIROS_AGENT_VERSION,
            "github.com/kairos-io/kairos-agent/v2",
            replaces=YIP_REPLACES,
        ),
        GoBinary("yip", "github.com/mudler/yip", YIP_VERSION, "github.com/mudler/yip", replaces=YIP_REPLACES),
        GoBinary(
            "kairos-check",
            "capi-c3os.local/kairos-check",
            _source_version(KAIROS_CHECK_SOURCE),
            ".",
            source=KAIROS_CHECK_SOURCE,
        ),
        GoBinary(
            "c3os-agent",
            "capi-c3os.local/c3os-agent",
            _source_version(C3OS_AGENT_SOURCE),
            ".",
            source=C3OS_AGENT_SOURCE,
        ),
    )
}


def _go(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    proc = subprocess.run(["go", *args], check=False, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _published_version(module: str, path: str, main: GoBinary) -> str:
    """Version to use for a module the main module replaces with a local directory."""
    if main.module == "k8s.io/kubernetes" and module.startswith("k8s.io/"):
        # Staging modules are published as v0.<minor>.<patch> of the same release.
        return "v0" + main.version[2:]
    return main.version


def _local_replacements(binary: GoBinary, workdir: Path) -> dict[str, str]:
    info = json.loads(_go(["mod", "download", "-json", f"{binary.module}@{binary.version}"], workdir))
    gomod = Path(info["GoMod"]).read_text()
    found: dict[str, str] = {}
    for mod, target in re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+(\.\.?/\S*)\s*$", gomod, re.M):
        if "FORBIDDEN" in target:
            continue
        found[mod] = _published_version(mod, target, binary)
    return found


def build(binary: GoBinary) -> Path:
    """Build one binary through a throwaway wrapper module (go install refuses replace directives)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.path.with_name(binary.path.name + ".partial")
    if binary.source is not None:
        _go(["build", "-trimpath", "-ldflags", "-s -w", "-o", str(partial), "."], binary.source)
        partial.replace(binary.path)
        for stale in CACHE.glob(f"{binary.name}-src-*"):  # builds of earlier sources
            if stale != binary.path and not stale.name.endswith(".partial"):
                stale.unlink(missing_ok=True)
        return binary.path
    with tempfile.TemporaryDirectory(prefix=f"build-{binary.name}-") as tmp:
        work = Path(tmp)
        (work / "go.mod").write_text("module capi-c3os.local/wrapper\n\ngo 1.26\n")
        replaces = _local_replacements(binary, work)
        lines = ["module capi-c3os.local/wrapper", "", "go 1.26", ""]
        lines += [f"replace {m} => {m} {v}" for m, v in sorted(replaces.items())]
        lines += [f"replace {m} => {target}" for m, target in binary.replaces]
        (work / "go.mod").write_text("\n".join(lines) + "\n")
        _go(["get", f"{binary.module}@{binary.version}"], work)
        if binary.package != binary.module:
            _go(["get", f"{binary.package}@{binary.version}"], work)
        ldflags = " ".join(("-s", "-w", *binary.ldflags))
        _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), binary.package], work)
        partial.replace(binary.path)  # atomic: a half-built file never looks cached
    return binary.path


def locate(name: str, *, build_missing: bool = True) -> Path:
    binary = BINARIES[name]
    explicit = os.environ.get(binary.env_var)
    if explicit:
        return Path(explicit)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / name).exists():
        return Path(assets) / name
    if binary.path.exists():
        return binary.path
    if not build_missing:
        raise FileNotFoundError(f"{name} {binary.version} is not built; run `make binaries`")
    if shutil.which("go") is None:
        raise FileNotFoundError(f"{name} is missing and Go is not installed to build it")
    # One build per binary at a time, across processes: `make prepare` builds yip while the
    # stand-in image script asks for it too (both would write the same .partial file).
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".{binary.path.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.path.exists():
            return binary.path
        return build(binary)


def module_dir(module: str, version: str) -> Path:
    """Source of a pinned Go module (for the manifests it ships), downloaded when absent."""
    with tempfile.TemporaryDirectory(prefix="gomod-") as tmp:
        (Path(tmp) / "go.mod").write_text("module capi-c3os.local/probe\n")
        info = json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], Path(tmp)))
    return Path(info["Dir"])


def capi_source() -> Path:
    return module_dir("sigs.k8s.io/cluster-api", CAPI_VERSION)


def _locate_timed(name: str) -> str:
    started = time.monotonic()
    cached = BINARIES[name].path.exists()
    path = locate(name)
    took = "cached" if cached else f"built in {time.monotonic() - started:.0f}s"
    return f"{name}={path} ({took})"


def main(argv: list[str]) -> int:
    names = argv or list(BINARIES)
    # Concurrently: a cold machine spends much of a build downloading modules.
    with ThreadPoolExecutor(max_workers=3) as pool:
        for line in pool.map(_locate_timed, names):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
