"""Kairos's own code on every document we render: the golden documents and one document
per API option go, in ONE process, through `kairos-check` (hack/kairos-check: strict
decode of every top-level block into kairos-sdk v0.25.3 / yip v1.25.1 types, and the
provider-kairos v2.16.4 structs mirrored there, unknown fields forbidden; plus yip's
cloud-init loader and kairos-sdk's `schema.Validate`), and the real `kairos-agent
validate` (v2.31.4) agrees with what the checker reports for it.

Expected `kairos-agent validate` findings (it only warns at install/upgrade unless
`--strict-validation` is given; nothing runs it at boot):
- "missing properties: 'users'" for a document without users: kairos-sdk's root schema
  requires `users` (minItems 1). Users are optional for us; with no admin user we set
  `install.nousers: true`, which is what kairos-agent install/upgrade/reset check.
- p2p "'/p2p/auto/enable' ... value must be true": kairos-sdk's p2p schema knows only
  "auto+HA on with a network token" or "auto off with NO token". We need a token with
  auto off, which provider-kairos v2.16.4 (internal/provider/bootstrap.go, `skipAuto`)
  takes as its one-time bootstrap path; the schema is stricter than the code.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_c3os.bootstrap.cloudconfig import YIP_STEP_KEYS, RenderError, Role, render_cloud_config
from capi_c3os.dev import binaries
from tests.unit.test_bootstrap_cloudconfig import CASES, FULL_SPEC, GOLDEN, inputs

MISSING_USERS = "missing properties: 'users'"
P2P_AUTO_OFF_WITH_TOKEN = "'/p2p/auto/"
"""`/p2p/auto/enable` or `/p2p/auto/ha/enable`: jsonschema names one, not always the same."""


def _option_specs() -> dict[str, dict[str, Any]]:
    """One spec per API option: each top-level key of the full example spec alone, and
    each key of its `k3s` and `k3s.server` alone."""
    specs: dict[str, dict[str, Any]] = {}
    for key, value in FULL_SPEC.items():
        if key != "k3s":
            specs[key] = {key: copy.deepcopy(value)}
    for key, value in FULL_SPEC["k3s"].items():
        if key != "server":
            specs[f"k3s.{key}"] = {"k3s": {key: copy.deepcopy(value)}}
    for key, value in FULL_SPEC["k3s"]["server"].items():
        specs[f"k3s.server.{key}"] = {"k3s": {"server": {key: copy.deepcopy(value)}}}
    specs["files.owner-from-users"] = {
        "users": [{"name": "app", "groups": ["admin"]}],
        "files": [{"path": "/home/app/app.conf", "content": "x", "owner": "app:app"}],
    }
    return specs


OPTIONS = _option_specs()


def documents() -> dict[str, str]:
    docs = {f"golden/{name}": (GOLDEN / f"{name}.yaml").read_text() for name in CASES}
    for option, spec in OPTIONS.items():
        for role in (Role.INIT_SERVER, Role.AGENT):
            docs[f"option/{option}/{role.value}"] = render_cloud_config(inputs(role, spec))
    return docs


def run_checker(docs: dict[str, str], tmp: Path) -> dict[str, dict[str, Any]]:
    """kairos-check on all `docs` in one process: name -> {"problems", "validate"}."""
    paths = {}
    for index, (name, text) in enumerate(docs.items()):
        path = tmp / f"{index}.yaml"
        path.write_text(text)
        paths[str(path)] = name
    done = subprocess.run(
        [str(binaries.locate("kairos-check")), *paths],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {paths[path]: result for path, result in json.loads(done.stdout).items()}


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return run_checker(documents(), tmp_path_factory.mktemp("kairos-docs"))


def _expected_validate(text: str) -> list[str]:
    expected = []
    if "\nusers:" not in text:
        expected.append(MISSING_USERS)
    if "\np2p:" in text:
        expected.append(P2P_AUTO_OFF_WITH_TOKEN)
    return expected


def test_every_document_decodes_strictly_into_kairos_types(checked: dict[str, dict[str, Any]]) -> None:
    problems = {name: result["problems"] for name, result in checked.items() if result["problems"]}
    assert problems == {}
    assert len(checked) == len(CASES) + 2 * len(OPTIONS)


def test_kairos_validate_reports_only_the_expected_findings(checked: dict[str, dict[str, Any]]) -> None:
    docs = documents()
    for name, result in checked.items():
        found = result["validate"]
        expected = _expected_validate(docs[name])
        if not expected:
            assert found == "", name
        else:
            # jsonschema reports one finding (the first failing keyword): one of the expected.
            assert any(e in found for e in expected), (name, found)


@pytest.mark.parametrize("case", list(CASES))
def test_kairos_agent_validate_agrees_with_the_checker(case: str, checked: dict[str, dict[str, Any]]) -> None:
    done = subprocess.run(
        [str(binaries.locate("kairos-agent")), "validate", str(GOLDEN / f"{case}.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    reported = (done.stdout + done.stderr).strip()
    expected = checked[f"golden/{case}"]["validate"]
    assert (done.returncode == 0) == (expected == ""), reported
    for finding in (MISSING_USERS, P2P_AUTO_OFF_WITH_TOKEN):
        assert (finding in reported) == (finding in expected), reported


def test_the_step_keys_we_accept_in_user_stages_are_exactly_yips() -> None:
    # capi_c3os refuses unknown step keys at render time (yip ignores them silently); the
    # list is checked here against yip v1.25.1's own schema.Stage.
    done = subprocess.run(
        [str(binaries.locate("kairos-check")), "--stage-keys"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert set(json.loads(done.stdout)) == set(YIP_STEP_KEYS)


# ------------------------------------------------------------ the checker can fail

GOOD = (GOLDEN / "agent-all-options.yaml").read_text()
HOSTILE = {
    "typo-top": (GOOD.replace("\nhostname:", "\nhost_name:"), ".host_name: unknown top-level key"),
    "typo-k3s": (GOOD.replace("enabled: true", "enable: true"), "field enable not found in type main.K3s"),
    "typo-step": (
        GOOD.replace("  - name: cluster-api-k3s\n", "  - nmae: cluster-api-k3s\n"),
        "field nmae not found",
    ),
    "typo-file": (GOOD.replace("    - path: /etc/motd", "    - paht: /etc/motd"), "field paht not found"),
    "mode-string": (GOOD.replace("permissions: 420", "permissions: rw"), "cannot unmarshal"),
    "bad-b64": (
        GOOD.replace("content: ZnJvbS1hLXNlY3JldAo=", "content: not*base64"),
        "content is not base64",
    ),
    "typo-user": (GOOD.replace("  groups:\n  - admin", "  group:\n  - admin"), "field group not found"),
    "typo-p2p": (GOOD.replace("disable_dht:", "disabledht:"), "field disabledht not found in type main.P2P"),
    "bad-stage": (GOOD.replace("\n  boot:\n", "\n  bootz:\n"), "not a stage Kairos runs"),
    "not-cloud-config": (GOOD.replace("#cloud-config", "#kairos-config"), "not a #cloud-config document"),
    "no-lock": (GOOD.replace("  lock_passwd: true\n", ""), 'user "kairos": no passwd and no lock_passwd'),
    "no-admin": (GOOD.replace("  - admin\n", "  - wheel\n"), "no user in group admin and no install.nousers"),
    "owner-too-early": (
        GOOD.replace(
            "  boot:\n", "  boot:\n  - files: [{path: /x, permissions: 384, ownerstring: kairos}]\n", 1
        ).replace(
            "\n  initramfs:\n",
            "\n  initramfs:\n  - files: [{path: /y, permissions: 384, ownerstring: kairos}]\n",
        ),
        'owner "kairos" is created by stage boot only later',
    ),
}


def test_the_checker_reports_what_kairos_would_not_apply(tmp_path: Path) -> None:
    assert run_checker({"good": GOOD}, tmp_path)["good"]["problems"] == []
    results = run_checker({name: text for name, (text, _) in HOSTILE.items()}, tmp_path)
    for name, (_, problem) in HOSTILE.items():
        assert any(problem in p for p in results[name]["problems"]), (name, results[name]["problems"])
    # The owned file written in boot after the users step is fine; the initramfs one is not.
    assert len([p for p in results["owner-too-early"]["problems"] if "only later" in p]) == 1


# Steps yip cannot load or would silently ignore, and steps it takes: our render-time check
# (capi_c3os/bootstrap/yip_steps.py) must agree with Kairos's own decoder on each.
BAD_STEPS: dict[str, dict[str, Any]] = {
    "mode as a string": {"files": [{"path": "/etc/x", "permissions": "0644"}]},
    "owner as a name": {"files": [{"path": "/etc/x", "owner": "app"}]},
    "unknown file field": {"files": [{"path": "/etc/x", "mode": 420}]},
    "directory mode negative": {"directories": [{"path": "/d", "permissions": -1}]},
    "download timeout as a string": {"downloads": [{"path": "/x", "url": "http://e/x", "timeout": "10s"}]},
    "commands as a string": {"commands": "echo hi"},
    "if as a list": {"if": ["true"]},
    "sysctl value as a map": {"sysctl": {"vm.swappiness": {"v": 10}}},
    "commands holding a map": {"commands": [{"run": "x"}]},
    "authorized_keys as a list": {"authorized_keys": ["ssh-ed25519 AAAA"]},
    "files as a map": {"files": {"path": "/etc/x"}},
    "unknown step key": {"comands": ["echo"]},
}
GOOD_STEPS: dict[str, dict[str, Any]] = {
    "file": {"files": [{"path": "/etc/x", "permissions": 420, "owner": 0, "group": 0, "content": "eA==",
                        "encoding": "b64", "ownerstring": "root"}]},
    "download": {"downloads": [{"path": "/x", "url": "http://e/x", "permissions": 420, "timeout": 10}]},
    "directory": {"directories": [{"path": "/d", "permissions": 493, "owner": 0, "group": 0}]},
    "scalars": {"name": "n", "if": "true", "hostname": "h", "node": "n", "environment_file": "/e",
                "commands": ["a", "b"], "modules": ["m"], "sysctl": {"a": "1", "b": 10},
                "environment": {"A": "b"},
                "authorized_keys": {"root": ["ssh-ed25519 AAAA"]}, "if_files": {"any": ["/x"]}},
}  # fmt: skip


def _document_with(step: dict[str, Any]) -> str:
    # No users: `install.nousers` as we render it (the checker holds kairos-agent's rule).
    body = {"install": {"nousers": True}, "stages": {"boot": [{"name": "s", **step}]}}
    return "#cloud-config\n" + yaml.safe_dump(body)


def test_render_time_step_checks_agree_with_kairos_code(tmp_path: Path) -> None:
    cases = {
        **{f"bad/{k}": v for k, v in BAD_STEPS.items()},
        **{f"good/{k}": v for k, v in GOOD_STEPS.items()},
    }
    checked = run_checker({name: _document_with(step) for name, step in cases.items()}, tmp_path)
    for name, step in cases.items():
        refused_by_us = True
        try:
            render_cloud_config(inputs(Role.AGENT, {"stages": {"boot": [{"name": "s", **step}]}}))
        except RenderError:
            pass
        else:
            refused_by_us = False
        flagged_by_kairos = bool(checked[name]["problems"])
        assert refused_by_us == flagged_by_kairos == name.startswith("bad/"), (
            name,
            checked[name]["problems"],
        )
