"""Which backend serves a site: one instance per kind of site, made on first use and
shared by every machine (backends keep connections and locks; all are thread-safe).

A new kind of site is one line in `FACTORIES`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from capi_c3os.api.infrastructure import Site
from capi_c3os.backends.base import Backend, BackendError, MachineIdentity, SiteCredentials


def _libvirt() -> Backend:
    from capi_c3os.backends.libvirt import LibvirtBackend  # noqa: PLC0415 - libvirt loads on use

    return LibvirtBackend()


def _ironic() -> Backend:
    from capi_c3os.backends.ironic import IronicBackend  # noqa: PLC0415

    return IronicBackend()


def _enrolled() -> Backend:
    # Its world (C3osHost objects) is in Kubernetes: the manager provides the backend
    # with an inventory (`Backends.provide`); without one the kind is not served.
    raise BackendError(
        "UnsupportedSite", "this manager serves no enrolled sites (it runs no enrollment)", retry_after=60.0
    )


FACTORIES: dict[str, Callable[[], Backend]] = {
    "libvirt": _libvirt,
    "ironic": _ironic,
    "enrolled": _enrolled,
}


def site_kind(site: Site) -> str:
    """The kind of a site: the name of its one place field (`libvirt`, `ironic`, `enrolled`)."""
    for kind in FACTORIES:
        if getattr(site, kind, None) is not None:
            return kind
    raise BackendError("UnsupportedSite", f"site {site.name!r} names no known backend", retry_after=None)


@runtime_checkable
class FindsOrphans(Protocol):
    """A backend that can list what it holds for a cluster, so a cluster reconcile can
    remove what machines deleted behind our back (finalizer removed by hand) left."""

    def tagged_identities(
        self, site: Site, credentials: SiteCredentials, cluster: str
    ) -> list[MachineIdentity]:
        """Identities of the machines tagged with `cluster` (`<namespace>/<name>`)."""
        ...


@runtime_checkable
class Watches(Protocol):
    """A backend that can tell when a machine changed behind our back (libvirt domain
    events), so its C3osMachine is reconciled at once."""

    def watch(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(namespace, name)` of the C3osMachine concerned."""
        ...


class Backends:
    def __init__(self, factories: dict[str, Callable[[], Backend]] | None = None) -> None:
        self._factories = factories if factories is not None else FACTORIES
        self._made: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, str], None]] = []

    def watch(self, listener: Callable[[str, str], None]) -> None:
        """Hand `listener` to every backend that can watch, made now or later."""
        with self._lock:
            self._listeners.append(listener)
            made = list(self._made.values())
        for backend in made:
            if isinstance(backend, Watches):
                backend.watch(listener)

    def provide(self, kind: str, backend: Backend) -> None:
        """Use `backend` for the sites of `kind` (one that needs what only the manager
        has, such as the enrolled hosts' inventory)."""
        with self._lock:
            self._made[kind] = backend
            listeners = list(self._listeners)
        if isinstance(backend, Watches):
            for listener in listeners:
                backend.watch(listener)

    def for_site(self, site: Site) -> Backend:
        kind = site_kind(site)
        with self._lock:
            backend = self._made.get(kind)
            if backend is None:
                factory = self._factories.get(kind)
                if factory is None:
                    raise BackendError(
                        "UnsupportedSite", f"no {kind} backend in this manager", retry_after=None
                    )
                backend = self._made[kind] = factory()
                if isinstance(backend, Watches):
                    for listener in self._listeners:
                        backend.watch(listener)
            return backend


BACKENDS = Backends()
"""The manager's backends."""
