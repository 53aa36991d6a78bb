"""yip v1.25.1 (Kairos's stage executor) applies every document we render in a sandbox:
mount, PID and network namespaces of their own, a fresh tmpfs as the root it is chrooted
into (static busybox for `if:` and commands, a root-only /etc), the stages Kairos runs
up to `boot` in Kairos's order. Every file it leaves is then checked for bytes, mode,
owner and group against the document, and nothing else may appear. All documents go
through ONE `unshare` process.

Not reproduced: Kairos's real image (its /etc, users, PAM), immucore's mounts, the
`network`/`reconcile` stages (we render nothing for them), a second boot."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_c3os.bootstrap.cloudconfig import Role, render_cloud_config
from capi_c3os.dev import binaries, yipnode
from tests.unit.test_bootstrap_cloudconfig import inputs
from tests.unit.test_bootstrap_kairos_code import documents

STAGES = ("rootfs", "initramfs", "fs", "boot")
"""Kairos's order (immucore: rootfs, initramfs; kairos-agent: fs, boot), each stage one
yip run over the whole document as Kairos does."""
FIRST_BOOT_STEPS = {"cluster-api-k3s-cas"}
"""Steps whose `if:` holds on a fresh root; every other step with an `if:` (the example
spec's `[ -e /x ]`) must not run."""
BASE = {"etc/passwd", "etc/group", "etc/shadow", "etc/hosts"}

# One namespace for every document (four at a time): per document a new tmpfs root, the
# stages, a tar of what is left (numeric owners) into $out/<n>.tar and the stages' exit
# codes and logs.
SANDBOX = r"""
set -eu
out=$1; shift
one() {  # $1: index, $2: document
  root=$out/root-$1
  mkdir -p "$root"
  mount -t tmpfs -o mode=0755 tmpfs "$root"
  mkdir -p "$root/bin" "$root/dev" "$root/run/lock" "$root/tmp" "$root/home" "$root/etc/systemd/system" \
    "$root/etc/default" "$root/usr/local/bin" "$root/var/lib"
  touch "$root/bin/busybox" "$root/bin/yip" "$root/dev/null"
  mount --bind "$BUSYBOX" "$root/bin/busybox"
  mount --bind "$YIP" "$root/bin/yip"
  mount --bind /dev/null "$root/dev/null"
  for tool in sh [ test true false echo cat; do ln -s busybox "$root/bin/$tool"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\nadm:x:4:\nadmin:x:117:\n' > "$root/etc/group"
  printf 'root:*:19000:0:99999:7:::\n' > "$root/etc/shadow"
  printf '127.0.0.1 localhost\n' > "$root/etc/hosts"
  cp "$2" "$root/userdata.yaml"
  for stage in rootfs initramfs fs boot; do
    rc=0
    chroot "$root" /bin/yip -s "$stage" /userdata.yaml > "$out/$1.$stage.log" 2>&1 || rc=$?
    echo "$rc" > "$out/$1.$stage.rc"
  done
  umount "$root/bin/busybox" "$root/bin/yip" "$root/dev/null"
  rm -r "$root/bin" "$root/dev" "$root/userdata.yaml"
  tar -C "$root" --numeric-owner -cf "$out/$1.tar" .
  umount "$root"
}
n=0
for doc in "$@"; do
  one "$n" "$doc" &
  n=$((n + 1))
  if [ $((n % 4)) = 0 ]; then wait; fi
done
wait
"""


def run_sandbox(
    docs: dict[str, str], tmp: Path
) -> dict[str, tuple[dict[str, tarfile.TarInfo], dict[str, bytes], str]]:
    """name -> (entries by path, regular files' bytes, problems from the stage runs)."""
    names = list(docs)
    paths = []
    for index, name in enumerate(names):
        path = tmp / f"doc-{index}.yaml"
        path.write_text(docs[name])
        paths.append(str(path))
    out = tmp / "out"
    out.mkdir()
    busybox = shutil.which("busybox")
    assert busybox, "busybox (Debian busybox-static) is needed: hack/system-deps.sh installs it"
    env = {**os.environ, "YIP": str(binaries.locate("yip")), "BUSYBOX": busybox}
    subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "sh", "-c", SANDBOX, "sandbox",
         str(out), *paths],
        env=env, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    results = {}
    for index, name in enumerate(names):
        problems = []
        for stage in STAGES:
            rc = (out / f"{index}.{stage}.rc").read_text().strip()
            log = (out / f"{index}.{stage}.log").read_text()
            if rc != "0" or "level=error" in log or "level=fatal" in log:
                problems.append(f"stage {stage}: exit {rc}\n{log}")
        entries: dict[str, tarfile.TarInfo] = {}
        data: dict[str, bytes] = {}
        with tarfile.open(out / f"{index}.tar") as tar:
            for member in tar.getmembers():
                rel = member.name.removeprefix("./")
                entries[rel] = member
                if member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    data[rel] = extracted.read()
        results[name] = (entries, data, "\n".join(problems))
    return results


