"""What a chat template does with tools, read from the template itself once per tokenizer.

Templates differ in where they read tool definitions and in what they keep of a tool-calling history:
Qwen and Llama read ``apply_chat_template(..., tools=...)``; Phi-4-mini reads the system message's
``tools`` field (a JSON string); DeepSeek-R1-Distill reads no definitions at all but renders calls and
results in its own format; SmolLM3 reads ``tools`` but renders a previous call as an empty assistant turn
and a tool result as a bare user turn. :func:`template_tools` finds this out for a tokenizer's template:

* **definitions**: the template's own variables say where it may read them (``tools`` among its
  undeclared variables; a ``tools`` field read off a message, ``message['tools']``), and a probe
  conversation whose tool carries a unique marker says whether it does: the marker is in the output;
* **calls**: a probe assistant message with a ``tool_calls`` entry named with a marker; the template
  renders calls when the marker is in the output (and the template raised nothing);
* **results**: a probe tool message with a marker, rendered once as a tool message and once as a user
  message of the same text; the template renders results when it names the ``"tool"`` role, the marker is
  in the output and the two renderings differ (a template that writes a tool result as a plain user turn
  does not mark it as one; one that writes every role by its name, as SmolLM2's, has no tool role of its own).

A template that renders any of these "knows tools": its text then says the call format
(:func:`langchain_aisp.chat._tool_formats.detect`).

What the template drops is rendered as text by :mod:`langchain_aisp.chat._render`: a call in the
reply's own call format inside the assistant content, a result as a user turn inside
``<tool_response></tool_response>``.

Module-level cache (documented, guarded by ``_LOCK``): ``_FOUND`` holds the result per tokenizer (held
weakly) and template text, so a tokenizer's template is read and probed once.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import jinja2
import jinja2.meta

from langchain_aisp.chat._reasoning import template_text

Placement = Literal["tools", "system"]
"""Where a template reads tool definitions: ``apply_chat_template(tools=...)`` or the system message's
``tools`` field."""

MARKER = "zq7aisp"
"""The unique marker of the probe conversations (no template writes it on its own)."""
PROBE_ID = "a1b2c3d4e"
"""The probe call's id: 9 alphanumeric characters, which every template accepts (Mistral's demand them)."""

_LOCK = threading.Lock()
_FOUND: weakref.WeakKeyDictionary[Any, dict[str, TemplateTools]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class TemplateTools:
    """What a chat template renders of tools (:func:`template_tools`); the default renders nothing."""

    definitions: Placement | None = None
    """Where the template reads tool definitions ("tools", "system"); None: it reads none."""
    calls: bool = False
    """The template renders an assistant message's ``tool_calls``."""
    results: bool = False
    """The template renders a tool message as a tool result (not as a plain user turn)."""

    @property
    def knows_tools(self) -> bool:
        """Whether the template renders tool definitions, calls or results at all."""
        return self.definitions is not None or self.calls or self.results


NOTHING = TemplateTools()
"""A template (or a format) that renders no tools, calls or results: all of them go into the prompt as text."""


def system_tools(tools: Any) -> str:
    """The system message's ``tools`` field: the definitions as one JSON string (Phi-4-mini's templates
    concatenate it into the prompt)."""
    return json.dumps(list(tools), ensure_ascii=False)


def _variables(template: str) -> tuple[set[str], bool, bool] | None:
    """(the template's undeclared variables, whether it reads a ``tools`` field off an object, whether it names
    the ``"tool"`` role); None when the template cannot be parsed here (every placement is then probed)."""
    try:  # the environment transformers renders with (it knows the {% generation %} tag)
        from transformers.utils.chat_template_utils import _compile_jinja_template

        ast = _compile_jinja_template(template).environment.parse(template)
    except Exception:  # a private helper of transformers: any failure only costs two more probes
        return None
    fields = {node.attr for node in ast.find_all(jinja2.nodes.Getattr)}
    fields |= {
        node.arg.value
        for node in ast.find_all(jinja2.nodes.Getitem)
        if isinstance(node.arg, jinja2.nodes.Const) and isinstance(node.arg.value, str)
    }
    constants = {node.value for node in ast.find_all(jinja2.nodes.Const) if isinstance(node.value, str)}
    return set(jinja2.meta.find_undeclared_variables(ast)), "tools" in fields, "tool" in constants


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str | None:
    """The probe conversation rendered (None when the template refuses it)."""
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    except Exception:  # any template error: this way of passing tools does not work with this template
        return None
    return str(text)


_TOOL = {
    "name": f"{MARKER}_fn",
    "description": f"{MARKER}_definition",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
_USER = {"role": "user", "content": "Hello."}


def _definitions(tokenizer: Any, variables: tuple[set[str], bool, bool] | None) -> Placement | None:
    marker = str(_TOOL["description"])
    if variables is None or "tools" in variables[0]:
        text = _render(tokenizer, [_USER], [{"type": "function", "function": _TOOL}])
        if text is not None and marker in text:
            return "tools"
    if variables is None or variables[1]:
        system = {"role": "system", "content": "", "tools": system_tools([_TOOL])}
        text = _render(tokenizer, [system, _USER], None)
        if text is not None and marker in text:
            return "system"
    return None


def _probe_call(calls: bool) -> dict[str, Any]:
    """The probe assistant turn: a call as ``tool_calls`` (or, for a template that drops them, as text)."""
    if not calls:
        return {"role": "assistant", "content": f"{MARKER}_call"}
    call = {"type": "function", "id": PROBE_ID, "function": {"name": f"{MARKER}_call", "arguments": {"q": "x"}}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _probe_result(text: str) -> dict[str, Any]:
    return {"role": "tool", "content": text, "tool_call_id": PROBE_ID, "name": f"{MARKER}_call"}


def _probe(tokenizer: Any) -> TemplateTools:
    variables = _variables(template_text(tokenizer))
    definitions = _definitions(tokenizer, variables)
    tools = [{"type": "function", "function": _TOOL}] if definitions == "tools" else None
    calls = False
    for after in (_probe_result("Done."), {"role": "user", "content": "Thanks."}):  # templates want either
        called = _render(tokenizer, [_USER, _probe_call(True), after], tools)
        calls = calls or (called is not None and f"{MARKER}_call" in called)
    result = f"{MARKER}_result"
    turns = [_USER, _probe_call(calls)]
    as_tool = _render(tokenizer, [*turns, _probe_result(result)], tools)
    as_user = _render(tokenizer, [*turns, {"role": "user", "content": result}], tools)
    # a tool role of its own: the template names it (not one it writes as any role's name), and writes a result
    # otherwise than a user turn
    named = variables is None or variables[2]
    results = named and as_tool is not None and result in as_tool and as_tool != as_user
    return TemplateTools(definitions, calls, results)


def template_tools(tokenizer: Any) -> TemplateTools:
    """What the tokenizer's chat template renders of tools (read and probed once per tokenizer and template;
    :data:`NOTHING` without a template)."""
    template = template_text(tokenizer)
    if not template:
        return NOTHING
    with _LOCK:
        found = _FOUND.get(tokenizer, {}).get(template)
    if found is not None:
        return found
    found = _probe(tokenizer)
    with _LOCK:
        _FOUND.setdefault(tokenizer, {})[template] = found
    return found
