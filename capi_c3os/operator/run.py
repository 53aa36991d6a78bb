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

from capi_c3os.backends.enrolled.backend import DEFAULT_RESET_TIMEOUT
from capi_c3os.backends.images import ImageLimits
from capi_c3os.backends.ironic.backend import HEALTH_INTERVAL as IRONIC_HEALTH_INTERVAL
from capi_c3os.operator.connection import own_namespace
from capi_c3os.operator.endpoints import parse_address
from capi_c3os.operator.enrollment import CA_SECRET, EnrollmentConfig
from capi_c3os.operator.extension import EXTENSION_CERT_SECRET, EXTENSION_SERVICE, ExtensionSettings
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
        "--ironic-health-interval",
        type=positive_seconds,
        default=IRONIC_HEALTH_INTERVAL,
        help="seconds between looks at a running bare-metal machine's Ironic node: how soon a node "
        "undeployed outside the cluster is reported NodeMissing; each look is one request per "
        f"machine (default {IRONIC_HEALTH_INTERVAL:.0f}, the default --sync-period)",
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
        "holding the key that signs each C3osMachine's site record (infrastructure provider) "
        "and each server's in-place upgrade target (control-plane provider); created when "
        f"absent (default {RECORD_KEY_SECRET})",
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
    extension = parser.add_argument_group(
        "Runtime SDK extension: in-place upgrades (infrastructure provider)"
    )
    extension.add_argument(
        "--extension-addr",
        default="0",
        help="serve CAPI's in-place update hooks over HTTPS on [host]:port, e.g. :9443, and register "
        "them with an ExtensionConfig (default 0 = off; the clusterctl components turn it on)",
    )
    extension.add_argument(
        "--extension-cert-secret",
        default=EXTENSION_CERT_SECRET,
        help="Secret in the manager's namespace holding the serving certificate's CA (ca.crt), "
        "which CAPI copies into the ExtensionConfig; made and renewed by the manager unless "
        f"--extension-cert-dir is given (default {EXTENSION_CERT_SECRET})",
    )
    extension.add_argument(
        "--extension-cert-dir",
        help="serve with tls.crt/tls.key from this directory, kept by someone else (e.g. a "
        "cert-manager Certificate's Secret, named by --extension-cert-secret, mounted here)",
    )
    extension.add_argument(
        "--extension-url",
        help="https URL CAPI calls the extension at (default: the Service --extension-service in "
        "the manager's namespace, port 443)",
    )
    extension.add_argument(
        "--extension-service",
        default=EXTENSION_SERVICE,
        help=f"Service in front of the extension (default {EXTENSION_SERVICE})",
    )
    enroll = parser.add_argument_group("enrolled hosts (infrastructure provider)")
    enroll.add_argument(
        "--enrollment-addr",
        default="0",
        help="HTTPS address of the enrollment endpoint self-enrolling hosts register at, "
        "e.g. :9445 (default 0 = off)",
    )
    enroll.add_argument(
        "--enrollment-name",
        action="append",
        dest="enrollment_names",
        metavar="NAME",
        help="DNS name or IP address hosts reach the enrollment endpoint at, put into its "
        "serving certificate (repeatable; default localhost and 127.0.0.1)",
    )
    enroll.add_argument(
        "--enrollment-ca-secret",
        default=CA_SECRET,
        help="Secret in the manager's namespace holding the CA that signs the endpoint's "
        f"certificate (hosts pin its ca.crt); created when absent (default {CA_SECRET})",
    )
    enroll.add_argument(
        "--enrollment-rate",
        type=positive_seconds,
        default=5.0,
        help="requests per second the endpoint takes from one client address, in bursts of "
        "ten times as many (default 5)",
    )
    enroll.add_argument(
        "--host-reset-timeout",
        type=positive_seconds,
        default=DEFAULT_RESET_TIMEOUT,
        help="seconds a released enrolled host has to report its reset before it is marked "
        f"Lost and its machine's deletion completes (default {DEFAULT_RESET_TIMEOUT:.0f})",
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
    namespace = own_namespace(args.kubeconfig)
    extension = None
    if parse_address(args.extension_addr) is not None:
        if "infrastructure" not in providers:
            raise ValueError("--extension-addr needs the infrastructure provider (it upgrades C3osMachines)")
        if args.extension_url and not args.extension_url.startswith("https://"):
            raise ValueError("--extension-url must be an https:// URL")
        extension = ExtensionSettings(
            address=args.extension_addr,
            namespace=namespace,
            cert_secret=args.extension_cert_secret,
            cert_dir=args.extension_cert_dir or None,
            url=args.extension_url or None,
            service=args.extension_service,
            watch_namespaces=namespaces,
        )
    parse_address(args.enrollment_addr)  # refuse a malformed address before starting
    enrollment = EnrollmentConfig(
        address=args.enrollment_addr,
        names=tuple(args.enrollment_names or ()),
        ca_namespace=namespace,
        ca_secret=args.enrollment_ca_secret,
        namespaces=namespaces,
        rate=args.enrollment_rate,
    )
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
        record_key_namespace=namespace,
        record_key_secret=args.record_key_secret,
        image_limits=ImageLimits(args.image_max_size, args.image_download_timeout, file_dirs),
        extension=extension,
        enrollment=enrollment if args.enrollment_addr not in ("0", "") else None,
        host_reset_timeout=args.host_reset_timeout,
        ironic_health_interval=args.ironic_health_interval,
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
