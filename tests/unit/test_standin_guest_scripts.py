"""The stand-in image's guest-side scripts, run by the busybox the image ships, on this
host: the network-settings parser reads what configdrive.py renders (both layouts give
the same per-NIC lines), and the guest agent speaks the qemu-ga wire protocol (an
answer line per command, the 0xFF sentinel only before guest-sync-delimited's answer,
CommandNotFound for the rest). The in-guest, through-libvirt check is
tests/integration/libvirt/test_libvirt_guest_agent.py."""

from __future__ import annotations

import base64
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


def answer(applets: Path, line: bytes, env: dict[str, str] | None = None) -> bytes:
    """One command through the agent's own answer function (its port loop left out)."""
    agent = heredoc("c3os-guest-agent", "AGENT")
    functions = agent[agent.index("interfaces() {") : agent.index("# The port opens once")]
    return subprocess.run(
        [str(BUSYBOX), "sh", "-c", functions + 'answer "$1"', "sh", line],
        env={"PATH": str(applets), **(env or {})},
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
    refused = json.loads(answer(applets, b'{"execute":"guest-shutdown"}'))
    assert refused["error"]["class"] == "CommandNotFound"


# ------------------------------------------------------------------ slots and upgrades


def script_file(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def upgrade_world(applets: Path, tmp_path: Path) -> dict[str, Path]:
    """A boot disk's file system as a directory (both slots holding the old OS), a raw
    device file for the ADV, a new OS root, and PATH with c3os-bootcfg."""
    for applet in ("grep", "mkdir", "rm", "cp", "mv", "sync", "dd"):
        (applets / applet).symlink_to(str(BUSYBOX))
    script_file(applets, heredoc("c3os-bootcfg", "BOOTCFG"), "c3os-bootcfg")
    state = tmp_path / "state"
    for slot in ("active", "passive"):
        (state / slot).mkdir(parents=True)
        for name in ("vmlinuz", "initrd.img", "release.img"):
            (state / slot / name).write_text(f"old {name}\n")
    (state / "c3os-adv-sector").write_text("2\n")
    (state / "syslinux.cfg").write_text(run(applets, heredoc("c3os-bootcfg", "BOOTCFG"), "active").decode())
    device = tmp_path / "disk.raw"
    device.write_bytes(b"\0" * 512 * 8)
    new = tmp_path / "new"
    (new / "boot").mkdir(parents=True)
    (new / "etc").mkdir()
    for name in ("vmlinuz", "initrd.img", "release.img"):
        (new / "boot" / name).write_text(f"new {name}\n")
    (new / "etc" / "kairos-release").write_text('KAIROS_SOFTWARE_VERSION="v1.34.1+k3s1"\n')
    adv = tmp_path / "adv"
    adv.write_bytes(bytes(range(256)) * 4)
    return {"state": state, "device": device, "new": new, "adv": adv, "cmdline": tmp_path / "cmdline"}


def kairos_agent(
    applets: Path, world: dict[str, Path], cmdline: str, *args: str
) -> subprocess.CompletedProcess[str]:
    world["cmdline"].write_text(cmdline)
    env = {
        "PATH": str(applets),
        "C3OS_STATE_DIR": str(world["state"]),
        "C3OS_STATE_DEVICE": str(world["device"]),
        "C3OS_CONSOLE": str(world["cmdline"].parent / "console"),
        "C3OS_CMDLINE": str(world["cmdline"]),
        "C3OS_ADV": str(world["adv"]),
    }
    agent = heredoc_path("kairos-agent", "AGENTBIN")
    return subprocess.run([str(BUSYBOX), "sh", "-c", agent, "kairos-agent", *args], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip


def heredoc_path(target: str, tag: str) -> str:
    match = re.search(rf"^cat > initramfs/usr/bin/{target} <<'{tag}'\n(.*?)^{tag}$", SCRIPT, re.M | re.S)
    assert match, f"{target} not found in hack/standin-image.sh"
    return match.group(1)


def slot(state: Path, name: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((state / name).iterdir())}


def test_boot_config_boots_active_by_default_and_passive_with_the_failure_flag_while_armed(
    applets: Path,
) -> None:
    plain = run(applets, heredoc("c3os-bootcfg", "BOOTCFG"), "active").decode()
    assert "DEFAULT active" in plain and "upgrade_failure" not in plain
    assert "INITRD /active/initrd.img,/active/release.img" in plain
    assert "APPEND console=ttyS0 quiet panic=5 root=LABEL=COS_ACTIVE\n" in plain
    armed = run(applets, heredoc("c3os-bootcfg", "BOOTCFG"), "passive", "upgrade_failure").decode()
    assert "DEFAULT passive" in armed
    assert "root=LABEL=COS_ACTIVE\n" in armed  # the active entry itself stays plain
    assert "root=LABEL=COS_PASSIVE upgrade_failure\n" in armed


def test_upgrade_from_active_backs_active_up_into_passive_and_arms_the_one_shot_active_boot(
    applets: Path, upgrade_world: dict[str, Path]
) -> None:
    done = kairos_agent(
        applets,
        upgrade_world,
        "root=LABEL=COS_ACTIVE panic=5",
        "upgrade",
        "--source",
        "dir:" + str(upgrade_world["new"]),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    state = upgrade_world["state"]
    assert slot(state, "active") == {n: f"new {n}\n" for n in ("initrd.img", "release.img", "vmlinuz")}
    assert slot(state, "passive") == {n: f"old {n}\n" for n in ("initrd.img", "release.img", "vmlinuz")}
    assert not (state / "transition").exists()
    assert "DEFAULT passive" in (state / "syslinux.cfg").read_text()
    disk = upgrade_world["device"].read_bytes()
    assert disk[1024:2048] == upgrade_world["adv"].read_bytes()[:1024]  # sectors 2-3
    assert disk[:1024] == b"\0" * 1024 and disk[2048:] == b"\0" * (len(disk) - 2048)
    assert "Upgrade completed: active is v1.34.1+k3s1" in done.stdout


def test_upgrade_from_passive_keeps_passive(applets: Path, upgrade_world: dict[str, Path]) -> None:
    state = upgrade_world["state"]
    (state / "passive" / "vmlinuz").write_text("good passive\n")
    done = kairos_agent(
        applets,
        upgrade_world,
        "root=LABEL=COS_PASSIVE upgrade_failure",
        "upgrade",
        "--source=dir:" + str(upgrade_world["new"]),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert slot(state, "passive")["vmlinuz"] == "good passive\n"
    assert slot(state, "active")["vmlinuz"] == "new vmlinuz\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["upgrade", "--source", "oci:quay.io/kairos/x:1"], "dir:<root> only"),
        (["reset"], "does only: upgrade"),
        (["upgrade", "--source", "dir:/nonexistent"], "not a c3os stand-in OS"),
    ],
)
def test_upgrade_refuses_what_it_cannot_do_and_leaves_the_slots_alone(
    applets: Path, upgrade_world: dict[str, Path], args: list[str], says: str
) -> None:
    done = kairos_agent(applets, upgrade_world, "root=LABEL=COS_ACTIVE", *args)
    assert done.returncode == 1 and says in done.stdout
    assert slot(upgrade_world["state"], "active")["vmlinuz"] == "old vmlinuz\n"
    assert "DEFAULT active" in (upgrade_world["state"] / "syslinux.cfg").read_text()
    assert upgrade_world["device"].read_bytes() == b"\0" * 512 * 8


def test_adv_block_is_syslinux_boot_once_active() -> None:
    """The build's ADV (syslinux libinstaller/setadv.c layout, checked here independently:
    ldlinux accepts a copy whose words after the first sum to ADV_MAGIC2)."""
    code = re.search(r"<<'ADV'\n(.*?)^ADV$", SCRIPT, re.M | re.S)
    assert code
    out = Path(subprocess.run(["mktemp"], capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run(["python3", "-", str(out)], input=code.group(1), text=True, check=True)
    block = out.read_bytes()
    out.unlink()
    assert len(block) == 1024 and block[:512] == block[512:]
    words = [int.from_bytes(block[i : i + 4], "little") for i in range(0, 512, 4)]
    assert words[0] == 0x5A2D2FA5 and words[-1] == 0xDD28BF64
    assert sum(words[1:-1]) & 0xFFFFFFFF == 0xA3041767
    assert block[8:16] == b"\x01\x06active"


def test_agent_writes_files_and_runs_commands_as_qemu_ga(applets: Path, tmp_path: Path) -> None:
    for applet in ("mkdir", "rm", "base64", "wc", "sleep"):
        (applets / applet).symlink_to(str(BUSYBOX))
    env = {"C3OS_AGENT_STATE": str(tmp_path / "agent")}
    target = tmp_path / "written"
    opened = json.loads(
        answer(
            applets,
            json.dumps(
                {"execute": "guest-file-open", "arguments": {"path": str(target), "mode": "w"}}
            ).encode(),
            env,
        )
    )
    handle = opened["return"]
    for piece in (b"\x00\x01binary", b"\xffmore"):
        wrote = json.loads(
            answer(
                applets,
                json.dumps(
                    {
                        "execute": "guest-file-write",
                        "arguments": {"handle": handle, "buf-b64": base64.b64encode(piece).decode()},
                    }
                ).encode(),
                env,
            )
        )
        assert wrote["return"]["count"] == len(piece)
    assert json.loads(
        answer(
            applets,
            json.dumps({"execute": "guest-file-close", "arguments": {"handle": handle}}).encode(),
            env,
        )
    ) == {"return": {}}
    assert target.read_bytes() == b"\x00\x01binary\xffmore"

    started = json.loads(
        answer(
            applets,
            json.dumps(
                {
                    "execute": "guest-exec",
                    "arguments": {
                        "path": str(BUSYBOX),
                        "arg": ["sh", "-c", "echo out; echo err >&2; exit 3"],
                        "capture-output": True,
                    },
                }
            ).encode(),
            env,
        )
    )
    pid = started["return"]["pid"]
    status: dict[str, object] = {}
    for _ in range(50):
        status = json.loads(
            answer(
                applets, json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}}).encode(), env
            )
        )["return"]
        if status["exited"]:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert status["exited"] is True and status["exitcode"] == 3
    assert (
        base64.b64decode(str(status["out-data"])) == b"out\n"
        and base64.b64decode(str(status["err-data"])) == b"err\n"
    )
    escaped = json.loads(
        answer(
            applets,
            json.dumps(
                {"execute": "guest-exec", "arguments": {"path": "/bin/sh", "arg": ["-c", 'echo "x"']}}
            ).encode(),
            env,
        )
    )
    assert escaped["error"]["class"] == "GenericError" and "escapes" in escaped["error"]["desc"]
