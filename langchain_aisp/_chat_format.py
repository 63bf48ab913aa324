"""Message rendering, the tool / JSON prompt format, reply parsing and format validity.

Private helpers of :mod:`langchain_aisp.chat_models`; plain functions, no model, no torch.

The tool format (used when the chat template does not render ``tools`` itself) is the
Hermes / Qwen 2.5 convention:

* the tool signatures go into the system message inside ``<tools></tools>``;
* a call is ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
* AI messages with tool calls are rendered as their text plus one such block per call;
* tool results become a user turn ``<tool_response>\\n{"name": ..., "content": ...}\\n</tool_response>``.

Replies with tools or a schema bound are constrained while decoding by a grammar
(:mod:`langchain_aisp._grammar_llguidance`), so calls and JSON are valid by construction;
what every reply must start with (``<tool_call>\n{"name": "add", "arguments": {"a":`` for a
forced call of ``add``) is *prefilled* in the prompt, so a small model only writes the rest.
The prefill is part of the reply that the reward sees and that is parsed.

Under ``tool_choice="auto"`` half of the samples are free (prose, or prose then calls) and
half are forced calls; :func:`auto_choice_score` is the documented rule that decides
between a call and prose (see ``docs/chat_model.md``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)

from langchain_aisp._json import close_objects, find_json, validate

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
PLAIN_STOP = "\nUser:"
"""Extra stop string of the plain (no chat template) format: a base model would go on with the next user turn."""

_MEDIA_BLOCKS = {"image", "image_url", "audio", "input_audio", "file", "video"}
_SKIPPED_BLOCKS = {"tool_use", "tool_call", "reasoning", "thinking"}
"""Content blocks that are rendered from ``tool_calls`` (or carry no text for the prompt)."""


@dataclass(frozen=True)
class OutputFormat:
    """What the reply must look like: free text, tool calls, or one JSON object."""

    tools: tuple[dict[str, Any], ...] = ()
    """OpenAI-style function definitions: {"name", "description", "parameters"}."""
    tool_choice: str = "auto"
    """"auto", "none", "any" (a call of some tool is required) or a tool name."""
    json_schema: dict[str, Any] | None = None
    """Structured output (json_schema / json_mode): the reply is one JSON object."""
    parallel_tool_calls: bool = False
    """Several calls per reply; off unless asked for (small models repeat a call until max_tokens)."""
    strict: bool | None = None
    """True/None: a schema keyword the grammar cannot enforce is refused when bound; False: it is dropped
    from the grammar (the reply is still validated against the full schema after decoding)."""

    @property
    def tool_names(self) -> list[str]:
        return [t["name"] for t in self.tools]

    @property
    def calls_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def forced_tool(self) -> str | None:
        """The one tool a call is forced to, if any."""
        if not self.calls_tools:
            return None
        if self.tool_choice in self.tool_names:
            return self.tool_choice
        if self.tool_choice == "any" and len(self.tools) == 1:
            return self.tools[0]["name"]
        return None

    @property
    def forces_call(self) -> bool:
        return self.calls_tools and self.tool_choice != "auto"

    @property
    def constrained(self) -> bool:
        """Whether a format validity term is added to the reward."""
        return self.calls_tools or self.json_schema is not None

    def key(self) -> str:
        return json.dumps(
            [list(self.tools), self.tool_choice, self.json_schema, self.parallel_tool_calls, self.strict], default=str
        )


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str:
    """Map LangChain's tool_choice spellings to "auto" | "none" | "any" | <tool name>."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        if isinstance(name, str):
            tool_choice = name
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ValueError(
        f"tool_choice must be None, 'auto', 'none', 'any', 'required', True or the name of a bound tool "
        f"({list(names)}), got {tool_choice!r}"
    )


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


# --- JSON schema validation and parsing (one implementation: langchain_aisp._json) ---------------


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


def parse_tool_reply(text: str, fmt: OutputFormat) -> ParsedReply:
    """Split a reply into text, valid tool calls and invalid ones (never raises)."""
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
                    error=f"the tool call is not complete (the reply ends before {TOOL_CALL_CLOSE})",
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


# --- tool_choice="auto": call or prose? ---------------------------------------------------

