"""`python -m capi_c3os.dev.edge_site`: the demo's edge site as one background process.

It runs a private libvirtd (its network in a network namespace of its own; see
`capi_c3os.dev.libvirtd`) and, unless `--no-k3s`, the k3s stand-in
(`capi_c3os.dev.k3s.K3sStandIn`) for that daemon's VMs, answering on the given
control-plane endpoints. `capi-c3os dev up` starts it detached; SIGTERM (`dev down`)
stops the stand-in's workload API servers, destroys every VM and stops libvirtd.

libvirtd's namespaces and the workload servers die with this process (PR_SET_PDEATHSIG),
and with the namespaces libvirtd, virtlogd, dnsmasq and QEMU: killing it leaves nothing
running behind. (`dev down` still looks for processes using the site's directory, as a
last resort.)

Once everything answers it writes `<root>/site.json` (libvirt URI, pool, network):
the signal `dev up` waits for.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from capi_c3os.dev.k3s import K3sStandIn
from capi_c3os.dev.libvirtd import NETWORK_NAME, PrivateLibvirtd

log = logging.getLogger("capi_c3os.dev.edge_site")


def site_file(root: Path) -> Path:
    return root / "site.json"


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capi_c3os.dev.edge_site", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="state directory of this site")
    parser.add_argument(
        "--endpoint", type=_endpoint, action="append", default=[], help="HOST:PORT the k3s stand-in serves"
    )
    parser.add_argument("--no-k3s", action="store_true", help="libvirtd only (a real c3os image runs k3s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    root: Path = args.root.resolve()
    site_file(root).unlink(missing_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    daemon = PrivateLibvirtd(root / "libvirtd", network=True)
    k3s: K3sStandIn | None = None
    try:
        daemon.start()
        log.info("libvirtd answers on %s", daemon.uri)
        if not args.no_k3s:
            k3s = K3sStandIn(daemon, root / "k3s", endpoints=args.endpoint).start()
            log.info("k3s stand-in serves %s", ", ".join(f"{h}:{p}" for h, p in args.endpoint))
        site = {"uri": daemon.uri, "pool": daemon.pool_name, "network": NETWORK_NAME, "k3s": k3s is not None}
        site_file(root).write_text(json.dumps(site, indent=2))
        stop.wait()
    finally:
        site_file(root).unlink(missing_ok=True)
        if k3s is not None:
            k3s.stop()
        daemon.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
