"""kopf handlers, one module per provider; `build_registry` registers only the enabled
ones, so a manager started with `--providers bootstrap` never watches other kinds."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import kopf

from capi_c3os.operator.handlers import bootstrap, controlplane, infrastructure, view
from capi_c3os.operator.handlers.clusters import PauseWatch
from capi_c3os.operator.runtime import Kind, Runtime

PROVIDERS: dict[str, ModuleType] = {
    "infrastructure": infrastructure,
    "bootstrap": bootstrap,
    "control-plane": controlplane,
}


VIEW_READERS = ("bootstrap", "control-plane", "infrastructure")
"""Providers whose reconcilers read the watch-fed view (see handlers/view.py)."""


def kinds_of(providers: Iterable[str]) -> list[Kind]:
    kinds: list[Kind] = []
    for provider in providers:
        kinds.extend(PROVIDERS[provider].KINDS)
    return kinds


def build_registry(
    providers: Iterable[str],
    runtime: Runtime,
    pause_watch: PauseWatch,
    login: Callable[[], kopf.ConnectionInfo],
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    # Our own login, so kopf uses exactly the credentials --kubeconfig names (kopf's
    # default login looks only at the default kubeconfig locations).
    @kopf.on.login(registry=registry, id="login")
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return login()

    # First: the view must hold an event's object before other handlers of it run.
    if runtime.view is not None:
        view.register(registry, runtime.view, providers=set(providers))
    for provider in providers:
        PROVIDERS[provider].register(registry, runtime)
    pause_watch.register(registry)
    return registry
