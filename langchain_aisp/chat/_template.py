"""What a chat template does, read from the template itself once per tokenizer.

Templates differ in where they read tool definitions and in what they keep of a tool-calling history:
Qwen and Llama read ``apply_chat_template(..., tools=...)``; Phi-4-mini reads the system message's
``tools`` field (a JSON string); DeepSeek-R1-Distill reads no definitions at all but renders calls and
results in its own format; SmolLM3 reads ``tools`` but renders a previous call as an empty assistant turn
and a tool result as a bare user turn; Gemma's templates refuse a system turn; Hermes-3's ``tool_use``
template cannot render a conversation without tools. :func:`read_template` finds this out for a
tokenizer's template(s), by rendering probe conversations through ``apply_chat_template`` (so a tokenizer
with named templates is read as transformers uses it: its ``tool_use`` template where tools are given, its
``default`` one elsewhere):

* **definitions**: the template's own variables say where it may read them (``tools`` among its
  undeclared variables; a ``tools`` field read off a message, ``message['tools']``), and a probe
  conversation whose tool carries a unique marker says whether it does: the marker is in the output;
* **calls**: a probe assistant message with one ``tool_calls`` entry named with a marker; the template
  renders calls when the marker is in the output (and the template raised nothing). What that turn adds to
  the conversation is the call **as the template writes it** (:attr:`TemplateReading.call`): the tool-call
  format is read from it (:func:`langchain_aisp.chat._tool_formats.detect`), and so is the text the template
  writes after a format's opening tag (:func:`template_after`);
* **results**: a probe tool message with a marker, rendered once as a tool message and once as a user
  message of the same text; the template renders results when it names the ``"tool"`` role, the marker is
  in the output and the two renderings differ (a template that writes a tool result as a plain user turn
  does not mark it as one; one that writes every role by its name, as SmolLM2's, has no tool role of its own);
* **system turns**: a probe system message with a marker, before a user message; the template accepts a
  system turn when it renders the conversation and the marker is in the output (Gemma's raise; the rendering
  then folds the system text into the user turn, :func:`fold_system`);
* **needs tools**: a user message renders only when tools are given (a ``tool_use`` template that iterates
  ``tools`` without a check, where the tokenizer has no ``default`` one): a conversation without tools is then
  rendered the documented way, as for a tokenizer without a template (``_render.render``).

A template that renders tool definitions, calls or results "knows tools" (:attr:`TemplateTools.knows_tools`).
What the template drops is rendered as text by :mod:`langchain_aisp.chat._render`: a call in the
reply's own call format inside the assistant content, a result as a user turn inside
``<tool_response></tool_response>``.

Module-level cache (documented, guarded by ``_LOCK``): ``_FOUND`` holds the reading per tokenizer (held
weakly) and template text, so a tokenizer's template is read and probed once.
"""

from __future__ import annotations

import json
import re
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
PROBE_CALL = f"{MARKER}_call"
"""The probe call's name; its arguments are ``{"q": "x"}``."""

_LOCK = threading.Lock()
_FOUND: weakref.WeakKeyDictionary[Any, dict[str, TemplateReading]] = weakref.WeakKeyDictionary()


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


@dataclass(frozen=True)
class TemplateReading:
    """What a chat template does (:func:`read_template`); the default: a template that renders a plain
    conversation, system turn included, and nothing of tools."""

    tools: TemplateTools = NOTHING
    """What it renders of tools."""
    call: str | None = None
    """What an assistant turn with the probe call (:data:`PROBE_CALL`) adds to the conversation, as the template
    writes it (the tool turn that follows included); None where the template renders no calls."""
    guide: str = ""
    """The probe conversation with the tool definitions where the template reads them (what it tells the model
    about tools and calling); "" where it reads none."""
    refuses_system: bool = False
    """A conversation without tools renders, but not with a system turn (the template raises, or drops its text)."""
    refuses_system_with_tools: bool = False
    """The same with the tools given where the template reads them (a tokenizer's ``tool_use`` template)."""
    needs_tools: bool = False
    """A user message renders only when tools are given (``apply_chat_template(tools=...)``)."""


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


def _render(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, generation: bool = True
) -> str | None:
    """The probe conversation rendered (None when the template refuses it). ``tools`` is None or a non-empty
    list: transformers picks a tokenizer's ``tool_use`` template for any list, an empty one included."""
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)
    except Exception:  # any template error: this way of passing tools does not work with this template
        return None
    return str(text)


_TOOL = {
    "name": f"{MARKER}_fn",
    "description": f"{MARKER}_definition",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}
_TOOLS = [{"type": "function", "function": _TOOL}]
_USER = {"role": "user", "content": "Hello."}
_SYSTEM = {"role": "system", "content": f"{MARKER}_system"}


