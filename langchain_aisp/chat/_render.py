"""Message rendering: LangChain messages -> the prompt text (chat template or plain), tools and JSON instructions.

Tools go through the chat template as far as it renders them (:mod:`langchain_aisp.chat._template` finds
out, once per tokenizer): tool definitions where the template reads them (``tools=``, or the system message's
``tools`` field), AI tool calls as ``tool_calls``, tool results as ``tool`` messages. What it does not render
is written as text, in the call format the reply is asked for (:class:`ToolRendering`); with the documented
format (templates that render no tools, or ``tool_format="documented"``), the Hermes / Qwen 2.5 convention:

* the tool signatures go into the system message inside ``<tools></tools>``;
* a call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
* AI messages with tool calls are rendered as their text plus the calls in that form;
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

from langchain_aisp.chat._format import TOOL_CALL_OPEN, OutputFormat
from langchain_aisp.chat._grammar import HERMES, CallSyntax
from langchain_aisp.chat._template import NOTHING, TemplateTools, read_template, system_tools

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


def _call_text(syntax: CallSyntax, name: str, args: str) -> str:
    """One call in ``syntax``, its name and arguments already written (JSON text, or placeholders)."""
    if syntax.name_sep is not None:
        return syntax.call_open + name + syntax.name_sep + args + syntax.call_close
    return syntax.call_open + f'{{"name": {name}, "{syntax.args_key}": {args}}}' + syntax.call_close


def _calls_text(syntax: CallSyntax, calls: Sequence[str]) -> str:
    return syntax.tag + syntax.prefix + syntax.separator.join(calls) + syntax.suffix


def write_calls(syntax: CallSyntax, calls: Sequence[tuple[str, Any]]) -> str:
    """``(name, args)`` calls as a reply in ``syntax`` writes them (JSON as the grammar writes it)."""
    written = []
    for name, args in calls:
        quoted = json.dumps(name, ensure_ascii=False) if syntax.name_sep is None else name
        written.append(_call_text(syntax, quoted, json.dumps(args, ensure_ascii=False)))
    return _calls_text(syntax, written)


def call_example(syntax: CallSyntax) -> str:
    """The shape of a call in ``syntax``, with ``<function-name>`` and ``<args-json-object>`` placeholders."""
    return _calls_text(syntax, [_call_text(syntax, "<function-name>", "<args-json-object>")])


def render_tool_call(name: str, args: Any) -> str:
    """One call in the documented ``<tool_call>`` form."""
    return write_calls(HERMES, [(name, args)])


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def tools_system_text(fmt: OutputFormat, syntax: CallSyntax = HERMES, *, listed: bool = True) -> str:
    """The tool instructions added to the system message: the tool signatures (``listed``: unless the template
    renders them itself) and how to write a call in ``syntax``."""
    lines = ["# Tools", "", "You may call one or more functions to assist with the user query.", ""]
    if listed:
        lines += [
            "You are provided with function signatures within <tools></tools> XML tags:",
            "<tools>",
            *(json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in fmt.tools),
            "</tools>",
            "",
        ]
    if syntax.call_open.startswith(TOOL_CALL_OPEN):
        intro = (
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:"
        )
    else:
        intro = "For each function call, write it in this format:"
    lines += [
        intro,
        call_example(syntax),
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


def _ai_message(text: str, calls: list[Any], template: TemplateTools, syntax: CallSyntax) -> dict[str, Any]:
    """An AI message: its calls as ``tool_calls`` when the template renders them, else as text in ``syntax``."""
    if template.calls and calls:
        tool_calls = [
            {"type": "function", "id": c.get("id"), "function": {"name": c["name"], "arguments": c["args"]}}
            for c in calls
        ]
        return {"role": "assistant", "content": text, "tool_calls": tool_calls}
    blocks = [text] if text else []
    if calls:
        blocks.append(write_calls(syntax, [(c["name"], c["args"]) for c in calls]))
    return {"role": "assistant", "content": "\n".join(blocks)}


def _tool_result(message: BaseMessage, text: str, template: TemplateTools) -> dict[str, Any]:
    """A tool result: a tool message when the template renders it as one, else a user turn that says it is one."""
    name = getattr(message, "name", None) or ""
    if template.results:
        entry: dict[str, Any] = {"role": "tool", "content": text, "name": name}
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
        return entry
    payload: dict[str, Any] = {"name": name, "content": text}
    if getattr(message, "status", "success") == "error":
        payload["status"] = "error"
    body = json.dumps(payload, ensure_ascii=False)
    return {"role": "user", "content": f"<tool_response>\n{body}\n</tool_response>"}


def to_template_messages(
    messages: Sequence[BaseMessage], template: TemplateTools = NOTHING, syntax: CallSyntax = HERMES
) -> list[dict[str, Any]]:
    """LangChain messages -> chat-template dicts (roles system / user / assistant / tool).

    ``template``: what the chat template renders itself (calls, results); the rest is written as text, calls
    in ``syntax`` (the reply's own call format).
    """
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
            out.append(_ai_message(text, list(message.tool_calls), template, syntax))
        elif isinstance(message, (ToolMessage, FunctionMessage)):
            out.append(_tool_result(message, text, template))
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


def fold_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-template messages without system turns, for a template that refuses them: each system text goes
    into the user turn that follows it, as Gemma 3's own template folds a system message (the system text, a
    blank line, the user text); a system text with no user turn right after it becomes a user turn of its own."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in messages:
        if message["role"] == "system":
            pending += [message["content"]] if message["content"] else []
            continue
        if pending and message["role"] == "user":
            message = {**message, "content": "\n\n".join([*pending, message["content"]])}
        elif pending:
            out.append({"role": "user", "content": "\n\n".join(pending)})
        pending = []
        out.append(message)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


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


@dataclass(frozen=True)
class ToolRendering:
    """How a call's tools, its history of calls and their results reach the prompt (a resolved tool format's
    :attr:`~langchain_aisp.chat._tool_formats.ToolFormat.rendering`)."""

    template: TemplateTools = NOTHING
    """What the chat template renders itself (the rest is written as text)."""
    syntax: CallSyntax = HERMES
    """How calls are written (the text of dropped calls and the instructions)."""
    own_format: bool = False
    """The call format is the template's own: where the template lists the tools it also says how to call."""
    call_id: Callable[[str], str] | None = None
    """Rewrites tool-call ids of the calls and results the template renders (None: kept)."""


