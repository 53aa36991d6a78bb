"""Our manager (`python -m capi_c3os run`) as a real process, the one way the tests, the
e2e harness, the benchmarks and `capi-c3os dev up` start it.

Probes and (unless `metrics=False`) metrics listen on free loopback ports; `flags` go
last on the command line, so a repeated flag wins. `wait_ready` waits for /readyz and,
where metrics are on, for the manager to lead (a standby is ready too, but does not).
Stop is SIGTERM: the manager releases its lease and exits 0.
"""

from __future__ import annotations

import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from capi_c3os.dev.processes import ManagedProcess, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_status(url: str) -> int | None:
    """The status `url` answers with; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@dataclass
class Manager:
    process: ManagedProcess
    health_port: int
    metrics_port: int | None
    """None: metrics off (`--metrics-addr=0`)."""

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def status(self, path: str) -> int | None:
        return http_status(f"http://127.0.0.1:{self.health_port}{path}")

    def ready(self) -> bool:
        return self.status("/readyz") == 200

    def metrics(self) -> Samples:
        if self.metrics_port is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}  # not listening yet: no samples
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric_sum(self, name: str, **labels: str) -> float:
        return sum(
            value
            for (sample, sample_labels), value in self.metrics().items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )

    def identity(self) -> str:
        for (name, labels), _ in self.metrics().items():
            if name == "capi_c3os_manager_info":
                return dict(labels)["identity"]
        raise AssertionError("no capi_c3os_manager_info metric")

    def leading(self) -> bool:
        return self.metrics_port is None or self.metric_sum("capi_c3os_leader") == 1

    def wait_ready(self, timeout: float = 120.0) -> Manager:
        self.process.wait_until(
            lambda: self.ready() and self.leading(), "manager leading and /readyz 200", timeout
        )
        return self

    def alive(self) -> bool:
        return self.process.alive()

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM: a clean shutdown (exit code 0); SIGKILL plays a crash."""
        return self.process.stop(timeout=timeout, sig=sig)

    def tail(self, lines: int = 30) -> str:
        return self.process.tail(lines)


def start_manager(
    kubeconfig: Path,
    log: Path,
    *flags: str,
    providers: str | None = None,
    namespace: str | None = None,
    log_level: str | None = None,
    metrics: bool = True,
    env: dict[str, str] | None = None,
    name: str | None = None,
    detached: bool = False,
    command: Sequence[str] = (),
) -> Manager:
    """Start `capi-c3os run` with `kubeconfig` as its identity, logging to `log`; `env`
    adds to its environment; `detached` lets it outlive this process (`dev up`);
    `command` replaces `python -m capi_c3os` (the image: `capi_c3os.dev.image.run_argv`).
    It is not waited for: call `wait_ready()`."""
    health = free_port()
    metrics_port = free_port() if metrics else None
    argv = [*(command or [sys.executable, "-m", "capi_c3os"]), "run", "--kubeconfig", str(kubeconfig)]
    if providers is not None:
        argv += ["--providers", providers]
    if namespace is not None:
        argv += ["--namespace", namespace]
    argv += ["--health-addr", f"127.0.0.1:{health}"]
    argv += ["--metrics-addr", f"127.0.0.1:{metrics_port}" if metrics_port else "0"]
    if log_level is not None:
        argv += ["--log-level", log_level]
    process = ManagedProcess(name or log.stem, [*argv, *flags], log, env=env, die_with_parent=not detached)
    process.start()
    return Manager(process, health, metrics_port)