def _definitions(tokenizer: Any, variables: tuple[set[str], bool, bool] | None) -> tuple[Placement | None, str]:
    """Where the template reads tool definitions, and the probe conversation rendered with them there."""
    marker = str(_TOOL["description"])
    if variables is None or "tools" in variables[0]:
        text = _render(tokenizer, [_USER], _TOOLS)
        if text is not None and marker in text:
            return "tools", text
    if variables is None or variables[1]:
        system = {"role": "system", "content": "", "tools": system_tools([_TOOL])}
        text = _render(tokenizer, [system, _USER], None)
        if text is not None and marker in text:
            return "system", text
    return None, ""


def _probe_call(calls: bool) -> dict[str, Any]:
    """The probe assistant turn: a call as ``tool_calls`` (or, for a template that drops them, as text)."""
    if not calls:
        return {"role": "assistant", "content": PROBE_CALL}
    call = {"type": "function", "id": PROBE_ID, "function": {"name": PROBE_CALL, "arguments": {"q": "x"}}}
    return {"role": "assistant", "content": "", "tool_calls": [call]}


def _probe_result(text: str) -> dict[str, Any]:
    return {"role": "tool", "content": text, "tool_call_id": PROBE_ID, "name": PROBE_CALL}


def _added(before: str | None, after: str) -> str:
    """What ``after`` adds to ``before`` (the text after their common prefix)."""
    if before is None:
        return after
    same = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before))
    return after[same:]


def _call(tokenizer: Any, tools: list[dict[str, Any]] | None) -> str | None:
    """The probe call as the template writes it (what the call turn adds to the conversation), None when the
    template does not render calls."""
    before = _render(tokenizer, [_USER], tools, generation=False)  # ends where the call turn starts
    for after in (_probe_result("Done."), {"role": "user", "content": "Thanks."}):  # templates want either
        called = _render(tokenizer, [_USER, _probe_call(True), after], tools)
        if called is not None and PROBE_CALL in called:
            return _added(before, called)
    return None


def _refuses_system(tokenizer: Any, tools: list[dict[str, Any]] | None) -> bool:
    """A user message renders (with ``tools``), but not after a system turn, or without its text."""
    if _render(tokenizer, [_USER], tools) is None:
        return False  # nothing renders this way: nothing is known of system turns
    text = _render(tokenizer, [_SYSTEM, _USER], tools)
    return text is None or str(_SYSTEM["content"]) not in text


def _probe(tokenizer: Any) -> TemplateReading:
    variables = _variables(template_text(tokenizer))
    definitions, guide = _definitions(tokenizer, variables)
    tools = _TOOLS if definitions == "tools" else None
    call = _call(tokenizer, tools)
    result = f"{MARKER}_result"
    turns = [_USER, _probe_call(call is not None)]
    as_tool = _render(tokenizer, [*turns, _probe_result(result)], tools)
    as_user = _render(tokenizer, [*turns, {"role": "user", "content": result}], tools)
    # a tool role of its own: the template names it (not one it writes as any role's name), and writes a result
    # otherwise than a user turn
    named = variables is None or variables[2]
    results = named and as_tool is not None and result in as_tool and as_tool != as_user
    refuses_system = _refuses_system(tokenizer, None)
    return TemplateReading(
        tools=TemplateTools(definitions, call is not None, results),
        call=call,
        guide=guide,
        refuses_system=refuses_system,
        refuses_system_with_tools=_refuses_system(tokenizer, tools) if tools else refuses_system,
        needs_tools=_render(tokenizer, [_USER], None) is None and _render(tokenizer, [_USER], _TOOLS) is not None,
    )


def read_template(tokenizer: Any) -> TemplateReading:
    """What the tokenizer's chat template does (read and probed once per tokenizer and template; the default
    :class:`TemplateReading` without a template)."""
    template = template_text(tokenizer)
    if not template:
        return TemplateReading()
    with _LOCK:
        found = _FOUND.get(tokenizer, {}).get(template)
    if found is not None:
        return found
    found = _probe(tokenizer)
    with _LOCK:
        _FOUND.setdefault(tokenizer, {})[template] = found
    return found


def template_tools(tokenizer: Any) -> TemplateTools:
    """What the tokenizer's chat template renders of tools (:func:`read_template`; :data:`NOTHING` without a
    template)."""
    return read_template(tokenizer).tools


def template_after(tokenizer: Any, tag: str) -> str | None:
    """What the chat template writes between ``tag`` and the JSON object of a call, read from its own rendering of
    the probe call (:attr:`TemplateReading.call`): ``"\\n"`` after Qwen's ``<tool_call>``, ``" ["`` after Mistral
    v0.3's ``[TOOL_CALLS]``. None when the template does not write the call with that tag, or writes other text
    than whitespace and ``[`` there."""
    call = read_template(tokenizer).call
    if call is None or tag not in call:
        return None
    at = call.index(tag) + len(tag)
    start = call.find("{", at)
    return call[at:start] if start >= 0 and re.fullmatch(r"[\s\[]*", call[at:start]) else None
