"""The test Ironic's two shapes as their configuration says them (the servers themselves run
in tests/integration/ironic/test_ironic_production.py)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from capi_c3os.dev.ironic import FAST_FAILURES, SHAPE_ENV, IronicServer, Shape, default_shape


def config(server: IronicServer) -> configparser.ConfigParser:
    server.write_config()
    # [DEFAULT] as a section of its own: oslo.config does not copy it into the others.
    parsed = configparser.ConfigParser(interpolation=None, default_section="-")
    parsed.read(server.config_file)
    return parsed


def test_the_shape_comes_from_the_environment_and_a_wrong_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SHAPE_ENV, raising=False)
    assert default_shape() is Shape.SINGLE
    monkeypatch.setenv(SHAPE_ENV, "production")
    assert default_shape() is Shape.PRODUCTION
    assert IronicServer(Path("/nonexistent")).shape is Shape.PRODUCTION
    monkeypatch.setenv(SHAPE_ENV, "prod")
    with pytest.raises(ValueError, match="'prod' is not a shape of the test Ironic \\(single, production\\)"):
        default_shape()


def test_production_shape_uses_mariadb_json_rpc_on_loopback_and_ironics_own_intervals(tmp_path: Path) -> None:
    server = IronicServer(tmp_path, shape=Shape.PRODUCTION)
    parsed = config(server)
    assert parsed["DEFAULT"]["rpc_transport"] == "json-rpc"
    assert dict(parsed["json_rpc"]) == {
        "auth_strategy": "noauth",
        "host_ip": "127.0.0.1",
        "port": str(server.json_rpc_port),
    }
    assert server.mariadb is not None
    assert parsed["database"]["connection"] == server.mariadb.url()
    assert parsed["database"]["connection"].startswith("mysql+pymysql://ironic:")
    assert dict(parsed["conductor"]) == {"automated_clean": "true"}, "nothing but Ironic's defaults"


def test_single_shape_keeps_sqlite_and_the_short_test_intervals_and_overrides_apply_to_both(
    tmp_path: Path,
) -> None:
    single = config(IronicServer(tmp_path / "single", shape=Shape.SINGLE))
    assert single["DEFAULT"]["rpc_transport"] == "none"
    assert single["database"]["connection"].startswith("sqlite:///")
    assert single["conductor"]["check_provision_state_interval"] == "1"
    assert single["conductor"]["sync_power_state_interval"] == "60"
    overridden = IronicServer(
        tmp_path / "production",
        shape=Shape.PRODUCTION,
        conductor={**FAST_FAILURES, "sync_power_state_interval": 5},
    )
    conductor = config(overridden)["conductor"]
    assert conductor["deploy_callback_timeout"] == "6" and conductor["check_provision_state_interval"] == "1"
    assert conductor["sync_power_state_interval"] == "5"
