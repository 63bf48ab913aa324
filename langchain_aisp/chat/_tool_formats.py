"""The chat template's own tool-call format: detect it, constrain replies to it, read them back.

A model is trained on the call format of its chat template. When the template renders ``tools``
(``apply_chat_template(..., tools=...)``) in a format named here, tools, AI tool calls and tool
results go through the template, and replies are decoded under a grammar of that format:

=============  ==========================================================  ==========================
format         a call                                                      detected by (in template)
=============  ==========================================================  ==========================
``hermes``     ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``  ``<tool_call>``
``llama3``     ``{"name": ..., "parameters": {...}}`` (the whole reply;      ``"parameters"``
               parallel calls separated by ``"; "``)
``mistral``    ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``    ``[TOOL_CALLS]``
``documented`` the ``hermes`` call, tools described in the system message   anything else (fallback)
=============  ==========================================================  ==========================

``documented`` is the fallback for templates that do not render tools, or render them in a format
not named here (the tool instructions then go into the system message, where the grammar's format is
described). ``AISPChatModel(tool_format=...)`` overrides the detection.

Replies are read back by :func:`normalize`, which rewrites a reply of any format into the documented
``<tool_call>`` form, so that one parser (``_parse.parse_tool_reply``) and one set of format
terms serve every format. Mistral's ``[TOOL_CALLS]`` is a special token in Mistral's own tokenizers:
the grammar then asks for that token, and decoding (which drops special tokens) leaves a reply that
starts with the JSON list, which :func:`normalize` reads as calls too.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat._reasoning import template_text
from langchain_aisp.chat._render import supports_native_tools

ToolFormatName = Literal["auto", "documented", "hermes", "llama3", "mistral"]
TOOL_FORMATS = ("auto", "documented", "hermes", "llama3", "mistral")
"""Values of ``AISPChatModel.tool_format`` ("auto": detected from the chat template)."""

MISTRAL_TAG = "[TOOL_CALLS]"
LLAMA_PYTHON_TAG = "<|python_tag|>"


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
    """"documented", "hermes", "llama3" or "mistral"."""
    native: bool
    """Tools, AI tool calls and tool results are rendered by the chat template (``tools=``)."""
    syntax: grammarlib.CallSyntax
    """How calls are written (the grammar)."""
    prose: str
    """Regular expression of a prose reply under ``tool_choice="auto"`` (cannot be read as a call)."""
    call_id: Callable[[str], str] | None = None
    """Rewrites tool-call ids in the rendered history (None: kept)."""

    def grammar(self, tools: list[dict[str, Any]], *, choice: str, parallel: bool, strict: bool) -> str:
        """The grammar of a reply of calls (``choice``: "any" or a tool name)."""
        return grammarlib.tool_call_grammar(tools, choice=choice, parallel=parallel, strict=strict, syntax=self.syntax)

    def prose_grammar(self) -> str:
        return grammarlib.prose_grammar(self.prose)


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
}


def detect(tokenizer: Any) -> str:
    """The format the chat template renders tools in: "hermes", "llama3", "mistral" or "documented"."""
    template = template_text(tokenizer)
    if not supports_native_tools(tokenizer):
        return "documented"
    if MISTRAL_TAG in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if '"parameters"' in template or "ipython" in template:
        return "llama3"
    return "documented"


def resolve(tokenizer: Any, setting: str = "auto") -> ToolFormat:
    """The format of a call: ``setting``, or with "auto" the template's (:func:`detect`).

    A native format needs a template that renders ``tools`` (ValueError otherwise). A tag that
    is a single special token of the tokenizer is asked for as that token.
    """
    if setting not in TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {list(TOOL_FORMATS)}, got {setting!r}")
    name = detect(tokenizer) if setting == "auto" else setting
    found = FORMATS[name]
    if found.native and not supports_native_tools(tokenizer):
        raise ValueError(
            f"tool_format={name!r} needs a chat template that renders tools (apply_chat_template(..., tools=...)); "
            "this model's template does not: use tool_format='auto' or 'documented'"
        )
    if found.syntax.tag:
        token = special_token_id(tokenizer, found.syntax.tag)
        if token is not None:
            found = replace(found, syntax=replace(found.syntax, tag_token=token))
    return found


def special_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` when the tokenizer has it as one special token, else None."""
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    return int(ids[0]) if len(ids) == 1 and ids[0] in special else None


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
    return text
