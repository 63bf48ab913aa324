"""JSON in model replies: finding it (:func:`find_json`) and checking it against a JSON schema (:func:`validate`).

The one implementation used by the chat model (tool calls, structured output, the format term),
the grammar adapter (:func:`close_objects`) and the rewards (``JSONSchemaReward``,
``extract_json``). Plain Python: no model, no torch, no LangChain at import (the lenient parse
of a cut reply imports ``langchain_core`` when it is asked for).

Validation follows JSON Schema semantics for the keywords it knows: ``$ref`` (local ``#/...``),
``anyOf``, ``oneOf`` (exactly one), ``allOf``, ``type`` (a name or a list; booleans are not
numbers, ``1.0`` is an integer), ``enum``, ``const``, ``required``, ``properties``,
``additionalProperties`` (``false`` or a schema) and ``items`` (a schema). Other keywords are
not checked. An object schema is *open* unless it says ``additionalProperties: false``; the chat
model validates against :func:`close_objects` of the schema, the closed form its grammar decodes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}
"""JSON Schema type names -> Python types of ``json.loads`` values (bool is excluded from the numbers)."""

FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
"""A Markdown code fence (```json or plain); a fence the text leaves open runs to its end."""


# --- finding JSON ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundJSON:
    """A JSON value found in a reply."""

    value: Any
    """The parsed value."""
    complete: bool
    """False when the JSON was cut short and closed by the lenient parse (``find_json(..., lenient=True)``)."""


def _candidates(text: str) -> list[str]:
    """Where JSON may stand: the whole text, then each fence's body."""
    return [text, *(match.group(1) for match in FENCE.finditer(text))]


def _strict(candidate: str) -> tuple[Any, bool]:
    """(value, ok): the whole candidate if it parses, else the first JSON object in it."""
    try:
        return json.loads(candidate), True
    except ValueError:
        pass
    start = candidate.find("{")
    if start < 0:
        return None, False
    try:
        value, _ = json.JSONDecoder().raw_decode(candidate[start:])
    except ValueError:
        return None, False
    return value, True


def _closed(candidate: str) -> tuple[Any, bool]:
    """(value, ok): the first object of the candidate, cut short, closed by LangChain's partial-JSON parser."""
    from langchain_core.utils.json import parse_partial_json

    start = candidate.find("{")
    if start < 0:
        return None, False
    try:
        value = parse_partial_json(candidate[start:].strip())
    except ValueError:
        return None, False
    return value, value is not None


def find_json(text: str, *, lenient: bool = False) -> FoundJSON | None:
    """The JSON value of a reply, or None.

    The candidates, in order, are the whole text and each ``` fence's body (```json or plain; an
    unclosed fence runs to the end). From each: the whole (stripped) candidate if it is JSON, else
    the first JSON object in it (from its first ``{``). The first candidate that gives a value wins.
    ``lenient=True``: when none does, the first object cut short (a reply stopped by ``max_tokens``)
    is closed and returned with ``complete=False``.
    """
    candidates = [c.strip() for c in _candidates(text)]
    for candidate in candidates:
        value, ok = _strict(candidate)
        if ok:
            return FoundJSON(value, True)
    if lenient:
        for candidate in candidates:
            value, ok = _closed(candidate)
            if ok:
                return FoundJSON(value, False)
    return None


# --- validating ------------------------------------------------------------------------------


def close_objects(schema: Any) -> Any:
    """A copy of ``schema`` where every object with ``properties`` and no ``additionalProperties`` is closed."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: close_objects(v) for k, v in schema.items() if k not in ("properties", "$defs", "definitions")}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: close_objects(sub) for name, sub in schema[key].items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def resolve_ref(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a local ``$ref`` followed (an unknown reference resolves to the empty schema)."""
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}
    return schema


def is_type(value: Any, name: str) -> bool:
    """Whether ``value`` is of JSON Schema type ``name`` (an unknown name accepts everything)."""
    if name not in JSON_TYPES:
        return True
    if isinstance(value, bool) and name in ("number", "integer"):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, JSON_TYPES[name])


def _combinators(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    options = schema.get("anyOf")
    if isinstance(options, list) and options and all(_errors(value, o, root, path) for o in options):
        errors.append(f"{path}: matches none of anyOf")
    options = schema.get("oneOf")
    if isinstance(options, list) and options:
        matches = sum(1 for o in options if not _errors(value, o, root, path))
        if matches != 1:
            errors.append(f"{path}: matches {matches} of oneOf (exactly one required)")
    for sub in schema.get("allOf") or []:
        errors += _errors(value, sub, root, path)
    return errors


def _object_errors(value: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], path: str) -> list[str]:
    errors = [f"{path}: missing required property {key!r}" for key in schema.get("required") or [] if key not in value]
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in props:
            errors += _errors(item, props[key], root, f"{path}.{key}")
        elif extra is False:
            errors.append(f"{path}: unexpected property {key!r}")
        elif isinstance(extra, dict):
            errors += _errors(item, extra, root, f"{path}.{key}")
    return errors


def _errors(value: Any, schema: Any, root: dict[str, Any], path: str) -> list[str]:
    schema = resolve_ref(schema, root)
    errors = _combinators(value, schema, root, path)
    kinds = schema.get("type")
    if kinds is not None:
        names = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(is_type(value, n) for n in names):
            return [*errors, f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: {value!r} is not the constant {schema['const']!r}")
    if isinstance(value, dict):
        errors += _object_errors(value, schema, root, path)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _errors(item, schema["items"], root, f"{path}[{i}]")
    return errors


def validate(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` by ``value`` (empty when valid), each prefixed with its path (``$.a[0]``)."""
    return _errors(value, schema, schema, "$")
