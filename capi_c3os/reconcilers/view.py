"""What the manager's watches last delivered: cluster Secrets, control-plane Machines,
Clusters. Reconcilers read through it instead of asking the API server each time.

The operator feeds it (`observe`, from kopf's event handlers) and hands it to the
reconcilers as a plain object; nothing here knows kopf. Rules, so a view that lags
behind the API server never causes a wrong write:

- `get` answers from the view, else (not seen yet, or gone) asks the API server. An
  absent object is always confirmed by a GET, so a create follows only a real 404 (and
  creates tolerate 409 "exists" anyway).
- `list` answers from the view only for a namespace it has *primed*: listed once from
  the API server and merged with the events. Until then, and after `invalidate`, it
  lists. `list(..., fresh=True)` always lists (and primes): callers use it right before
  a decision to create or delete, so such decisions never rest on a lagging view.
- Replacements carry the resourceVersion they read (a stale one fails with 409, after
  which the caller invalidates the namespace and the next read lists again).

Priming merges by sequence number: an entry an event set after the LIST began is
newer than (or as new as) the LIST and stays; an older one absent from the LIST was
gone by then and is dropped. Deletions leave a tombstone so a LIST that still held the
object cannot bring it back.

Memory only: a new manager process (a restart, a new leader) starts with an empty
view and primes again. Secret data stays in memory, never in logs.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from capi_c3os.reconcilers.kube import Kube, Resource

Predicate = Callable[[dict[str, Any]], bool]


class Reader(Protocol):
    """What code that only reads needs: `Kube` itself, or the view in front of it."""

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None: ...


class ViewReader:
    """`get` through the view (a GET only for what it does not hold)."""

    def __init__(self, view: ClusterView, kube: Kube) -> None:
        self._view = view
        self._kube = kube

    def get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        return self._view.get(self._kube, resource, namespace, name)


def reader(kube: Kube, view: ClusterView | None) -> Reader:
    return ViewReader(view, kube) if view is not None else kube


def matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality-based label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`, comma = and)."""
    for term in (t.strip() for t in (selector or "").split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass(frozen=True)
class Scope:
    """What the watch of one resource delivers: objects matching `selector` (the LIST
    that primes uses the same) and `keep` (checked on each object)."""

    selector: str | None = None
    keep: Predicate | None = None

    def covers(self, obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return matches(self.selector, labels) and (self.keep is None or self.keep(obj))


@dataclass
class _Entry:
    obj: dict[str, Any] | None
    """None: a tombstone (deleted, or out of scope)."""
    seq: int
    """When an event (or, for primed entries, the LIST's start) set it."""


_Key = tuple[str, str, str]
"""(resource, namespace, name)"""


class ClusterView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[str, Scope] = {}
        self._entries: dict[_Key, _Entry] = {}
        self._primed: set[tuple[str, str]] = set()
        self._seq = 0
        self._facts: set[str] = set()
        self._known: list[Resource] = []

    def watch(self, resource: Resource, scope: Scope) -> None:
        """Declare that events of `resource` within `scope` reach `observe`."""
        self._scopes[str(resource)] = scope
        self._known.append(resource)

    def watches(self, resource: Resource) -> bool:
        return str(resource) in self._scopes

    # ------------------------------------------------------------ fed by the watches

    def observe(self, resource: Resource, event_type: str | None, obj: dict[str, Any]) -> None:
        scope = self._scopes.get(str(resource))
        meta = obj.get("metadata") or {}
        if scope is None or not meta.get("name"):
            return
        key = (str(resource), str(meta.get("namespace") or ""), str(meta["name"]))
        with self._lock:
            self._seq += 1
            # Out of scope now (a label removed): to us it is gone.
            if event_type == "DELETED" or not scope.covers(obj):
                self._entries[key] = _Entry(None, self._seq)
            else:
                # Ours to keep: the caller (kopf) may reuse its dict.
                self._entries[key] = _Entry(copy.deepcopy(obj), self._seq)

    def invalidate(self, resource: Resource, namespace: str) -> None:
        """A write based on the view failed (409/404): list again before trusting it."""
        with self._lock:
            self._primed.discard((str(resource), namespace))

    # ------------------------------------------------------------ read by reconcilers

    def get(self, kube: Kube, resource: Resource, namespace: str, name: str) -> dict[str, Any] | None:
        if self.watches(resource):
            with self._lock:
                entry = self._entries.get((str(resource), namespace, name))
            if entry is not None and entry.obj is not None:
                return entry.obj
        return kube.get(resource, namespace, name)

    def list(
        self, kube: Kube, resource: Resource, namespace: str, selector: str | None, *, fresh: bool = False
    ) -> list[dict[str, Any]]:
        """Objects of `namespace` matching `selector` (within the watch's scope)."""
        scope = self._scopes.get(str(resource))
        if scope is None:
            return kube.list(resource, namespace, selector)
        key = (str(resource), namespace)
        with self._lock:
            primed = key in self._primed
        if fresh or not primed:
            self._prime(kube, resource, namespace, scope)
        with self._lock:
            return [
                e.obj
                for (r, ns, _), e in self._entries.items()
                if r == key[0] and ns == namespace and e.obj is not None
                and matches(selector, e.obj["metadata"].get("labels") or {})
            ]  # fmt: skip

    def refresh(self, kube: Kube) -> None:
        """List again every (resource, namespace) the view holds: drops what a watch gap
        hid the deletion of (kopf's re-list after one reports no deletions). The periodic
        resync calls it."""
        with self._lock:
            seen = {(key[0], key[1]) for key in self._entries} | set(self._primed)
        resources = {str(r): r for r in self._known}
        for name, namespace in sorted(seen):
            self._prime(kube, resources[name], namespace, self._scopes[name])

    def _prime(self, kube: Kube, resource: Resource, namespace: str, scope: Scope) -> None:
        with self._lock:
            started = self._seq
        found = kube.list(resource, namespace, scope.selector)
        listed = {o["metadata"]["name"]: o for o in found if scope.covers(o)}
        with self._lock:
            res = str(resource)
            for key in [k for k in self._entries if k[0] == res and k[1] == namespace]:
                entry = self._entries[key]
                if entry.seq > started:
                    continue  # an event newer than the LIST's start: keep it
                if key[2] in listed:
                    obj = listed.pop(key[2])
                    self._entries[key] = _Entry(obj, entry.seq)
                else:
                    del self._entries[key]
            for name, obj in listed.items():
                self._entries.setdefault((res, namespace, name), _Entry(obj, started))
            self._primed.add((res, namespace))

    # ------------------------------------------------------------ what this process knows

    def knows(self, fact: str) -> bool:
        """A fact this process verified and has kept true since (see `learn`)."""
        with self._lock:
            return fact in self._facts

    def learn(self, fact: str) -> None:
        with self._lock:
            self._facts.add(fact)

    def unlearn(self, fact: str) -> None:
        with self._lock:
            self._facts.discard(fact)
