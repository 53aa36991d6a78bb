"""kopf's settings for a CAPI provider manager."""

from __future__ import annotations

import logging
from concurrent.futures import Executor

import kopf

# kopf keeps a handler's progress (only deletion retries, see handlers/common.py) in
# annotations under this prefix, never in status: our status is CAPI's contract shape and
# the API server would prune unknown status fields anyway. The annotations are harmless
# after `clusterctl move` because every handler runs the same level-triggered reconcile.
# The diff base is kept in memory (diffbase.py).
KOPF_ANNOTATIONS_PREFIX = "kopf.zalando.org"

HANDLER_BACKOFF = 15.0
"""Seconds before retrying a handler that raised an unexpected exception."""


def build_settings(
    identity: str, executor: Executor, diffbase: kopf.DiffBaseStorage
) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # Leader election is ours (leader.py); kopf's peering would freeze equal replicas.
    settings.peering.standalone = True

    # A watch that silently dies (NAT timeout, API server restart behind a load
    # balancer) must be noticed: the server ends each watch after server_timeout, the
    # client gives up a little later, and kopf re-lists on reconnect.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60

    # Unexpected errors inside kopf's machinery: back off exponentially, capped at 5 min.
    settings.queueing.error_delays = (1, 2, 4, 8, 16, 32, 64, 128, 300)
    # Unexpected exceptions in our handlers: retry, but never hot.
    settings.execution.default_backoff = HANDLER_BACKOFF
    settings.execution.executor = executor

    # Events are for people: only warnings and errors (e.g. a handler that keeps
    # failing) reach `kubectl describe`, not every successful reconcile.
    settings.posting.enabled = True
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "capi-c3os"
    settings.posting.reporting_instance = identity

    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_ANNOTATIONS_PREFIX)
    settings.persistence.diffbase_storage = diffbase
    return settings