_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    "the a an and or of to in on at for with from by is are was be this that what which who how when where "
    "get set use using call tool function value given return returns about into over under after before some "
    "more most other your their there these those them then than also just only very like have does will would "
    "could should please tell give make".split()
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def _same_word(a: str, b: str) -> bool:
    """Equal, or sharing a prefix of 5+ letters (weather / weathers, multiply / multiplied)."""
    return a == b or (min(len(a), len(b)) >= 5 and a[:5] == b[:5])


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else []


def _grounded(value: Any, context: str, context_words: set[str]) -> bool:
    """A string or number argument that comes from the conversation (not invented)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if not text or text in context:
            return True
        words = set(_WORD.findall(text))
        return bool(words) and all(any(_same_word(w, c) for c in context_words) for w in words)
    forms = {repr(value), str(value)}
    if isinstance(value, float) and value.is_integer():
        forms.add(str(int(value)))
    return any(re.search(rf"(?<![\w.]){re.escape(f)}(?![\w])", context) for f in forms)


def _conversation_text(messages: Sequence[BaseMessage]) -> tuple[str, str]:
    """(all user and tool text, the last user text), lowercased."""
    texts: list[str] = []
    last_user = ""
    for m in messages:
        is_user = isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role in ("user", "human"))
        if not (is_user or isinstance(m, (ToolMessage, FunctionMessage))):
            continue
        try:
            text = content_text(m).lower()
        except ValueError:
            continue
        texts.append(text)
        if is_user:
            last_user = text
    return "\n".join(texts), last_user


def arguments_grounded(call: ToolCall, messages: Sequence[BaseMessage]) -> bool:
    """Every argument value (string or number) of ``call`` appears in the user or tool text of the
    conversation (a string may also match word by word): the model took it from there, not invented it."""
    context, _ = _conversation_text(messages)
    context_words = _words(context)
    return all(_grounded(v, context, context_words) for v in _leaves(call["args"]))


def _relevance(tool: dict[str, Any], last_user: str) -> int:
    """Words of the tool's name and description (longer than 3 letters) found in the user's last message."""
    user_words = _words(last_user)
    tool_words = _words(" ".join([str(tool["name"]).replace("_", " "), str(tool.get("description") or "")]))
    return sum(any(_same_word(w, u) for u in user_words) for w in tool_words if len(w) > 3) + (
        5 if str(tool["name"]).lower() in last_user else 0
    )


MAX_SPANS = 400
"""Most argument candidates a forced-call row of ``tool_choice="auto"`` may pick from."""
UNSPACED = r"\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
"""Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, CJK ideographs)."""
MAX_UNSPACED = 10
"""Longest span (in characters) taken from inside a run of an unspaced script ("王小明" in "王小明今年28岁")."""
_NUMBER = re.compile(r"(?<![\d.A-Za-z])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?![\dA-Za-z])")
"""A number as written (``1,500`` is 1500), also next to an unspaced script (``28岁``)."""


def conversation_texts(messages: Sequence[BaseMessage]) -> list[str]:
    """The user and tool texts of the conversation, as written, the last message first."""
    texts: list[str] = []
    for m in reversed(messages):
        is_user = isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role in ("user", "human"))
        if is_user or isinstance(m, (ToolMessage, FunctionMessage)):
            try:
                texts.append(content_text(m))
            except ValueError:
                continue
    return texts


def _unspaced_spans(text: str) -> list[str]:
    """Every span of up to ``MAX_UNSPACED`` characters inside runs of an unspaced script (digits included,
    never cut inside a number, never only digits): ``"王小明今年28岁"`` -> ``"王", "王小", ..., "28岁"``."""
    out = []
    for run in re.findall(rf"\d*[{UNSPACED}]+(?:\d+[{UNSPACED}]*)*", text):
        cuts = [i for i in range(len(run) + 1) if i in (0, len(run)) or not (run[i - 1].isdigit() and run[i].isdigit())]
        out += [run[i:j] for i in cuts for j in cuts if 0 < j - i <= MAX_UNSPACED and not run[i:j].isdigit()]
    return out


def conversation_spans(messages: Sequence[BaseMessage], max_words: int = 6) -> tuple[list[str], list[float]]:
    """Candidate argument values taken from the conversation: word spans (up to ``max_words`` words, as
    written, without surrounding punctuation), spans of up to ``MAX_UNSPACED`` characters inside runs of
    unspaced scripts, and numbers of the user and tool text, the last user message first; at most
    ``MAX_SPANS`` spans."""
    texts = conversation_texts(messages)
    spans: dict[str, None] = {}
    numbers: dict[float, None] = {}
    for text in texts:
        words = list(re.finditer(r"\S+", text))
        for i in range(len(words)):
            for j in range(i, min(len(words), i + max_words)):
                span = text[words[i].start() : words[j].end()].strip(".,;:!?\"'()[]{}<>«»“”‘’")
                if span and len(spans) < MAX_SPANS:
                    spans.setdefault(span, None)
        for span in _unspaced_spans(text):
            if len(spans) < MAX_SPANS:
                spans.setdefault(span, None)
        for match in _NUMBER.finditer(text):
            numbers.setdefault(float(match.group().replace(",", "")), None)
    return list(spans), list(numbers)


def rank_tools(fmt: OutputFormat, messages: Sequence[BaseMessage]) -> list[str]:
    """The bound tools, most related to the user's last message first (stable for ties): under
    ``tool_choice="auto"`` forced-call sample ``i`` calls tool ``i % len(tools)`` of this order."""
    _, last_user = _conversation_text(messages)
    order = sorted(range(len(fmt.tools)), key=lambda i: -_relevance(fmt.tools[i], last_user))
    return [fmt.tools[i]["name"] for i in order]


def call_is_grounded(call: ToolCall, fmt: OutputFormat, messages: Sequence[BaseMessage]) -> bool:
    """The rule for ``tool_choice="auto"``: is this call what the conversation asks for?

    Both must hold: :func:`arguments_grounded`, and the request is about the tool, i.e. the
    last user message names the tool or shares a word with its name or description, unless
    every argument is a number taken from the conversation ("what is 12 times 7?").
    """
    if not arguments_grounded(call, messages):
        return False
    _, last_user = _conversation_text(messages)
    tool = next((t for t in fmt.tools if t["name"] == call["name"]), {"name": call["name"]})
    relevant = _relevance(tool, last_user) > 0
    leaves = _leaves(call["args"])
    numbers = bool(leaves) and all(not isinstance(v, str) for v in leaves)
    return relevant or numbers


def _repeats_a_value(call: ToolCall) -> bool:
    """Two arguments with the same value (``name="30", age=30``): a small model's usual slip."""
    leaves = [str(v).strip().lower() for v in _leaves(call["args"])]
    return len(leaves) != len(set(leaves))


