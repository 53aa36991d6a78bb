"""The stand-in image's guest-side scripts, run by the busybox the image ships, on this
host: the network-settings parser reads what configdrive.py renders (both layouts give
the same per-NIC lines), and the guest agent speaks the qemu-ga wire protocol (an
answer line per command, the 0xFF sentinel only before guest-sync-delimited's answer,
CommandNotFound for the rest). The in-guest, through-libvirt check is
tests/integration/libvirt/test_libvirt_guest_agent.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from capi_c3os.api.infrastructure import MachineNetwork
from capi_c3os.backends.configdrive import render_network_config, render_network_data
from tests.conftest import REPO

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox (hack/system-deps.sh)")
SCRIPT = (REPO / "hack" / "standin-image.sh").read_text()


def heredoc(target: str, tag: str) -> str:
    match = re.search(rf"^cat > initramfs/bin/{target} <<'{tag}'\n(.*?)^{tag}$", SCRIPT, re.M | re.S)
    assert match, f"{target} not found in hack/standin-image.sh"
    return match.group(1)


@pytest.fixture
def applets(tmp_path: Path) -> Path:
    """A PATH of busybox applets only, as in the initramfs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for applet in ("awk", "tr", "sed", "ip", "cat", "sh"):
        (bin_dir / applet).symlink_to(str(BUSYBOX))
    return bin_dir


def run(applets: Path, script: str, *args: str) -> bytes:
    return subprocess.run(
        [str(BUSYBOX), "sh", "-c", script, "sh", *args],
        env={"PATH": str(applets)},
        check=True,
        capture_output=True,
    ).stdout


NETWORK = MachineNetwork.model_validate(
    {
        "interfaces": [
            {
                "addresses": ["2001:db8:20::5/64", "10.20.0.5/24"],
                "gateway4": "10.20.0.1",
                "gateway6": "fe80::1",
            },
            {"dhcp4": True},
            {"addresses": ["10.30.0.7/16"]},
        ],
        "nameservers": ["10.20.0.53"],
        "searchDomains": ["edge.example"],
    }
)
MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"]
EXPECTED = [
    "52:54:00:00:00:01 no 10.20.0.5/24 10.20.0.1",
    "52:54:00:00:00:02 yes - -",
    "52:54:00:00:00:03 no 10.30.0.7/16 -",
]


@pytest.mark.parametrize("layout", ["nocloud", "configdrive"])
def test_network_settings_parser_reads_what_we_render(applets: Path, tmp_path: Path, layout: str) -> None:
    if layout == "nocloud":
        path = tmp_path / "network-config"
        path.write_text(yaml.safe_dump(render_network_config(NETWORK, MACS), sort_keys=True))
    else:
        path = tmp_path / "network_data.json"
        path.write_text(json.dumps(render_network_data(NETWORK, MACS), sort_keys=True, indent=2))
    lines = run(applets, heredoc("c3os-netcfg", "NETCFG"), str(path)).decode().splitlines()
    assert lines == EXPECTED


def answer(applets: Path, line: bytes) -> bytes:
    """One command through the agent's own answer function (its port loop left out)."""
    agent = heredoc("c3os-agent", "AGENT")
    functions = agent[agent.index("interfaces() {") : agent.index("# The port opens once")]
    return subprocess.run(
        [str(BUSYBOX), "sh", "-c", functions + 'answer "$1"', "sh", line],
        env={"PATH": str(applets)},
        check=True,
        capture_output=True,
    ).stdout


def test_agent_sync_echoes_the_id_and_only_the_delimited_one_sends_the_sentinel(applets: Path) -> None:
    plain = b'{"execute":"guest-sync", "arguments":{"id":1764139087123}}'
    assert answer(applets, plain) == b'{"return": 1764139087123}\n'
    delimited = b'\xff{"execute":"guest-sync-delimited","arguments":{"id":42}}'
    assert answer(applets, delimited) == b'\xff{"return": 42}\n'
    assert json.loads(answer(applets, b'{"execute":"guest-ping"}')) == {"return": {}}


def test_agent_reports_real_interfaces_and_refuses_other_commands(applets: Path) -> None:
    reply = json.loads(answer(applets, b'{"execute":"guest-network-get-interfaces"}'))
    by_name = {entry["name"]: entry for entry in reply["return"]}
    assert set(by_name) == {p.name for p in Path("/sys/class/net").iterdir()}
    loopback = {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}
    assert loopback in by_name["lo"]["ip-addresses"]
    info = json.loads(answer(applets, b'{"execute":"guest-info"}'))["return"]
    assert {c["name"] for c in info["supported_commands"]} >= {"guest-sync", "guest-network-get-interfaces"}
    refused = json.loads(answer(applets, b'{"execute":"guest-exec","arguments":{"path":"/bin/sh"}}'))
    assert refused["error"]["class"] == "CommandNotFound"
