"""Pydantic JSON schema -> Kubernetes structural schema (apiextensions.k8s.io/v1).

Pydantic emits JSON Schema 2020-12: `$ref`/`$defs`, `anyOf` with null for optional
fields, titles everywhere. The API server wants a structural schema: everything inline,
a `type` on every node, `anyOf` only as a value validation. The conversion is strict: a
construct it does not know raises, so a model change that the API server would reject
(or silently prune) fails at generation time instead of in a cluster.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

# Keys a structural schema node may carry. Anything else pydantic emits is a mistake in
# the model (e.g. `gt=` instead of `ge=`, a `set[...]`, a tuple) and is reported.
_ALLOWED_KEYS = frozenset(
    {
        "type",
        "format",
        "description",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "enum",
        "default",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "anyOf",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
    }
)

_INT_OR_STRING_ANY_OF = [{"type": "integer"}, {"type": "string"}]


class SchemaError(ValueError):
    """The model cannot be expressed as a structural schema."""


def to_structural(model: type[BaseModel], replace: dict[str, Schema] | None = None) -> Schema:
    """The structural schema of a model, with descriptions, defaults, validations and
    Kubernetes list/map markers kept. `replace` swaps top-level properties for given
    schemas (a CRD's `metadata`, which the API server defines itself)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Schema] = raw.pop("$defs", {})
    for key in replace or {}:
        raw["properties"][key] = {"type": "string"}  # placeholder, swapped in below
    converted = _convert(raw, definitions, model.__name__, ())
    converted["properties"].update(replace or {})
    return converted


def _convert(node: Schema, definitions: dict[str, Schema], path: str, seen: tuple[str, ...]) -> Schema:
    node = dict(node)
    node.pop("title", None)

    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        if name in seen:
            raise SchemaError(f"{path}: recursive model {name} cannot be inlined")
        target = _convert(definitions[name], definitions, path, (*seen, name))
        # Field-level keys (the field's description, default, rules) win over the model's.
        node = _overlay(target, _convert_siblings(node, definitions, path, seen))
        return node

    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        branches = [branch for branch in node.pop("anyOf") if branch != {"type": "null"}]
        if len(branches) != 1:
            raise SchemaError(f"{path}: unions other than Optional[X] are not structural: {branches}")
        if node.get("default", 0) is None:
            del node["default"]
        converted = _convert(branches[0], definitions, path, seen)
        return _overlay(converted, _convert_siblings(node, definitions, path, seen))

    if "const" in node:
        node["enum"] = [node.pop("const")]

    unknown = set(node) - _ALLOWED_KEYS
    if unknown:
        raise SchemaError(f"{path}: keys not allowed in a structural schema: {sorted(unknown)}")

    if node.get("default", 0) is None:
        del node["default"]
    if "description" in node:
        node["description"] = _tidy(node["description"])

    if node.get("x-kubernetes-int-or-string"):
        if node.get("anyOf") != _INT_OR_STRING_ANY_OF or "type" in node:
            raise SchemaError(f"{path}: int-or-string must be exactly anyOf integer/string without a type")
    elif "anyOf" in node:
        raise SchemaError(f"{path}: anyOf outside int-or-string")

    if "properties" in node:
        node["properties"] = {
            key: _convert(value, definitions, f"{path}.{key}", seen)
            for key, value in node["properties"].items()
        }
        if "additionalProperties" in node:
            raise SchemaError(f"{path}: properties and additionalProperties are exclusive")
    if "items" in node:
        node["items"] = _convert(node["items"], definitions, f"{path}[]", seen)
    if "additionalProperties" in node:
        extra = node["additionalProperties"]
        if not isinstance(extra, dict):
            # `dict[str, Any]` or extra="allow": only FreeFormObject may be free-form.
            raise SchemaError(f"{path}: free-form object; use base.FreeFormObject if that is intended")
        node["additionalProperties"] = _convert(extra, definitions, f"{path}{{}}", seen)

    if not (
        "type" in node
        or node.get("x-kubernetes-int-or-string")
        or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise SchemaError(f"{path}: node without a type")
    if (
        node.get("type") == "object"
        and "properties" not in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise SchemaError(f"{path}: object without properties would be pruned empty")
    return node


def _convert_siblings(
    node: Schema, definitions: dict[str, Schema], path: str, seen: tuple[str, ...]
) -> Schema:
    """Keys next to a `$ref` or an Optional's `anyOf`: description, default, markers."""
    siblings = {key: value for key, value in node.items() if key != "title"}
    if "description" in siblings:
        siblings["description"] = _tidy(siblings["description"])
    if "default" in siblings and siblings["default"] is None:
        del siblings["default"]
    for key in ("items", "additionalProperties", "properties"):
        if key in siblings:
            raise SchemaError(f"{path}: unexpected {key} next to a reference")
    unknown = set(siblings) - _ALLOWED_KEYS
    if unknown:
        raise SchemaError(f"{path}: keys not allowed in a structural schema: {sorted(unknown)}")
    return siblings


def _overlay(base: Schema, top: Schema) -> Schema:
    merged = {**base, **top}
    rules = [*base.get("x-kubernetes-validations", []), *top.get("x-kubernetes-validations", [])]
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _tidy(description: str) -> str:
    """Docstrings wrap at the source line length; `kubectl explain` wraps by itself.
    Join wrapped lines, keep paragraph breaks."""
    paragraphs = re.split(r"\n\s*\n", description.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def walk(schema: Schema, path: str = "") -> list[tuple[str, Schema]]:
    """Every node of a structural schema with its path (`.a.b`, `[]` for items, `{}` for
    map values), the root first. Used by tests and by anyone checking a CRD."""
    nodes = [(path, schema)]
    for key, value in schema.get("properties", {}).items():
        nodes.extend(walk(value, f"{path}.{key}"))
    if "items" in schema:
        nodes.extend(walk(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        nodes.extend(walk(schema["additionalProperties"], f"{path}{{}}"))
    return nodes
