"""Message rendering: LangChain messages -> the prompt text (chat template or plain), tools and JSON instructions.

The tool format (used when the chat template does not render ``tools`` itself) is the
Hermes / Qwen 2.5 convention:

* the tool signatures go into the system message inside ``<tools></tools>``;
* a call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
* AI messages with tool calls are rendered as their text plus one such block per call;
* tool results become a user turn ``<tool_response>\\n{"name": ..., "content": ...}\\n</tool_response>``.

Replies with tools or a schema bound are constrained while decoding by a grammar
(:mod:`langchain_aisp.chat._grammar`), so calls and JSON are valid by construction;
what every reply must start with (``<tool_call>\n{"name": "add", "arguments": {"a":`` for a
forced call of ``add``) is *prefilled* in the prompt, so a small model only writes the rest.
The prefill is part of the reply that the reward sees and that is parsed (``_parse``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_aisp.chat._format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, OutputFormat

PLAIN_STOP = "\nUser:"
"""Extra stop string of the plain (no chat template) format: a base model would go on with the next user turn."""

_MEDIA_BLOCKS = {"image", "image_url", "audio", "input_audio", "file", "video"}
_SKIPPED_BLOCKS = {"tool_use", "tool_call", "reasoning", "thinking"}
"""Content blocks that are rendered from ``tool_calls`` (or carry no text for the prompt)."""


# --- rendering ---------------------------------------------------------------------


def content_text(message: BaseMessage) -> str:
    """Text of a message; media blocks raise (the model is text-only), tool-use blocks are skipped."""
    content = message.content
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(
            f"{type(message).__name__} content must be a string or a list of content blocks, "
            f"got {content!r} ({type(content).__name__})"
        )
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in _MEDIA_BLOCKS:
            raise ValueError(
                f"{type(message).__name__} has a {kind!r} content block; AISPChatModel runs a text-only "
                "model and cannot read images, audio or files"
            )
        elif kind not in _SKIPPED_BLOCKS:
            raise ValueError(f"{type(message).__name__} has an unsupported content block type {kind!r}")
    return "".join(parts)


def _call_json(name: str, args: Any) -> str:
    return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)


def render_tool_call(name: str, args: Any) -> str:
    return f"{TOOL_CALL_OPEN}\n{_call_json(name, args)}\n{TOOL_CALL_CLOSE}"


def supports_native_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a ``tools`` argument itself."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = " ".join(str(t) for t in template.values())
    return isinstance(template, str) and "tools" in template


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def tools_system_text(fmt: OutputFormat) -> str:
    """The tool instructions added to the system message when the template does not render tools."""
    lines = [
        "# Tools",
        "",
        "You may call one or more functions to assist with the user query.",
        "",
        "You are provided with function signatures within <tools></tools> XML tags:",
        "<tools>",
        *(json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in fmt.tools),
        "</tools>",
        "",
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:",
        TOOL_CALL_OPEN,
        '{"name": <function-name>, "arguments": <args-json-object>}',
        TOOL_CALL_CLOSE,
        "",
        "Take argument values from the user's message, written as the user wrote them, and keep them short.",
    ]
    forced = fmt.forced_tool
    if forced is not None:
        lines += ["", f"You must call the function {forced}."]
    elif fmt.forces_call:
        lines += ["", "You must call one of these functions."]
    return "\n".join(lines)


def json_system_text(schema: dict[str, Any]) -> str:
    return "Reply with only one JSON object, no other text. It must validate against this JSON schema:\n" + json.dumps(
        schema, ensure_ascii=False
    )


CHAT_MESSAGE_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}
"""Roles a ``ChatMessage`` may carry, mapped to chat-template roles; any other role is an error."""


def _check_user_text(message: BaseMessage, position: int, text: str) -> None:
    """A user turn must say something: an empty (or whitespace-only) one is a caller bug, not a prompt."""
    if not text.strip():
        raise ValueError(
            f"message {position} ({type(message).__name__}) has empty content {message.content!r}; a user "
            "message needs non-empty text (images, audio and files are not supported)"
        )


def to_template_messages(messages: Sequence[BaseMessage], native_tools: bool) -> list[dict[str, Any]]:
    """LangChain messages -> chat-template dicts (roles system / user / assistant / tool)."""
    out: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if not isinstance(message, BaseMessage):
            raise ValueError(f"message {position} is not a LangChain message: {message!r} ({type(message).__name__})")
        text = content_text(message)
        if isinstance(message, HumanMessage):
            _check_user_text(message, position, text)
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": text})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": text})
        elif isinstance(message, AIMessage):
            calls = list(message.tool_calls)
            if native_tools and calls:
                out.append(
                    {
                        "role": "assistant",
                        "content": text,
                        "tool_calls": [
                            {
                                "type": "function",
                                "id": c.get("id"),
                                "function": {"name": c["name"], "arguments": c["args"]},
                            }
                            for c in calls
                        ],
                    }
                )
            else:
                blocks = [text] if text else []
                blocks += [render_tool_call(c["name"], c["args"]) for c in calls]
                out.append({"role": "assistant", "content": "\n".join(blocks)})
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            name = getattr(message, "name", None) or ""
            if native_tools:
                entry: dict[str, Any] = {"role": "tool", "content": text, "name": name}
                if isinstance(message, ToolMessage):
                    entry["tool_call_id"] = message.tool_call_id
                out.append(entry)
            else:
                payload: dict[str, Any] = {"name": name, "content": text}
                if getattr(message, "status", "success") == "error":
                    payload["status"] = "error"
                body = json.dumps(payload, ensure_ascii=False)
                out.append({"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"})
        elif isinstance(message, ChatMessage):
            role = CHAT_MESSAGE_ROLES.get(message.role)
            if role is None:
                raise ValueError(
                    f"message {position} is a ChatMessage with unknown role {message.role!r}; allowed roles: "
                    f"{sorted(CHAT_MESSAGE_ROLES)}"
                )
            if role == "user":
                _check_user_text(message, position, text)
            out.append({"role": role, "content": text})
        else:
            raise ValueError(f"unsupported message type {type(message).__name__}")
    return out


def _add_system(messages: list[dict[str, Any]], extra: str) -> list[dict[str, Any]]:
    if not extra:
        return messages
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{extra}" if first["content"] else extra
        return [first, *messages[1:]]
    return [{"role": "system", "content": extra}, *messages]


_PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def plain_prompt(messages: Sequence[dict[str, Any]]) -> str:
    """The fallback for tokenizers without a chat template: ``Role: text`` lines, ending in ``Assistant:``."""
    lines = [f"{_PLAIN_ROLES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    """The full prompt text (template output plus the prefill)."""
    prefill: str
    plain: bool
    """True when the plain fallback was used (no chat template)."""


def _with_call_ids(message: dict[str, Any], call_id: Callable[[str], str]) -> dict[str, Any]:
    """A template message with its tool-call ids (or the id its tool result answers) passed through ``call_id``."""
    out = dict(message)
    if out.get("tool_calls"):
        out["tool_calls"] = [{**c, "id": call_id(str(c.get("id") or ""))} for c in out["tool_calls"]]
    if "tool_call_id" in out:
        out["tool_call_id"] = call_id(str(out["tool_call_id"] or ""))
    return out


def render(
    tokenizer: Any,
    messages: Sequence[BaseMessage],
    fmt: OutputFormat,
    prefill: str = "",
    *,
    native_tools: bool | None = None,
    template_kwargs: dict[str, Any] | None = None,
    call_id: Callable[[str], str] | None = None,
) -> RenderedPrompt:
    """Render a conversation for generation (tools and JSON instructions included), ending in ``prefill``.

    ``native_tools``: render tools through the template (None: when it supports them);
    ``template_kwargs``: extra ``apply_chat_template`` arguments (``enable_thinking``); ``call_id``: rewrites
    the tool-call ids of natively rendered calls and results (Mistral's templates want 9 characters).
    """
    if not messages:
        raise ValueError("cannot generate from an empty conversation (0 messages)")
    if native_tools is None:
        native_tools = supports_native_tools(tokenizer)
    native = fmt.calls_tools and native_tools and has_chat_template(tokenizer)
    dicts = to_template_messages(messages, native_tools=native)
    if native and call_id is not None:
        dicts = [_with_call_ids(d, call_id) for d in dicts]
    extra = []
    if fmt.calls_tools and not native:
        extra.append(tools_system_text(fmt))
    elif native and fmt.forces_call:
        forced = fmt.forced_tool
        extra.append(f"You must call the function {forced}." if forced else "You must call one of the functions.")
    if fmt.json_schema is not None:
        extra.append(json_system_text(fmt.json_schema))
    dicts = _add_system(dicts, "\n\n".join(extra))
    if not has_chat_template(tokenizer):
        text = plain_prompt(dicts)
        return RenderedPrompt(text + (" " + prefill if prefill else ""), (" " + prefill) if prefill else "", True)
    kwargs: dict[str, Any] = {**(template_kwargs or {}), "add_generation_prompt": True, "tokenize": False}
    if native:
        kwargs["tools"] = [{"type": "function", "function": t} for t in fmt.tools]
    try:
        text = tokenizer.apply_chat_template(dicts, **kwargs)
    except Exception as exc:  # jinja errors from the template (e.g. "roles must alternate")
        raise ValueError(f"the model's chat template rejected the conversation: {type(exc).__name__}: {exc}") from exc
    return RenderedPrompt(str(text) + prefill, prefill, False)