DOCUMENTED = ToolRendering()
"""Nothing through the template: tools, calls and results as text in the documented ``<tool_call>`` form."""


def _with_call_ids(message: dict[str, Any], call_id: Callable[[str], str]) -> dict[str, Any]:
    """A template message with its tool-call ids (or the id its tool result answers) passed through ``call_id``."""
    out = dict(message)
    if out.get("tool_calls"):
        out["tool_calls"] = [{**c, "id": call_id(str(c.get("id") or ""))} for c in out["tool_calls"]]
    if "tool_call_id" in out:
        out["tool_call_id"] = call_id(str(out["tool_call_id"] or ""))
    return out


def _with_system_tools(messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The definitions in the system message's ``tools`` field (a system message is added when there is none)."""
    first = dict(messages[0]) if messages and messages[0]["role"] == "system" else {"role": "system", "content": ""}
    first["tools"] = system_tools(tools)
    return [first, *(messages[1:] if messages and messages[0]["role"] == "system" else messages)]


def _tool_instructions(fmt: OutputFormat, tools: ToolRendering, template: TemplateTools) -> str:
    """What the system message says about tools: the tools and the call format where the template does not
    list them; the call format where it lists them but does not say how to call (not its own format); else
    only which call is forced."""
    if template.definitions is None:
        return tools_system_text(fmt, tools.syntax)
    if not tools.own_format:
        return tools_system_text(fmt, tools.syntax, listed=False)
    if fmt.forces_call:
        forced = fmt.forced_tool
        return f"You must call the function {forced}." if forced else "You must call one of the functions."
    return ""


def render(
    tokenizer: Any,
    messages: Sequence[BaseMessage],
    fmt: OutputFormat,
    prefill: str = "",
    *,
    tools: ToolRendering = DOCUMENTED,
    template_kwargs: dict[str, Any] | None = None,
) -> RenderedPrompt:
    """Render a conversation for generation (tools and JSON instructions included), ending in ``prefill``.

    ``tools``: how tools, calls and results are rendered (the resolved tool format's; by default all as text in
    the documented form); ``template_kwargs``: extra ``apply_chat_template`` arguments (``enable_thinking``).

    What the chat template does is read once per tokenizer (:func:`~langchain_aisp.chat._template.read_template`):
    the tools are handed to it only where it reads them (``tools=``, never None or an empty list, so that a
    tokenizer's named templates are chosen by transformers' own rule: ``tool_use`` with tools, ``default``
    without); system turns are folded into the next user turn for a template that refuses them
    (:func:`fold_system`); a template that cannot render a conversation without tools (a ``tool_use`` template
    alone) is not used for one: the plain prompt is, as for a tokenizer without a template.
    """
    if not messages:
        raise ValueError("cannot generate from an empty conversation (0 messages)")
    reading = read_template(tokenizer) if has_chat_template(tokenizer) else None
    template = tools.template if fmt.calls_tools and reading is not None else NOTHING
    with_tools = template.definitions == "tools"  # the tools go to the template (a non-empty list: fmt.calls_tools)
    if reading is not None and reading.needs_tools and not with_tools:
        reading = None  # a template that cannot render a conversation without tools: the documented plain prompt
    dicts = to_template_messages(messages, template, tools.syntax)
    if (template.calls or template.results) and tools.call_id is not None:
        dicts = [_with_call_ids(d, tools.call_id) for d in dicts]
    extra = [_tool_instructions(fmt, tools, template)] if fmt.calls_tools else []
    if fmt.json_schema is not None:
        extra.append(json_system_text(fmt.json_schema))
    dicts = _add_system(dicts, "\n\n".join(e for e in extra if e))
    if template.definitions == "system":
        dicts = _with_system_tools(dicts, fmt.tools)
    if reading is None:
        text = plain_prompt(dicts)
        return RenderedPrompt(text + (" " + prefill if prefill else ""), (" " + prefill) if prefill else "", True)
    if reading.refuses_system_with_tools if with_tools else reading.refuses_system:
        dicts = fold_system(dicts)
    kwargs: dict[str, Any] = {**(template_kwargs or {}), "add_generation_prompt": True, "tokenize": False}
    if with_tools:
        kwargs["tools"] = [{"type": "function", "function": t} for t in fmt.tools]
    try:
        text = tokenizer.apply_chat_template(dicts, **kwargs)
    except Exception as exc:  # jinja errors from the template (e.g. "roles must alternate")
        raise ValueError(f"the model's chat template rejected the conversation: {type(exc).__name__}: {exc}") from exc
    return RenderedPrompt(str(text) + prefill, prefill, False)