def _tools_called_this_turn(messages: Sequence[BaseMessage]) -> set[str]:
    """Names of the tools the assistant already called since the user's last message."""
    called: set[str] = set()
    for m in reversed(messages):
        if isinstance(m, HumanMessage) or (isinstance(m, ChatMessage) and m.role in ("user", "human")):
            break
        if isinstance(m, AIMessage):
            called.update(c["name"] for c in m.tool_calls)
    return called


def auto_choice_score(text: str, fmt: OutputFormat, messages: Sequence[BaseMessage]) -> float:
    """Format term under ``tool_choice="auto"`` (times ``format_weight``, added to the reward).

    Positive for a reply whose calls are all valid, grounded (:func:`call_is_grounded`) and of tools
    not yet called since the user's last message: ``r / (r + 1)`` with ``r`` the tool's relatedness
    to the user's last message (words shared with its name and description, at least 1), times 0.75
    when two arguments of a call have the same value; so among acceptable calls the more related
    tool and distinct values win. 0 for prose; -1 for anything else (an invented or
    cut-off call, or a tool called again in the same turn: once its result is in, the model answers).
    """
    parsed = parse_tool_reply(text, fmt)
    if not parsed.attempted:
        return 0.0
    if parsed.invalid_tool_calls or not parsed.tool_calls:
        return -1.0
    called = _tools_called_this_turn(messages)
    for call in parsed.tool_calls:
        if call["name"] in called or not call_is_grounded(call, fmt, messages):
            return -1.0
    _, last_user = _conversation_text(messages)
    tools = {t["name"]: t for t in fmt.tools}
    related = min(max(_relevance(tools.get(c["name"], {"name": c["name"]}), last_user), 1) for c in parsed.tool_calls)
    value = 0.75 if any(_repeats_a_value(c) for c in parsed.tool_calls) else 1.0
    return value * related / (related + 1)  # in (0, 1): the more related the tool, the higher
