"""The chat template's own tool-call format: detect it, constrain replies to it, read them back.

A model is trained on the call format of its chat template. When the template renders tool definitions,
calls or results (:mod:`langchain_aisp.chat._template` reads which) and writes calls in a format named
here, tools, AI tool calls and tool results go through the template as far as it renders them (the rest
as text in that format, :mod:`langchain_aisp.chat._render`), and replies are decoded under a grammar of
that format:

=============  ==========================================================  ==============================
format         a call                                                      detected (the template writes)
=============  ==========================================================  ==============================
``hermes``     ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``  ``<tool_call>``
``llama3``     ``{"name": ..., "parameters": {...}}`` (the whole reply;      the call as ``{"name": ...,
               parallel calls separated by ``"; "``)                       "parameters": ...}``
``mistral``    ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``    ``[TOOL_CALLS]``
``deepseek``   ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>``  ``<｜tool▁calls▁begin｜>``
               ``NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>`` (calls
               separated by ``"\\n"``) ``<｜tool▁calls▁end｜>``
``documented`` the ``hermes`` call, tools described in the system message   anything else (fallback)
=============  ==========================================================  ==============================

The format is read from what the template writes, not from its source (:func:`detect`): its rendering of a
probe call (``_template.TemplateReading.call``), or, for a template that renders definitions but drops calls
(SmolLM3), its rendering of the tool definitions; a template whose source merely mentions ``"parameters"``
(Command-R7B's tool list) but writes its calls otherwise is not taken for Llama 3's.

``documented`` is the fallback for templates that render no tools, or write calls in a format not
named here (the tool instructions then go into the system message, where the grammar's format is
described; tool definitions still go where a template reads them when it writes no calls of its own,
as Phi-4-mini's system ``tools`` field). ``AISPChatModel(tool_format=...)`` overrides the detection.

Replies are read back by :func:`normalize`, which rewrites a reply of any format into the documented
``<tool_call>`` form, so that one parser (``_parse.parse_tool_reply``) and one set of format
terms serve every format. A tag that is one added token of the tokenizer (Qwen's ``<tool_call>``,
Mistral's ``[TOOL_CALLS]``) is asked for as that token (:func:`resolve`); decoding drops special tokens,
so a reply that starts with Mistral's JSON list is read as calls too. What the template writes right
after the opening tag (Nemo's ``[TOOL_CALLS][``, Mistral v0.3's ``[TOOL_CALLS] [``) is read from the same
rendering of the probe call (``_template.template_after``).
"""

from __future__ import annotations

import hashlib
import json
import string
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat._reasoning import template_text
from langchain_aisp.chat._render import ToolRendering
from langchain_aisp.chat._template import (
    NOTHING,
    PROBE_CALL,
    TemplateReading,
    TemplateTools,
    read_template,
    template_after,
    template_tools,
)

ToolFormatName = Literal["auto", "documented", "hermes", "llama3", "mistral", "deepseek"]
TOOL_FORMATS = ("auto", "documented", "hermes", "llama3", "mistral", "deepseek")
"""Values of ``AISPChatModel.tool_format`` ("auto": detected from the chat template)."""

MISTRAL_TAG = "[TOOL_CALLS]"
LLAMA_PYTHON_TAG = "<|python_tag|>"
DEEPSEEK = grammarlib.CallSyntax(
    call_open="<｜tool▁call▁begin｜>function<｜tool▁sep｜>",
    call_close="\n```<｜tool▁call▁end｜>",
    separator="\n",
    tag="<｜tool▁calls▁begin｜>",
    suffix="<｜tool▁calls▁end｜>",
    name_sep="\n```json\n",
)
"""DeepSeek's calls (V3 and the R1 distills' templates): the name, then the arguments in a json code block."""


def mistral_call_id(call_id: str) -> str:
    """A 9-character alphanumeric id for ``call_id`` (Mistral's templates refuse others), the same for the
    call and for the tool result that answers it."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    digest = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    alphabet = string.ascii_letters + string.digits
    return "".join(alphabet[(digest >> (6 * i)) % len(alphabet)] for i in range(9))


@dataclass(frozen=True)
class ToolFormat:
    """One tool-call format."""

    name: str
    """"documented", "hermes", "llama3", "mistral" or "deepseek"."""
    native: bool
    """The format is the chat template's own: tools, AI tool calls and tool results go through the template
    as far as it renders them (``template``)."""
    syntax: grammarlib.CallSyntax
    """How calls are written (the grammar)."""
    prose: str
    """Regular expression of a prose reply under ``tool_choice="auto"`` (cannot be read as a call)."""
    call_id: Callable[[str], str] | None = None
    """Rewrites tool-call ids in the rendered history (None: kept)."""
    template: TemplateTools = NOTHING
    """What the chat template renders of tools (set by :func:`resolve`; nothing: all as text)."""

    @property
    def rendering(self) -> ToolRendering:
        """How tools, calls and results of this format reach the prompt (``_render.render(tools=...)``)."""
        return ToolRendering(self.template, self.syntax, self.native, self.call_id)

    def grammar(self, tools: list[dict[str, Any]], *, choice: str, parallel: bool, strict: bool) -> str:
        """The grammar of a reply of calls (``choice``: "any" or a tool name)."""
        return grammarlib.tool_call_grammar(tools, choice=choice, parallel=parallel, strict=strict, syntax=self.syntax)

    def prose_grammar(self) -> str:
        return grammarlib.prose_grammar(self.prose)

    @property
    def closing(self) -> str:
        """What ends a reply's calls in this format, for messages: ``</tool_call>``, Mistral's ``]``; "" for
        Llama 3's, which end with their JSON object."""
        return self.syntax.suffix or self.syntax.call_close.strip()


