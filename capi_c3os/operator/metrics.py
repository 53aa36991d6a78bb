"""Prometheus metrics of the manager (served on --metrics-addr at /metrics).

Names follow Prometheus conventions with a `capi_c3os_` prefix. The default registry
is used on purpose: it adds process and Python runtime metrics for free.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

# `*_created` series double the output and tell nobody anything here.
disable_created_metrics()  # type: ignore[no-untyped-call]

RECONCILES = Counter(
    "capi_c3os_reconcile",
    "Reconciles run, by kind, what triggered them and how they ended "
    "(done, paused, wait, error, conflict, exception).",
    ["kind", "trigger", "result"],
)
RECONCILE_SECONDS = Histogram(
    "capi_c3os_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
SUPERSEDED = Counter(
    "capi_c3os_superseded_events",
    "Watch events (kopf's create, update and resume) of an object version that our own "
    "reconcile wrote and went on from, and objects of a resync's listing that our own "
    "reconcile wrote since: no reconcile is run for them, by kind.",
    ["kind"],
)
API_REQUESTS = Counter(
    "capi_c3os_api_requests",
    "Requests the reconcilers (and the lease) made to the Kubernetes API server, by verb "
    "(get, list, create, update, patch, delete) and resource (with /status for the "
    "subresource); kopf's own watches and patches are not included.",
    ["verb", "resource"],
)
LEADER = Gauge(
    "capi_c3os_leader",
    "1 while this replica holds the leader lease (always 1 when leader election is off).",
    ["lease"],
)
LEASE_ATTEMPTS = Counter(
    "capi_c3os_leader_election_attempts",
    "Attempts to acquire or renew the leader lease, by result "
    "(acquired, renewed, held_by_other, conflict, error).",
    ["result"],
)
READY = Gauge("capi_c3os_ready", "1 while /readyz answers 200.")
MANAGER = Info("capi_c3os_manager", "Who this manager process is.")
