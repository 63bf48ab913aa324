"""The rule of ``tool_choice="auto"``: is a reply's call what the conversation asks for, or is prose better?

Under ``tool_choice="auto"`` half of the samples are free (prose, or prose then calls) and half are
forced calls; :func:`auto_choice_score` is the documented rule that decides between a call and prose
(see ``docs/chat_model.md``); :func:`rank_tools` orders the tools of the forced-call rows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    ToolCall,
    ToolMessage,
)

from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._parse import parse_tool_reply
from langchain_aisp.chat._render import content_text

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
