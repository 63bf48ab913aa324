"""The rule of ``tool_choice="auto"``: is a reply's call what the conversation asks for, or is prose better?

Under ``tool_choice="auto"`` half of the samples are free (prose, or prose then calls) and half are
forced calls; :func:`auto_choice_score` is the documented rule that decides between a call and prose
(see ``docs/chat_model.md``); :func:`rank_tools` orders the tools of the forced-call rows. What the rule
reads of the conversation is read once per call (:class:`Turn`); whether a value comes from the
conversation is the grounding term's own measure (``_grounding.value_grounding``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, ToolCall

from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._grounding import PARTIAL_CREDIT, Conversation, value_grounding
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


def _is_user(message: BaseMessage) -> bool:
    return isinstance(message, HumanMessage) or (isinstance(message, ChatMessage) and message.role in ("user", "human"))


@dataclass(frozen=True)
class Turn:
    """What the ``"auto"`` rule reads of a conversation, read once per call: its values (the grounding
    term's :class:`~langchain_aisp.chat._grounding.Conversation`), the user's last message and the tools
    the assistant already called since then."""

    conversation: Conversation
    last_user: str
    """The text of the user's last message, lowercased ("" when there is none)."""
    called: frozenset[str]
    """Names of the tools called since the user's last message."""

    @classmethod
    def of(cls, messages: Sequence[BaseMessage], conversation: Conversation | None = None) -> Turn:
        """The turn of ``messages``; ``conversation``: its values, when the caller already read them."""
        last_user = ""
        for m in reversed(messages):
            if _is_user(m):
                try:
                    last_user = content_text(m).lower()
                except ValueError:  # a media block: no text to read (rendering refuses it)
                    continue
                break
        called: set[str] = set()
        for m in reversed(messages):
            if _is_user(m):
                break
            if isinstance(m, AIMessage):
                called.update(c["name"] for c in m.tool_calls)
        return cls(
            conversation if conversation is not None else Conversation.of(messages), last_user, frozenset(called)
        )


def _grounded(value: Any, conversation: Conversation) -> bool:
    """A string or number argument that comes from the conversation (not invented): an empty string, a
    span of the user or tool text, a string all of whose words are there, or a number written there."""
    if isinstance(value, str) and not value.strip():
        return True
    return value_grounding(value, conversation) >= PARTIAL_CREDIT


def arguments_grounded(call: ToolCall, turn: Turn) -> bool:
    """Every argument value (string or number) of ``call`` appears in the user or tool text of the
    conversation (a string may also match word by word): the model took it from there, not invented it."""
    return all(_grounded(v, turn.conversation) for v in _leaves(call["args"]))


def _relevance(tool: dict[str, Any], last_user: str) -> int:
    """Words of the tool's name and description (longer than 3 letters) found in the user's last message."""
    user_words = _words(last_user)
    tool_words = _words(" ".join([str(tool["name"]).replace("_", " "), str(tool.get("description") or "")]))
    return sum(any(_same_word(w, u) for u in user_words) for w in tool_words if len(w) > 3) + (
        5 if str(tool["name"]).lower() in last_user else 0
    )


def rank_tools(fmt: OutputFormat, turn: Turn) -> list[str]:
    """The bound tools, most related to the user's last message first (stable for ties): under
    ``tool_choice="auto"`` forced-call sample ``i`` calls tool ``i % len(tools)`` of this order."""
    order = sorted(range(len(fmt.tools)), key=lambda i: -_relevance(fmt.tools[i], turn.last_user))
    return [fmt.tools[i]["name"] for i in order]


def auto_rows(ranked: Sequence[str]) -> list[str]:
    """The tool of each forced-call row under ``"auto"`` (row ``i`` of the samples is entry ``i % len``): the
    most related tool every second row, the others in turn between (``[a, b, a, c, a, d]`` for 4 tools;
    ``[a]``, ``[a, b]`` for 1, 2), so every tool has a row once there are ``2 * (len - 1)`` samples."""
    if len(ranked) <= 2:
        return list(ranked)
    return [name for other in ranked[1:] for name in (ranked[0], other)]


def call_is_grounded(call: ToolCall, fmt: OutputFormat, turn: Turn) -> bool:
    """The rule for ``tool_choice="auto"``: is this call what the conversation asks for?

    Both must hold: :func:`arguments_grounded`, and the request is about the tool, i.e. the
    last user message names the tool or shares a word with its name or description, unless
    every argument is a number taken from the conversation ("what is 12 times 7?").
    """
    if not arguments_grounded(call, turn):
        return False
    tool = next((t for t in fmt.tools if t["name"] == call["name"]), {"name": call["name"]})
    relevant = _relevance(tool, turn.last_user) > 0
    leaves = _leaves(call["args"])
    numbers = bool(leaves) and all(not isinstance(v, str) for v in leaves)
    return relevant or numbers


def _repeats_a_value(call: ToolCall) -> bool:
    """Two arguments with the same value (``name="30", age=30``): a small model's usual slip."""
    leaves = [str(v).strip().lower() for v in _leaves(call["args"])]
    return len(leaves) != len(set(leaves))


def auto_choice_score(text: str, fmt: OutputFormat, turn: Turn) -> float:
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
    for call in parsed.tool_calls:
        if call["name"] in turn.called or not call_is_grounded(call, fmt, turn):
            return -1.0
    tools = {t["name"]: t for t in fmt.tools}
    related = min(
        max(_relevance(tools.get(c["name"], {"name": c["name"]}), turn.last_user), 1) for c in parsed.tool_calls
    )
    value = 0.75 if any(_repeats_a_value(c) for c in parsed.tool_calls) else 1.0
    return value * related / (related + 1)  # in (0, 1): the more related the tool, the higher
