"""free_port under parallel test workers: each worker's ports come from its own block below
the ephemeral range, and a port somebody listens on is never handed out."""

from __future__ import annotations

import socket

import pytest

from capi_c3os.dev.processes import free_port


def test_a_worker_takes_ports_of_its_own_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    ports = [free_port() for _ in range(50)]
    assert all(23000 <= p < 24000 for p in ports), ports
    assert len(set(ports)) == 50


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    taken = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", taken))
        listener.listen()
        # A whole walk round the block: the held port must never come back.
        assert taken not in {free_port() for _ in range(1000)}


def test_outside_a_worker_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    assert low <= free_port() <= high
