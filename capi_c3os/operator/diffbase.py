"""kopf's diff base (the last handled essence of each object) kept in memory.

kopf's own storages write the essence into an annotation after every handled create
or update: one API write per object change, and a copy of the whole spec on every
object (carried along by `clusterctl move`). Our handlers do not use kopf's diffs:
create, update and resume all run the same level-triggered reconcile
(handlers/common.py). So the diff base only has to tell kopf "nothing changed since
the last run", which memory does as well. After a restart every object looks new to
kopf and is reconciled once, as resume would have done.
"""

from __future__ import annotations

import threading
from collections.abc import Collection

import kopf

from capi_c3os.operator.settings import KOPF_ANNOTATIONS_PREFIX

LEGACY_ANNOTATION = f"{KOPF_ANNOTATIONS_PREFIX}/last-handled-configuration"
"""Where earlier releases kept the diff base; removed the next time an object is handled."""


class MemoryDiffBase(kopf.DiffBaseStorage):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._essences: dict[str, kopf.BodyEssence] = {}
        """By object uid: a recreated object (same name, new uid) is new."""

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        with self._lock:
            return self._essences.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        with self._lock:
            self._essences[body.metadata.uid or ""] = essence
        if LEGACY_ANNOTATION in body.metadata.annotations:
            patch.metadata.annotations[LEGACY_ANNOTATION] = None

    def retain(self, uids: Collection[str]) -> None:
        """Forget every object not among `uids` (all objects that exist): kopf tells a
        storage nothing when an object is gone. An object created while `uids` was
        listed may be forgotten too; kopf then takes its next event for a creation,
        which costs one more reconcile and nothing else."""
        keep = set(uids)
        with self._lock:
            for uid in [uid for uid in self._essences if uid not in keep]:
                del self._essences[uid]

    def __len__(self) -> int:
        with self._lock:
            return len(self._essences)
