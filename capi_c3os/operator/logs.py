"""Log formats for the manager: readable text, or one JSON object per line.

Both show which object a record is about. kopf attaches `k8s_ref` (apiVersion, kind,
namespace, name, uid) to every record from a handler's logger; our own code passes the
same key through `extra=object_ref(obj)`, so one formatter serves both.

Never log object bodies: our kinds reference Secrets, and later kinds carry bootstrap
data; a log line names an object, it does not dump it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")


def object_ref(obj: dict[str, Any]) -> dict[str, Any]:
    """`extra=` for a log call about `obj`."""
    meta = obj.get("metadata") or {}
    return {
        "k8s_ref": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
        }
    }


def _ref(record: logging.LogRecord) -> dict[str, Any]:
    ref = getattr(record, "k8s_ref", None)
    return ref if isinstance(ref, dict) else {}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", ["kind", "namespace", "name"], ["error"]}`
    per line; times in UTC RFC 3339 with milliseconds."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = _ref(record)
        for key in ("kind", "namespace", "name"):
            if ref.get(key):
                entry[key] = ref[key]
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a stray non-JSON value in a message argument must not lose the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`2026-11-26T02:12:08.123Z INFO logger [ns/name] message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def format(self, record: logging.LogRecord) -> str:
        ref = _ref(record)
        if ref.get("name"):
            where = f"{ref['namespace']}/{ref['name']}" if ref.get("namespace") else str(ref["name"])
            record = logging.makeLogRecord(record.__dict__)
            record.msg = f"[{where}] {record.getMessage()}"
            record.args = None
        return super().format(record)


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self._fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self._fragments)


class _WaitsAreNotErrors(logging.Filter):
    """kopf logs every TemporaryError at ERROR ("failed temporarily"); for us that is a
    reconcile waiting on purpose (the reason is in a condition), so it is INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def configure_logging(log_format: str = "text", level: str = "info") -> None:
    """Root logging to stderr in the chosen format; replaces earlier handlers."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (e.g. deprecations inside libraries) would otherwise print raw
    # text to stderr and break the one-JSON-object-per-line promise.
    logging.captureWarnings(True)
    # At DEBUG the kubernetes client and urllib3 log request bodies, and kopf logs its
    # patches, which carry whole object specs (its diff base). Any of those may hold
    # Secret data, so they stay at INFO even when we debug our own code.
    for noisy in ("kubernetes", "urllib3", "asyncio", "kopf"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    # We run kopf in its own thread on purpose (see engine.py) and handle signals
    # ourselves; kopf's warning about it would only mislead whoever reads the log.
    logging.getLogger("kopf.objects").addFilter(_WaitsAreNotErrors())
    logging.getLogger("kopf._core.reactor.running").addFilter(
        _DropMessages("OS signals are ignored: running not in the main thread")
    )