def _ids(data: dict[str, bytes]) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    users = {}
    for line in data["etc/passwd"].decode().splitlines():
        fields = line.split(":")
        users[fields[0]] = (int(fields[2]), int(fields[3]))
    groups = {line.split(":")[0]: int(line.split(":")[2]) for line in data["etc/group"].decode().splitlines()}
    return users, groups


def expected_files(doc: dict[str, Any], data: dict[str, bytes]) -> dict[str, tuple[bytes, int, int, int]]:
    """path (relative) -> (bytes, mode, uid, gid) as yip should leave it."""
    users, groups = _ids(data)
    files: dict[str, tuple[bytes, int, int, int]] = {}
    for stage in STAGES:
        for step in (doc.get("stages") or {}).get(stage) or []:
            if "if" in step and step.get("name") not in FIRST_BOOT_STEPS:
                continue
            for file in step.get("files") or []:
                raw = file.get("content", "")
                content = base64.b64decode(raw) if file.get("encoding") == "b64" else str(raw).encode()
                # yip renders content as a Go template; ours only escapes `{{` this way.
                content = content.replace(b'{{"{{"}}', b"{{")
                if "ownerstring" in file:
                    user, _, group = str(file["ownerstring"]).partition(":")
                    uid, gid = users[user][0], (groups[group] if group else users[user][1])
                else:
                    uid, gid = file["owner"], file["group"]
                files[str(file["path"]).lstrip("/")] = (content, file["permissions"], uid, gid)
    return files


def check(doc_text: str, entries: dict[str, tarfile.TarInfo], data: dict[str, bytes]) -> list[str]:
    doc = yaml.safe_load(doc_text)
    problems = []
    expected = expected_files(doc, data)
    homes = {f"home/{u['name']}/.ssh/authorized_keys" for u in doc.get("users") or []}
    left = {p for p, e in entries.items() if e.isfile()} - BASE - homes - {"etc/hostname"}
    problems += [f"{p}: written but not in the document" for p in sorted(left - set(expected))]
    for path, (content, mode, uid, gid) in sorted(expected.items()):
        entry = entries.get(path)
        if entry is None or not entry.isfile():
            problems.append(f"{path}: not written")
            continue
        got = (data[path] == content, stat.S_IMODE(entry.mode), entry.uid, entry.gid)
        if got != (True, mode, uid, gid):
            problems.append(
                f"{path}: bytes ok={got[0]} mode {got[1]:o}/{mode:o} owner {got[2]}:{got[3]}/{uid}:{gid}"
            )
    for stage in STAGES:
        for step in (doc.get("stages") or {}).get(stage) or []:
            for directory in step.get("directories") or []:
                entry = entries.get(str(directory["path"]).lstrip("/"))
                want = (directory["permissions"], directory["owner"], directory["group"])
                if entry is None or (stat.S_IMODE(entry.mode), entry.uid, entry.gid) != want:
                    problems.append(
                        f"{directory['path']}: directory {entry and oct(entry.mode)} wanted {want}"
                    )
    if data.get("etc/hostname", b"").strip() != str(doc["hostname"]).encode():
        problems.append("hostname not applied")
    shadow = {line.split(":")[0]: line.split(":")[1] for line in data["etc/shadow"].decode().splitlines()}
    members = {
        line.split(":")[0]: line.split(":")[3].split(",") for line in data["etc/group"].decode().splitlines()
    }
    for user in doc.get("users") or []:
        name = user["name"]
        if shadow.get(name) != "!":
            problems.append(f"user {name}: password field {shadow.get(name)!r}, not locked")
        problems += [
            f"user {name}: not in group {g}" for g in user.get("groups", []) if name not in members.get(g, [])
        ]
        keys = data.get(f"home/{name}/.ssh/authorized_keys", b"").decode()
        problems += [
            f"user {name}: key missing" for k in user.get("ssh_authorized_keys", []) if k not in keys
        ]
    return problems