FORMATS: dict[str, ToolFormat] = {
    "documented": ToolFormat("documented", False, grammarlib.HERMES, "[^<]+"),
    "hermes": ToolFormat("hermes", True, grammarlib.HERMES, "[^<]+"),
    "llama3": ToolFormat(
        "llama3",
        True,
        grammarlib.CallSyntax(call_open="", call_close="", separator="; ", args_key="parameters"),
        r"\s*[^<{\s][^<]*",
    ),
    "mistral": ToolFormat(
        "mistral",
        True,
        grammarlib.CallSyntax(call_open="", call_close="", separator=", ", tag=MISTRAL_TAG, prefix=" [", suffix="]"),
        r"\s*[^<\[\s][^<]*",
        mistral_call_id,
    ),
    "deepseek": ToolFormat("deepseek", True, DEEPSEEK, "[^<]+"),
}

CALL_TAGS = (("mistral", MISTRAL_TAG), ("deepseek", DEEPSEEK.tag), ("hermes", "<tool_call>"))
"""The opening tag of each tagged format's calls, looked for in order in what the template writes (then Llama 3's
``{"name": ..., "parameters": ...}`` object)."""


def _llama3_call(text: str) -> bool:
    """Whether ``text`` holds the probe call as Llama 3's JSON object: ``{"name": PROBE_CALL, "parameters": ...}``."""
    decoder = json.JSONDecoder()
    for at in (i for i, c in enumerate(text) if c == "{"):
        try:
            value, _ = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value.get("name") == PROBE_CALL and "parameters" in value:
            return True
    return False


def written_format(reading: TemplateReading) -> str:
    """The format whose syntax the template itself writes: in its rendering of the probe call, or, for a template
    that renders no calls, in what it writes with the tool definitions (its instructions on calling; a Llama 3
    object is only recognised in a call). "documented" when it writes none of them."""
    text = reading.call if reading.call is not None else reading.guide
    for name, tag in CALL_TAGS:
        if tag in text:
            return name
    return "llama3" if reading.call is not None and _llama3_call(reading.call) else "documented"


def detect(tokenizer: Any) -> str:
    """The format the chat template writes calls in: "hermes", "llama3", "mistral", "deepseek" or "documented"
    (a template that renders no tool definitions and no calls, or writes calls in no format named here), read
    from the template's own rendering (:func:`written_format`)."""
    reading = read_template(tokenizer)
    return written_format(reading) if reading.tools.knows_tools else "documented"


def resolve(tokenizer: Any, setting: str = "auto") -> ToolFormat:
    """The format of a call: ``setting``, or with "auto" the template's (:func:`detect`), with what the template
    renders of tools (:func:`~langchain_aisp.chat._template.template_tools`; ``"documented"`` set explicitly:
    nothing, all as text).

    A native format needs a template that renders tool definitions or calls (ValueError otherwise). What the
    template writes after the format's opening tag is read from its own rendering of a call (``template_after``),
    and a tag that is one added token of the tokenizer is asked for as that token
    (:func:`_grammar.added_tokens_in`). Resolved once per tokenizer, setting and template (``_RESOLVED``).
    """
    if setting not in TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {list(TOOL_FORMATS)}, got {setting!r}")
    key = (setting, template_text(tokenizer), len(tokenizer))
    with _LOCK:
        hit = _RESOLVED.get(tokenizer, {}).get(key)
    if hit is not None:
        return hit
    name = detect(tokenizer) if setting == "auto" else setting
    found = FORMATS[name]
    template = template_tools(tokenizer) if setting == "auto" or found.native else NOTHING
    if not found.native and template.calls:  # its calls are in a format not named here: none through the template
        template = NOTHING
    if found.native and not template.knows_tools:
        raise ValueError(
            f"tool_format={name!r} needs a chat template that renders tools or tool calls "
            "(apply_chat_template(..., tools=...), or tool_calls on assistant messages); "
            "this model's template does not: use tool_format='auto' or 'documented'"
        )
    found = replace(found, template=template)
    syntax = _template_opening(tokenizer, found) if found.native else found.syntax
    syntax = replace(syntax, tokens=grammarlib.added_tokens_in(tokenizer, syntax.texts()))
    found = replace(found, syntax=syntax)
    with _LOCK:
        _RESOLVED.setdefault(tokenizer, {})[key] = found
    return found


