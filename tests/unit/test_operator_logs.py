from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping

import pytest

from capi_c3os.operator.logs import JsonFormatter, TextFormatter, configure_logging, object_ref

OBJ = {
    "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
    "kind": "C3osMachine",
    "metadata": {"name": "m-1", "namespace": "edge", "uid": "u"},
}


def record(message: str, *args: object, extra: Mapping[str, object] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord("capi_c3os.test", logging.WARNING, __file__, 1, message, args, None)
    for key, value in (extra or {}).items():
        setattr(rec, key, value)
    return rec


def test_json_line_has_time_level_logger_message() -> None:
    line = JsonFormatter().format(record("reconciled %d objects", 3))
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "capi_c3os.test"
    assert entry["message"] == "reconciled 3 objects"
    assert entry["time"].endswith("Z")
    assert "\n" not in line


def test_json_line_names_the_object_from_our_extra() -> None:
    entry = json.loads(JsonFormatter().format(record("paused", extra=object_ref(OBJ))))
    assert (entry["kind"], entry["namespace"], entry["name"]) == ("C3osMachine", "edge", "m-1")


def test_json_line_names_the_object_from_kopfs_k8s_ref() -> None:
    kopf_ref = {"k8s_ref": {"kind": "C3osConfig", "namespace": "ns", "name": "c", "uid": "x"}}
    entry = json.loads(JsonFormatter().format(record("Handler 'x' succeeded.", extra=kopf_ref)))
    assert (entry["namespace"], entry["name"]) == ("ns", "c")


def test_json_line_carries_the_traceback_in_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert len(line.splitlines()) == 1
    assert "RuntimeError: boom" in json.loads(line)["error"]


def test_text_line_prefixes_the_object() -> None:
    line = TextFormatter().format(record("now %s", "ready", extra=object_ref(OBJ)))
    assert "[edge/m-1] now ready" in line
    assert "WARNING" in line


def test_configure_logging_switches_to_json(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json", "info")
        logging.getLogger("capi_c3os.test").info("hello", extra=object_ref(OBJ))
        logging.getLogger("capi_c3os.test").debug("hidden")
        out = capsys.readouterr().err.strip().splitlines()
        assert [json.loads(x)["message"] for x in out] == ["hello"]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_configure_logging_rejects_unknown_format() -> None:
    with pytest.raises(ValueError):
        configure_logging("xml")


def test_kopf_reports_of_waiting_reconciles_are_info_not_errors(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("json")
        logging.getLogger("kopf.objects").error(
            "Handler 'reconcile' failed temporarily: WaitingForX: because"
        )
        logging.getLogger("kopf.objects").error("Handler 'reconcile' failed with an exception")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert [line["level"] for line in lines] == ["info", "error"]
