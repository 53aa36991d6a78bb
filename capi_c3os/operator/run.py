"""`capi-c3os run`: flags, and the manager's entry point.

Flag names are part of our interface: the generated Deployment manifests use them, and
they follow the conventions of CAPI's own managers where one exists.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re

from capi_c3os.backends.images import ImageLimits
from capi_c3os.operator.connection import own_namespace
from capi_c3os.operator.handlers import PROVIDERS
from capi_c3os.operator.leader import LeaseConfig, new_identity
from capi_c3os.operator.logs import FORMATS, LEVELS, configure_logging
from capi_c3os.operator.manager import Options, run_manager
from capi_c3os.reconcilers.site_record import RECORD_KEY_SECRET

ALL_PROVIDERS = tuple(PROVIDERS)  # infrastructure, bootstrap, control-plane
ALL_NAMESPACES = ("", "*")
"""Both mean every namespace: the components YAML passes `${C3OS_WATCH_NAMESPACE:=*}`
because clusterctl cannot default a variable to the empty string."""
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

log = logging.getLogger(__name__)


def providers_list(value: str) -> tuple[str, ...]:
    """`bootstrap,infrastructure` -> in canonical order, so replicas started with the
    same set in another order compute the same lease name."""
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = names - set(ALL_PROVIDERS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"providers must be a comma list of {', '.join(ALL_PROVIDERS)}; got {value!r}"
        )
    return tuple(p for p in ALL_PROVIDERS if p in names)


def namespace_name(value: str) -> str:
    """An exact namespace, or "" / "*" for all of them. kopf would accept other globs,
    but CAPI's `--namespace` is one exact namespace and our resync lists by name."""
    if value in ALL_NAMESPACES or _DNS_LABEL.match(value):
        return value
    raise argparse.ArgumentTypeError(f'must be a namespace name, "" or "*"; got {value!r}')


def positive_seconds(value: str) -> float:
    seconds = float(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {value}")
    return seconds


_SIZE = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}


def byte_size(value: str) -> int:
    """`32Gi`, `500Mi` or plain bytes (Kubernetes quantity suffixes)."""
    match = _SIZE.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"must be a size such as 32Gi or 500Mi; got {value!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--providers",
        type=providers_list,
        default=ALL_PROVIDERS,
        help=f"comma list of providers to run (default: {','.join(ALL_PROVIDERS)})",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        type=namespace_name,
        help='reconcile only in this namespace (repeatable); absent, "" or "*" = all namespaces',
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else ~/.kube/config)")

    election = parser.add_argument_group("leader election")
    election.add_argument(
        "--leader-elect", action="store_true", help="elect a leader with a Lease; only the leader reconciles"
    )
    election.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the Lease (default: $POD_NAMESPACE, else default)",
    )
    election.add_argument(
        "--leader-election-id", default=None, help="name of the Lease (default: capi-c3os-<providers>)"
    )
    election.add_argument(
        "--leader-elect-lease-duration",
        type=positive_seconds,
        default=15.0,
        help="seconds a standby waits before taking an unrenewed lease (default 15)",
    )
    election.add_argument(
        "--leader-elect-renew-deadline",
        type=positive_seconds,
        default=10.0,
        help="seconds the leader may fail to renew before it stops (default 10)",
    )
    election.add_argument(
        "--leader-elect-retry-period",
        type=positive_seconds,
        default=2.0,
        help="seconds between lease attempts (default 2)",
    )

    parser.add_argument(
        "--health-addr", default=":9440", help="probes: /healthz, /readyz (default :9440; 0 = off)"
    )
    parser.add_argument(
        "--metrics-addr", default=":8080", help="Prometheus /metrics (default :8080; 0 = off)"
    )
    parser.add_argument(
        "--sync-period",
        type=positive_seconds,
        default=600.0,
        help="seconds between full resyncs of every object (default 600)",
    )
    parser.add_argument(
        "--max-concurrent-reconciles", type=int, default=4, help="reconciles running at once (default 4)"
    )
    parser.add_argument(
        "--no-watch-cache",
        dest="watch_cache",
        action="store_false",
        help="read every object from the API server in each reconcile instead of from the "
        "watches (for comparison and debugging)",
    )
    parser.add_argument(
        "--record-key-secret",
        default=RECORD_KEY_SECRET,
        help="name of the Secret, in the manager's namespace ($POD_NAMESPACE, else the "
        "kubeconfig context's, else the pod's, else default), "
        "holding the key that signs each C3osMachine's site record; created when absent "
        f"(infrastructure provider; default {RECORD_KEY_SECRET})",
    )
    image = parser.add_argument_group("images the manager downloads (libvirt sites)")
    image.add_argument(
        "--image-max-size",
        type=byte_size,
        default=ImageLimits.max_bytes,
        help="largest image the manager downloads, e.g. 32Gi (default 32Gi)",
    )
    image.add_argument(
        "--image-download-timeout",
        type=positive_seconds,
        default=ImageLimits.deadline,
        help="seconds one image download may take in all (default 7200)",
    )
    image.add_argument(
        "--image-file-dir",
        action="append",
        dest="image_file_dirs",
        metavar="DIR",
        help="allow file:// image URLs under this directory (repeatable; none or empty: file:// is refused)",
    )
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="text (default) or json")
    parser.add_argument("--log-level", choices=LEVELS, default="info", type=str.lower, help="default info")
    parser.set_defaults(func=run_main)


def options_from_args(args: argparse.Namespace) -> Options:
    providers: tuple[str, ...] = args.providers
    raw_namespaces: list[str] = args.namespaces or []
    all_namespaces = any(ns in ALL_NAMESPACES for ns in raw_namespaces)
    namespaces = () if all_namespaces else tuple(dict.fromkeys(raw_namespaces))
    identity = new_identity()
    lease = None
    if args.leader_elect:
        lease = LeaseConfig(
            namespace=args.leader_election_namespace or os.environ.get("POD_NAMESPACE") or "default",
            name=args.leader_election_id or "capi-c3os-" + "-".join(providers),
            identity=identity,
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        )
    file_dirs = tuple(os.path.realpath(d) for d in args.image_file_dirs or [] if d)
    if any(not os.path.isabs(d) for d in args.image_file_dirs or [] if d):
        raise ValueError("--image-file-dir must be an absolute path")
    if args.max_concurrent_reconciles < 1:
        raise ValueError("--max-concurrent-reconciles must be at least 1")
    return Options(
        providers=providers,
        namespaces=namespaces,
        kubeconfig=args.kubeconfig,
        lease=lease,
        health_addr=args.health_addr,
        metrics_addr=args.metrics_addr,
        sync_period=args.sync_period,
        max_concurrent_reconciles=args.max_concurrent_reconciles,
        identity=identity,
        watch_cache=args.watch_cache,
        record_key_namespace=own_namespace(args.kubeconfig),
        record_key_secret=args.record_key_secret,
        image_limits=ImageLimits(args.image_max_size, args.image_download_timeout, file_dirs),
    )


def run_main(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        return asyncio.run(run_manager(options))
    except Exception:
        # E.g. an unreadable kubeconfig or a port in use: one log line in the chosen
        # format (with the traceback), and a non-zero exit for the Deployment to see.
        log.exception("manager failed")
        return 1