_LOCK = threading.Lock()
_RESOLVED: weakref.WeakKeyDictionary[Any, dict[tuple[str, str, int], ToolFormat]] = weakref.WeakKeyDictionary()
"""Documented cache: the resolved format per tokenizer (held weakly), setting, chat template and vocabulary size."""


def _template_opening(tokenizer: Any, found: ToolFormat) -> grammarlib.CallSyntax:
    """``found``'s syntax with the text after its opening tag as the chat template writes it (Nemo's
    ``[TOOL_CALLS][``, Mistral v0.3's ``[TOOL_CALLS] [``, Qwen's ``<tool_call>\\n``); a format without a tag
    (llama3) is kept."""
    syntax = found.syntax
    tag = syntax.tag or syntax.call_open.strip()
    between = template_after(tokenizer, tag) if tag else None
    if between is None:
        return syntax
    if syntax.tag:
        return replace(syntax, prefix=between)
    return replace(syntax, call_open=tag + between)


# --- replies -> the documented form --------------------------------------------------------------------


def _block(body: str, complete: bool = True) -> str:
    return f"{grammarlib.TOOL_CALL_OPEN}\n{body}" + (f"\n{grammarlib.TOOL_CALL_CLOSE}" if complete else "")


def _call_block(value: Any, args_key: str) -> str:
    """One parsed call as a documented block (arguments under "arguments"); other values are kept as they are,
    for the parser to report."""
    if isinstance(value, dict) and "name" in value and args_key in value and "arguments" not in value:
        value = {"name": value["name"], "arguments": value[args_key]}
    return _block(json.dumps(value, ensure_ascii=False))


def _json_values(text: str, separator: str) -> tuple[list[Any], str]:
    """JSON values one after the other (``separator`` between them): (values, the unread rest)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    rest = text.strip()
    while rest:
        try:
            value, end = decoder.raw_decode(rest)
        except json.JSONDecodeError:
            return values, rest
        values.append(value)
        rest = rest[end:].strip()
        if rest.startswith(separator.strip()):
            rest = rest[len(separator.strip()) :].strip()
    return values, ""


def _named_calls(text: str, syntax: grammarlib.CallSyntax) -> str:
    """A reply whose calls write their name before their arguments (``syntax.name_sep``: DeepSeek) in the
    documented form; a call without its closing text is kept as an unclosed block (cut short)."""
    at = text.find(syntax.tag + syntax.prefix)
    if at < 0:
        return text
    content, body = text[:at].strip(), text[at + len(syntax.tag + syntax.prefix) :]
    blocks = []
    for piece in body.split(syntax.call_open)[1:]:
        call, closed, _ = piece.partition(syntax.call_close)
        name, sep, args = call.partition(syntax.name_sep or "")
        written = '{"name": ' + json.dumps(name.strip(), ensure_ascii=False) + ', "arguments": ' + args.strip() + "}"
        blocks.append(_block(written, complete=bool(closed and sep)))
    if not blocks:
        blocks = [_block(body, complete=False)]
    return "\n".join([content, *blocks] if content else blocks)


def normalize(text: str, tool_format: ToolFormat) -> str:
    """``text`` (a reply in ``tool_format``) rewritten in the documented ``<tool_call>`` form.

    Calls that do not parse are kept as an unclosed block, which the parser reports as incomplete
    (a reply cut by ``max_tokens``); prose is returned as it is.
    """
    if tool_format.name == "llama3":
        body = text.strip()
        if body.startswith(LLAMA_PYTHON_TAG):
            body = body[len(LLAMA_PYTHON_TAG) :].strip()
        if not body.startswith("{"):
            return text
        values, rest = _json_values(body, tool_format.syntax.separator)
        blocks = [_call_block(v, "parameters") for v in values]
        return "\n".join([*blocks, _block(rest, complete=False)] if rest else blocks)
    if tool_format.name == "mistral":
        at = text.find(MISTRAL_TAG)
        if at >= 0:
            content, body = text[:at].strip(), text[at + len(MISTRAL_TAG) :].strip()
        elif text.lstrip().startswith("["):  # the tag was a special token, dropped by decoding
            content, body = "", text.strip()
        else:
            return text
        values, rest = _json_values(body, "")
        if len(values) == 1 and isinstance(values[0], list) and not rest:
            blocks = [_call_block(v, "arguments") for v in values[0]]
        else:  # not one complete list: cut short, or malformed
            blocks = [_block(body, complete=False)]
        return "\n".join([content, *blocks] if content else blocks)
    if tool_format.syntax.name_sep is not None:
        return _named_calls(text, tool_format.syntax)
    return text
