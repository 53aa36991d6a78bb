"""What a user-written yip stage step may hold: its keys and the shape of their values, as
yip v1.25.1 decodes them (`pkg/schema/schema.go`: `Stage`, `File`, `Download`, `Directory`).

yip loads a document's stages in one go: one value of the wrong type (say `permissions:
"0644"`, a string where yip wants a number) and it runs none of the document's stages, with
nothing on the node saying why. A key it does not know it ignores, so a typo is a step
that does nothing. Both are refused when rendering, with the path of the bad value."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

STEP_KEYS = frozenset(
    {
        "name", "commands", "files", "downloads", "directories", "if", "ensure_entities",
        "delete_entities", "dns", "hostname", "sysctl", "authorized_keys", "node", "users",
        "modules", "systemctl", "environment", "environment_file", "packages", "unpack_images",
        "after", "datasource", "layout", "systemd_firstboot", "timesyncd", "git", "only_os",
        "only_os_version", "only_arch", "only_service_manager", "if_files", "package_pins",
    }
)  # fmt: skip
"""The keys of one step (yip `Stage`)."""

Check = tuple[Callable[[Any], bool], str]


def _string(value: Any) -> bool:
    # gopkg.in/yaml.v3 v3.0.1 (yip v1.25.1's go.mod) decodes any scalar into a Go string
    # (10 -> "10"), not a list or a map; held against yip by test_bootstrap_kairos_code.py.
    return isinstance(value, str | int | float | bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unsigned(value: Any) -> bool:
    return _integer(value) and 0 <= value < 2**32


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(_string(v) for v in value)


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(_string(v) for v in value.values())


def _strings_map(value: Any) -> bool:
    return isinstance(value, dict) and all(_strings(v) for v in value.values())


def _object(value: Any) -> bool:
    return isinstance(value, dict)


def _list(value: Any) -> bool:
    return isinstance(value, list)


STRING: Check = (_string, "a string")
STRINGS: Check = (_strings, "a list of strings")
STRING_MAP: Check = (_string_map, "a map of strings to strings")
MODE: Check = (_unsigned, "a number (decimal: 420 is 0644)")
ID: Check = (_integer, "a number (a uid or gid; use ownerstring for a name)")

_PATH_MODE_OWNER: dict[str, Check] = {"path": STRING, "permissions": MODE, "owner": ID, "group": ID}
FILE_FIELDS: dict[str, Check] = {
    **_PATH_MODE_OWNER,
    "content": STRING,
    "encoding": STRING,
    "ownerstring": STRING,
}
"""yip `File` (its YAML keys are the lower-cased Go field names)."""
DOWNLOAD_FIELDS: dict[str, Check] = {
    **_PATH_MODE_OWNER, "url": STRING, "timeout": (_integer, "a number of seconds"), "ownerstring": STRING,
}  # fmt: skip
"""yip `Download`."""
DIRECTORY_FIELDS: dict[str, Check] = _PATH_MODE_OWNER
"""yip `Directory`."""

STEP_VALUES: dict[str, Check] = {
    **{key: STRING for key in (
        "name", "if", "hostname", "node", "environment_file",
        "only_os", "only_os_version", "only_arch", "only_service_manager",
    )},
    "commands": STRINGS,
    "modules": STRINGS,
    **{key: STRING_MAP for key in (
        "sysctl", "environment", "package_pins", "systemd_firstboot", "timesyncd",
    )},
    "authorized_keys": (_strings_map, "a map of user names to lists of keys"),
    "if_files": (_strings_map, "a map of any/all/none to lists of paths"),
    **{key: (_list, "a list") for key in ("ensure_entities", "delete_entities", "unpack_images", "after")},
    **{key: (_object, "a map") for key in (
        "users", "dns", "systemctl", "packages", "datasource", "layout", "git",
    )},
}  # fmt: skip
"""The shape of each step key's value; `files`, `downloads`, `directories` are lists of
objects checked field by field."""

_OBJECT_LISTS: dict[str, Mapping[str, Check]] = {
    "files": FILE_FIELDS,
    "downloads": DOWNLOAD_FIELDS,
    "directories": DIRECTORY_FIELDS,
}


def step_problems(step: Mapping[str, Any]) -> list[str]:
    """What yip would ignore or fail on in one step, each as `<key path>: <problem>`."""
    problems = [f"{key}: unknown yip step key" for key in sorted(set(step) - STEP_KEYS)]
    for key in sorted(set(step) & STEP_KEYS):
        value = step[key]
        fields = _OBJECT_LISTS.get(key)
        if fields is not None:
            problems += _object_list_problems(key, value, fields)
            continue
        ok, what = STEP_VALUES[key]
        if not ok(value):
            problems.append(f"{key}: must be {what}, not {_shown(value)}")
    return problems


def _object_list_problems(key: str, value: Any, fields: Mapping[str, Check]) -> list[str]:
    if not isinstance(value, list):
        return [f"{key}: must be a list, not {_shown(value)}"]
    problems = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a map, not {_shown(item)}")
            continue
        for name in sorted(item):
            check = fields.get(name)
            if check is None:
                problems.append(f"{where}.{name}: unknown field; yip knows {', '.join(sorted(fields))}")
            elif not check[0](item[name]):
                problems.append(f"{where}.{name}: must be {check[1]}, not {_shown(item[name])}")
    return problems


def _shown(value: Any) -> str:
    # The type only, never the value: a step may carry a secret.
    names = {
        str: "a string",
        bool: "true/false",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a map",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)
