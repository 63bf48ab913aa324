"""Reading a reply: its tool calls (valid and invalid), its JSON object, and its format validity term."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import InvalidToolCall, ToolCall

from langchain_aisp._json import close_objects, find_json, validate
from langchain_aisp.chat._format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, OutputFormat


def schema_errors(value: Any, schema: dict[str, Any]) -> str | None:
    """The first violation of ``schema`` by ``value`` (None when it validates), with objects closed as the grammar
    decodes them (``additionalProperties: false`` unless the schema says otherwise; docs/chat_model.md)."""
    errors = validate(value, close_objects(schema))
    return errors[0] if errors else None


def json_complete(text: str) -> bool:
    """Whether the reply holds complete JSON (a cut reply does not, even if it can be closed)."""
    found = find_json(text)
    return found is not None


def parse_json_reply(text: str) -> tuple[Any, str | None]:
    """The JSON object of a structured-output reply and an error (None when it parsed; a cut object is closed)."""
    found = find_json(text, lenient=True)
    if found is None or not isinstance(found.value, dict):
        return None, "the reply contains no JSON object"
    return found.value, None


@dataclass
class ParsedReply:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    attempted: bool = False
    """Whether the reply tried to call a tool (tags, or a JSON object naming one)."""


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


def _check_call(obj: Any, fmt: OutputFormat) -> tuple[str | None, Any, str | None]:
    """(name, args, error) of one parsed call object."""
    if not isinstance(obj, dict):
        return None, None, "the tool call is not a JSON object"
    name = obj.get("name")
    args: Any = next((obj[k] for k in ("arguments", "parameters", "args") if k in obj), {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return name if isinstance(name, str) else None, args, "the arguments are not valid JSON"
    if not isinstance(name, str) or name not in fmt.tool_names:
        return (name if isinstance(name, str) else None), args, f"unknown tool {name!r}; bound tools: {fmt.tool_names}"
    if not isinstance(args, dict):
        return name, args, "the arguments are not a JSON object"
    params = next(t for t in fmt.tools if t["name"] == name).get("parameters") or {}
    if params and (err := schema_errors(args, params)) is not None:
        return name, args, f"the arguments do not match the schema of {name}: {err}"
    return name, args, None


def incomplete_call_error(closing: str = TOOL_CALL_CLOSE) -> str:
    """The error of a call cut short, naming where the format's call ends (``closing``: its closing tag or
    bracket; "" for a format whose call ends with its JSON object)."""
    end = f"before its closing {closing}" if closing else "inside the call's JSON object"
    return f"the tool call is not complete (the reply ends {end})"


def parse_tool_reply(text: str, fmt: OutputFormat, closing: str = TOOL_CALL_CLOSE) -> ParsedReply:
    """Split a reply (in the documented ``<tool_call>`` form) into text, valid tool calls and invalid ones (never
    raises). ``closing``: how the format the model wrote ends a call (``ToolFormat.closing``), for the error of
    a call cut short."""
    if not fmt.calls_tools:
        return ParsedReply(content=text)
    blocks = list(_CALL_BLOCK.finditer(text))
    unclosed: set[int] = set()
    if blocks:
        candidates = [m.group(1) for m in blocks]
        unclosed = {i for i, m in enumerate(blocks) if not m.group(0).endswith(TOOL_CALL_CLOSE)}
        content = _CALL_BLOCK.sub("", text).strip()
    else:
        found = find_json(text, lenient=True)
        if found is not None and isinstance(found.value, dict) and "name" in found.value:
            candidates, content = [text], ""
        else:
            candidates, content = [], text
    parsed = ParsedReply(content=content, attempted=bool(candidates))
    for position, raw in enumerate(candidates):
        if position in unclosed:  # cut short (by max_tokens): never completed, whatever a lenient parse makes of it
            parsed.invalid_tool_calls.append(
                InvalidToolCall(
                    name=None,
                    args=raw.strip(),
                    id=_new_id(),
                    error=incomplete_call_error(closing),
                    type="invalid_tool_call",
                )
            )
            continue
        found = find_json(raw, lenient=True)
        if found is None:
            parsed.invalid_tool_calls.append(
                InvalidToolCall(
                    name=None,
                    args=raw.strip(),
                    id=_new_id(),
                    error="the tool call is not valid JSON",
                    type="invalid_tool_call",
                )
            )
            continue
        name, args, error = _check_call(found.value, fmt)
        if error is None:
            parsed.tool_calls.append(ToolCall(name=str(name), args=args, id=_new_id(), type="tool_call"))
        else:
            parsed.invalid_tool_calls.append(
                InvalidToolCall(
                    name=name,
                    args=json.dumps(args, ensure_ascii=False) if not isinstance(args, str) else args,
                    id=_new_id(),
                    error=error,
                    type="invalid_tool_call",
                )
            )
    unique: dict[str, ToolCall] = {}
    for call in parsed.tool_calls:  # a small model may repeat a call verbatim: run it once
        unique.setdefault(json.dumps([call["name"], call["args"]], sort_keys=True, ensure_ascii=False), call)
    parsed.tool_calls = list(unique.values())
    if not fmt.parallel_tool_calls and len(parsed.tool_calls) > 1:
        parsed.tool_calls = parsed.tool_calls[:1]
    if fmt.forces_call and not parsed.tool_calls and not parsed.invalid_tool_calls:
        parsed.invalid_tool_calls.append(
            InvalidToolCall(
                name=fmt.forced_tool,
                args=text,
                id=_new_id(),
                error=f"tool_choice={fmt.tool_choice!r} requires a tool call but the reply contains none",
                type="invalid_tool_call",
            )
        )
    return parsed


def format_validity(text: str, fmt: OutputFormat) -> float:
    """Format term in [-1, 1] added (times ``format_weight``) to the reward.

    Tools: 1 for a reply whose calls are all valid calls of bound tools; -0.5 for a
    parseable call with an unknown tool or arguments that break the schema; -1 for an
    unparseable call, or no call at all when a call is forced; 0 for plain text when
    calls are optional. JSON: 1 when the reply is a JSON object that validates, -0.5
    when it is JSON that does not, -1 otherwise.
    """
    if fmt.calls_tools:
        parsed = parse_tool_reply(text, fmt)
        if parsed.tool_calls and not parsed.invalid_tool_calls:
            return 1.0
        if not parsed.attempted:
            return -1.0 if fmt.forces_call else 0.0
        if any((c.get("error") or "").startswith("the tool call is not") for c in parsed.invalid_tool_calls):
            return -1.0
        return -0.5
    if fmt.json_schema is not None:
        value, error = parse_json_reply(text)
        if error is not None or not json_complete(text):
            return -1.0
        return 1.0 if schema_errors(value, fmt.json_schema) is None else -0.5
    return 0.0
