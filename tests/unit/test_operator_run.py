from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from capi_c3os.operator import run
from capi_c3os.operator.endpoints import parse_address


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_run_all_providers_everywhere_without_leader_election() -> None:
    args = parse()
    options = run.options_from_args(args)
    assert args.func is run.run_main
    assert options.providers == ("infrastructure", "bootstrap", "control-plane")
    assert options.namespaces == ()
    assert options.lease is None
    assert (options.health_addr, options.metrics_addr) == (":9440", ":8080")
    assert (args.log_format, args.log_level) == ("text", "info")
    assert options.kubeconfig is None


def test_providers_are_canonically_ordered_so_replicas_share_one_lease() -> None:
    a = run.options_from_args(parse("--providers", "control-plane,infrastructure", "--leader-elect"))
    b = run.options_from_args(parse("--providers", "infrastructure, control-plane", "--leader-elect"))
    assert a.providers == b.providers == ("infrastructure", "control-plane")
    assert a.lease is not None and b.lease is not None
    assert a.lease.name == b.lease.name == "capi-c3os-infrastructure-control-plane"


@pytest.mark.parametrize("value", ["", "infra", "bootstrap,nope", ","])
def test_unknown_providers_are_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--providers", value)
    assert exit_info.value.code == 2
    assert "providers must be" in capsys.readouterr().err


def test_namespace_is_repeatable_and_deduplicated() -> None:
    options = run.options_from_args(parse("--namespace", "a", "--namespace", "b", "--namespace", "a"))
    assert options.namespaces == ("a", "b")


def test_empty_or_star_namespace_means_all_namespaces() -> None:
    assert run.options_from_args(parse("--namespace", "")).namespaces == ()
    assert run.options_from_args(parse("--namespace", "*")).namespaces == ()
    assert run.options_from_args(parse("--namespace", "a", "--namespace", "")).namespaces == ()


@pytest.mark.parametrize("value", ["team-*", "!kube-system", "Upper", "a_b", "-a"])
def test_namespace_patterns_and_invalid_names_are_a_usage_error(value: str) -> None:
    with pytest.raises(SystemExit):
        parse("--namespace", value)


def test_lease_namespace_defaults_to_pod_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "capi-c3os-system")
    lease = run.options_from_args(parse("--leader-elect")).lease
    assert lease is not None
    assert lease.namespace == "capi-c3os-system"
    assert lease.name == "capi-c3os-infrastructure-bootstrap-control-plane"


def test_lease_namespace_falls_back_to_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    lease = run.options_from_args(parse("--leader-elect")).lease
    assert lease is not None
    assert lease.namespace == "default"


def test_explicit_lease_settings() -> None:
    options = run.options_from_args(
        parse(
            "--leader-elect",
            "--leader-election-namespace=ns",
            "--leader-election-id=my-lease",
            "--leader-elect-lease-duration=30",
            "--leader-elect-renew-deadline=20",
            "--leader-elect-retry-period=5",
        )
    )
    lease = options.lease
    assert lease is not None
    assert (lease.namespace, lease.name) == ("ns", "my-lease")
    assert (lease.lease_duration, lease.renew_deadline, lease.retry_period) == (30, 20, 5)
    assert lease.identity == options.identity


def test_inconsistent_lease_timings_are_rejected() -> None:
    args = parse("--leader-elect", "--leader-elect-lease-duration=5", "--leader-elect-renew-deadline=10")
    with pytest.raises(ValueError, match="renew deadline"):
        run.options_from_args(args)


def test_each_process_gets_its_own_identity() -> None:
    assert run.options_from_args(parse()).identity != run.options_from_args(parse()).identity


def test_log_flags() -> None:
    args = parse("--log-format", "json", "--log-level", "DEBUG")
    assert (args.log_format, args.log_level) == ("json", "debug")
    with pytest.raises(SystemExit):
        parse("--log-format", "xml")


def test_kubeconfig_flag() -> None:
    assert run.options_from_args(parse("--kubeconfig", "/tmp/kc")).kubeconfig == "/tmp/kc"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (":9440", ("0.0.0.0", 9440)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("0", None),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int] | None) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9440", "host:", "host:port"])
def test_parse_address_rejects_malformed(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_the_record_key_lives_in_the_managers_own_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "sa.kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: c3os-infrastructure-system}}]\n"
    )
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    options = run.options_from_args(parse("--kubeconfig", str(kubeconfig)))
    assert (options.record_key_namespace, options.record_key_secret) == (
        "c3os-infrastructure-system",
        "capi-c3os-record-key",
    )
    monkeypatch.setenv("POD_NAMESPACE", "capi-c3os-system")
    options = run.options_from_args(parse("--kubeconfig", str(kubeconfig), "--record-key-secret", "k"))
    assert (options.record_key_namespace, options.record_key_secret) == ("capi-c3os-system", "k")


def test_image_limits_from_flags(tmp_path: Path) -> None:
    default = run.options_from_args(parse()).image_limits
    assert (default.max_bytes, default.deadline, default.file_dirs) == (32 * 1024**3, 7200.0, ())
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    limits = run.options_from_args(
        parse(
            "--image-max-size",
            "500Mi",
            "--image-download-timeout",
            "60",
            "--image-file-dir",
            str(tmp_path / "link"),
        )
    ).image_limits
    assert (limits.max_bytes, limits.deadline, limits.file_dirs) == (
        500 * 1024**2,
        60.0,
        (str(tmp_path / "real"),),
    )


@pytest.mark.parametrize("value", ["0", "32G", "-1Gi", "lots"])
def test_bad_image_sizes_are_a_usage_error(value: str) -> None:
    with pytest.raises(SystemExit):
        parse("--image-max-size", value)


def test_the_extension_is_off_unless_given_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run.options_from_args(parse()).extension is None
    monkeypatch.setenv("POD_NAMESPACE", "c3os-infrastructure-system")
    options = run.options_from_args(parse("--providers", "infrastructure", "--namespace", "shop",
                                          "--extension-addr", ":9443"))  # fmt: skip
    extension = options.extension
    assert extension is not None
    assert (extension.address, extension.namespace, extension.cert_secret) == (
        ":9443", "c3os-infrastructure-system", "c3os-extension-serving-cert")  # fmt: skip
    # CAPI reaches it through the components' Service, and only for the namespaces served.
    service = {
        "namespace": "c3os-infrastructure-system",
        "name": "c3os-infrastructure-extension",
        "port": 443,
    }
    assert extension.endpoint.client_config() == {"service": service}
    assert "c3os-infrastructure-extension.c3os-infrastructure-system.svc" in extension.hosts
    assert extension.watch_namespaces == ("shop",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--providers", "bootstrap", "--extension-addr", ":9443"),
         "--extension-addr needs the infrastructure provider (it upgrades C3osMachines)"),
        (("--extension-addr", ":9443", "--extension-url", "http://127.0.0.1:9443"),
         "--extension-url must be an https:// URL"),
    ],
)  # fmt: skip
def test_an_extension_it_cannot_serve_is_refused(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        run.options_from_args(parse(*argv))
