"""The watch-fed view the bootstrap and control-plane reconcilers read through: it
must never hand out an object the API server no longer has once it was listed, nor
miss one, whatever order the LIST and the watch events come in."""

from __future__ import annotations

from typing import Any, cast

from capi_c3os.reconcilers.kube import MACHINES, SECRETS, Kube
from capi_c3os.reconcilers.view import ClusterView, Scope, matches

CP = "cluster.x-k8s.io/control-plane"


def machine(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": {CP: "", **labels}}}


class Server:
    """The API server's side of a LIST/GET, with a hook that runs while the LIST is in
    flight (events the watch delivers meanwhile)."""

    def __init__(self, *objs: dict[str, Any]) -> None:
        self.objs = {o["metadata"]["name"]: o for o in objs}
        self.during_list: Any = None
        self.calls: list[str] = []

    def list(self, resource: Any, namespace: str, selector: str | None) -> list[dict[str, Any]]:
        self.calls.append("list")
        snapshot = list(self.objs.values())
        if self.during_list:
            self.during_list()
        return [o for o in snapshot if matches(selector, o["metadata"].get("labels") or {})]

    def get(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {name}")
        return self.objs.get(name)


def view_of(server: Server) -> tuple[ClusterView, Kube]:
    view = ClusterView()
    view.watch(MACHINES, Scope(CP))
    return view, cast(Kube, server)


def names(objs: list[dict[str, Any]]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in objs)


def test_list_primes_once_then_answers_from_events() -> None:
    server = Server(machine("a"))
    view, kube = view_of(server)
    assert names(view.list(kube, MACHINES, "ns", CP)) == ["a"]
    view.observe(MACHINES, "ADDED", machine("b"))
    assert names(view.list(kube, MACHINES, "ns", CP)) == ["a", "b"]
    assert server.calls == ["list"]


def test_a_deletion_seen_during_the_priming_list_is_not_undone_by_it() -> None:
    server = Server(machine("a"), machine("b"))
    view, kube = view_of(server)
    server.during_list = lambda: view.observe(MACHINES, "DELETED", machine("b"))
    assert names(view.list(kube, MACHINES, "ns", CP)) == ["a"]


def test_an_object_gone_before_a_fresh_list_leaves_the_view() -> None:
    server = Server(machine("a"), machine("b"))
    view, kube = view_of(server)
    view.list(kube, MACHINES, "ns", CP)
    del server.objs["b"]  # its DELETED event was lost (a watch gap)
    assert names(view.list(kube, MACHINES, "ns", CP)) == ["a", "b"]
    assert names(view.list(kube, MACHINES, "ns", CP, fresh=True)) == ["a"]


def test_an_event_newer_than_the_list_wins_over_it() -> None:
    server = Server(machine("a"))
    view, kube = view_of(server)
    newer = machine("a", step="2")
    server.during_list = lambda: view.observe(MACHINES, "MODIFIED", newer)
    [a] = view.list(kube, MACHINES, "ns", CP)
    assert a["metadata"]["labels"]["step"] == "2"


def test_invalidate_makes_the_next_read_list_again() -> None:
    server = Server(machine("a"))
    view, kube = view_of(server)
    view.list(kube, MACHINES, "ns", CP)
    view.invalidate(MACHINES, "ns")
    view.list(kube, MACHINES, "ns", CP)
    assert server.calls == ["list", "list"]


def test_an_object_that_leaves_the_scope_leaves_the_view() -> None:
    server = Server()
    view, kube = view_of(server)
    view.list(kube, MACHINES, "ns", CP)
    view.observe(MACHINES, "ADDED", machine("a"))
    unlabelled = machine("a")
    del unlabelled["metadata"]["labels"][CP]
    view.observe(MACHINES, "MODIFIED", unlabelled)
    assert view.list(kube, MACHINES, "ns", CP) == []


def test_get_asks_the_api_server_when_the_view_has_nothing() -> None:
    server = Server(machine("a"))
    view, kube = view_of(server)
    assert view.get(kube, MACHINES, "ns", "a") is not None
    view.observe(MACHINES, "ADDED", machine("a"))
    assert view.get(kube, MACHINES, "ns", "a") is not None
    view.observe(MACHINES, "DELETED", machine("a"))
    del server.objs["a"]
    assert view.get(kube, MACHINES, "ns", "a") is None
    assert server.calls == ["get a", "get a"]
    # Kinds the view does not watch always go to the API server.
    view.get(kube, SECRETS, "ns", "a")
    assert server.calls[-1] == "get a"


def test_selectors() -> None:
    labels = {"a": "1", "b": ""}
    assert matches("a=1,b", labels)
    assert matches("a==1,!c,b!=x", labels)
    assert not matches("a=2", labels)
    assert not matches("c", labels)
    assert not matches("!b", labels)


def test_refresh_drops_what_a_watch_gap_hid_the_deletion_of() -> None:
    server = Server(machine("a"))
    view, kube = view_of(server)
    view.observe(MACHINES, None, machine("a"))  # kopf's listing; never primed by a read
    view.observe(MACHINES, None, machine("b"))  # deleted later; its DELETED event was lost
    view.refresh(kube)
    assert view.get(kube, MACHINES, "ns", "b") is None
    assert names(view.list(kube, MACHINES, "ns", CP)) == ["a"]
    assert server.calls == ["list", "get b"]
