"""`python -m capi_c3os.dev.prepare`: everything the tests need that is built or installed
once per machine (Go binaries, the stand-in image, the manager image, the pinned Ironic (with
gunicorn and PyMySQL for its production shape),
Keystone and sushy-tools virtualenvs), made concurrently — Go builds use the CPUs while the installs
wait on the network — with a line per step as it finishes, so a cold run shows progress.
Cached work returns at once; parallel test workers then find everything ready."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from capi_c3os.dev import binaries, image, ironic, keystone, sushy
from capi_c3os.dev.venvs import PinnedVenv

REPO = Path(__file__).resolve().parents[2]
_print_lock = threading.Lock()


def _say(line: str) -> None:
    with _print_lock:
        print(f"[prepare] {line}", flush=True)


def _go_binaries() -> str:
    binaries.main([])  # builds what is missing a few at a time, a line per binary
    return f"{len(binaries.BINARIES)} Go binaries"


def _standin_image() -> str:
    out = subprocess.run(
        [str(REPO / "hack" / "standin-image.sh")], check=True, capture_output=True, text=True
    )
    return f"stand-in image {out.stdout.strip().splitlines()[-1]}"


def _manager_image() -> str:
    return f"manager image {image.build()}"


def _venv(venv: PinnedVenv) -> Callable[[], str]:
    def ensure() -> str:
        return f"{venv.title} in {venv.ensure()}"

    return ensure


STEPS: dict[str, Callable[[], str]] = {
    "go": _go_binaries,
    "image": _standin_image,
    "manager-image": _manager_image,
    "ironic": _venv(ironic.VENV),
    "keystone": _venv(keystone.VENV),
    "sushy": _venv(sushy.VENV),
}


def main(argv: list[str]) -> int:
    names = argv or list(STEPS)
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        print(f"unknown step(s) {', '.join(unknown)}; known: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    failed = 0
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures: dict[Future[str], str] = {pool.submit(STEPS[name]): name for name in names}
        for future in as_completed(futures):
            try:
                what = future.result()
            except Exception as exc:  # every step's failure is reported, then the exit code
                detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else exc
                _say(f"{futures[future]} FAILED: {detail}")
                failed += 1
                continue
            _say(f"{what} ready ({time.monotonic() - started:.0f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