TEMPLATE_SECRET = b"a {{ .Values.x }} b\n"


def _sandbox_documents() -> dict[str, str]:
    docs = documents()
    spec = {"files": [{"path": "/etc/t", "contentFrom": {"secret": {"name": "t", "key": "k"}}}]}
    docs["secret-with-braces"] = render_cloud_config(
        inputs(Role.AGENT, spec, secrets={"t": {"k": TEMPLATE_SECRET}})
    )
    return docs


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    docs = _sandbox_documents()
    return {"docs": docs, "results": run_sandbox(docs, tmp_path_factory.mktemp("yip-sandbox"))}


def test_yip_applies_every_document_without_an_error(sandboxed: dict[str, Any]) -> None:
    failed = {name: problems for name, (_, _, problems) in sandboxed["results"].items() if problems}
    assert failed == {}


def test_every_file_yip_writes_has_the_bytes_mode_owner_and_group_we_render(
    sandboxed: dict[str, Any],
) -> None:
    problems = {}
    for name, (entries, data, _) in sandboxed["results"].items():
        found = check(sandboxed["docs"][name], entries, data)
        if found:
            problems[name] = found
    assert problems == {}
    _, data, _ = sandboxed["results"]["secret-with-braces"]
    assert data["etc/t"] == TEMPLATE_SECRET


def test_the_sandbox_check_can_fail(tmp_path: Path) -> None:
    good = documents()["golden/agent-all-options"]
    bad = {
        "mode": good.replace(
            "path: /usr/local/bin/cluster-api-provider-id\n      permissions: 493",
            "path: /usr/local/bin/cluster-api-provider-id\n      permissions: 511",
        ),
        "owner-in-initramfs": good.replace(
            "  initramfs:\n", "  initramfs:\n  - files: [{path: /o, permissions: 384, ownerstring: kairos}]\n"
        ),
        "unlocked": good.replace("  lock_passwd: true\n", ""),
    }  # fmt: skip
    results = run_sandbox(bad, tmp_path)
    assert "unknown user kairos" in results["owner-in-initramfs"][2]
    assert "user kairos: password field '', not locked" in check(bad["unlocked"], *results["unlocked"][:2])
    # The checker compares with the document: a changed mode in the document is what yip wrote.
    assert check(bad["mode"], *results["mode"][:2]) == []
    entries, data, _ = results["mode"]
    assert any("mode 777/755" in p for p in check(good, entries, data))


def test_groups_reach_a_user_the_image_already_has() -> None:
    # yip adds a user to its groups only when it creates the user; `kairos` comes with
    # the image (seeded here as a node's /etc would have it), `app` is created.
    spec = {"users": [{"name": "kairos", "groups": ["adm", "admin"]}, {"name": "app", "groups": ["admin"]}]}
    doc = render_cloud_config(inputs(Role.AGENT, spec))
    seed = {
        "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nkairos:x:1000:1000::/home/kairos:/bin/sh\n",
        "/etc/group": b"root:x:0:\nadm:x:4:\nadmin:x:117:other\nkairos:x:1000:\n",
    }
    drive = {"user-data": doc.encode(), "meta-data": b"local-hostname: n\n"}
    files, log = yipnode.apply(drive, config_2=False, seed=seed, paths=("etc/group",))
    members = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in files["/etc/group"].decode().splitlines()
    }
    assert members["adm"] == ["kairos"], log
    assert sorted(members["admin"]) == ["app", "kairos", "other"], log
