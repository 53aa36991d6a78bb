"""Scratch directories: a SIGKILLed manager's files (kubeconfig CAs, certificates and keys
the kubernetes client writes out; image downloads) are removed by the next manager."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from capi_c3os import scratch

KILLED_CLIENT = """
import os, sys, time, yaml
from capi_c3os.workload.client import WorkloadClient
WorkloadClient(sys.stdin.read())
print("ready", flush=True)
time.sleep(60)
"""


def _kubeconfig() -> str:
    def pem(kind: str, body: bytes) -> str:
        return base64.b64encode(
            f"-----BEGIN {kind}-----\n{body.hex()}\n-----END {kind}-----\n".encode()
        ).decode()

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1",
                                               "certificate-authority-data": pem("CERTIFICATE", b"ca")}}],
        "users": [{"name": "u", "user": {"client-certificate-data": pem("CERTIFICATE", b"crt"),
                                         "client-key-data": pem("PRIVATE KEY", b"key")}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    })  # fmt: skip


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_killed_processes_kubeconfig_files_are_removed_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(_kubeconfig())
    child.stdin.close()
    assert child.stdout.readline().strip() == "ready"
    written = _files(tmp_path)
    # CA, certificate and key, all inside the process's own locked directory.
    assert len([f for f in written if not f.endswith("/.lock")]) == 3, written
    assert all(f.startswith(scratch.KUBE_FILES_PREFIX) for f in written), written
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _files(tmp_path) == written, "a SIGKILL leaves them behind"

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(scratch, "_process_dirs", {})
    mine = scratch.process_dir(scratch.KUBE_FILES_PREFIX)
    assert os.listdir(tmp_path) == [os.path.basename(mine)], "the dead one's directory is swept"


def test_a_live_processes_directory_is_kept_by_a_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(scratch, "_process_dirs", {})
    mine = scratch.process_dir("capi-c3os-test-")
    assert scratch.process_dir("capi-c3os-test-") == mine, "one directory per process and prefix"
    scratch.sweep("capi-c3os-test-")
    assert os.path.isdir(mine) and oct(os.stat(mine).st_mode & 0o777) == "0o700"
