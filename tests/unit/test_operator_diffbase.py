"""kopf's diff base in memory: what kopf asks of a storage, by object uid."""

from __future__ import annotations

from typing import Any

import kopf

from capi_c3os.operator.diffbase import LEGACY_ANNOTATION, MemoryDiffBase


def body(uid: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1alpha1",
            "kind": "C3osConfig",
            "metadata": {"name": "cfg", "namespace": "ns", "uid": uid, "annotations": annotations or {}},
            "spec": spec,
        }
    )


def handled(storage: MemoryDiffBase, obj: kopf.Body) -> kopf.Patch:
    """What kopf does once an object's handlers are done: store its essence."""
    patch = kopf.Patch()
    storage.store(body=obj, patch=patch, essence=storage.build(body=obj))
    return patch


def test_an_object_is_new_until_handled_then_its_essence_is_the_base_for_the_next_diff() -> None:
    storage = MemoryDiffBase()
    first = body("uid-1", {"files": []})
    assert storage.fetch(body=first) is None  # kopf: a creation
    assert handled(storage, first) == {}  # nothing for the API server
    assert storage.fetch(body=first) == {"spec": {"files": []}}

    changed = body("uid-1", {"files": [{"path": "/etc/x"}]})
    assert storage.fetch(body=changed) != storage.build(body=changed)  # kopf: an update

    # Deleted and created again under the same name: another uid, a new object.
    assert storage.fetch(body=body("uid-2", {"files": []})) is None


def test_retain_forgets_objects_that_no_longer_exist() -> None:
    storage = MemoryDiffBase()
    for uid in ("a", "b", "c"):
        handled(storage, body(uid, {}))
    storage.retain(["b", "d"])
    assert len(storage) == 1
    assert storage.fetch(body=body("b", {})) is not None
    assert storage.fetch(body=body("a", {})) is None


def test_the_annotation_of_earlier_releases_is_removed_when_the_object_is_next_handled() -> None:
    storage = MemoryDiffBase()
    legacy = body("uid-1", {}, {LEGACY_ANNOTATION: '{"spec":{}}\n', "team": "edge"})
    assert handled(storage, legacy) == {"metadata": {"annotations": {LEGACY_ANNOTATION: None}}}
    assert handled(storage, body("uid-1", {}, {"team": "edge"})) == {}
