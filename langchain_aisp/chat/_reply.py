"""The shape of one call's reply: think section, tool-call format, grammar and prefill, and how to read it.

:func:`reply_plan` resolves, once per call, whether the reply thinks (``_reasoning``) and which tool-call
format it uses (``_tool_formats``); :func:`render_variant` renders one engine prompt of the call (the
free prompt, or the forced-call prompt of ``tool_choice="auto"``) with its prefill and its engine
constraint. A thinking reply is prefilled with the opening tag, never with the grammar's forced
prefix: the grammar applies after the closing tag, through the engine's ``ThinkingBudget``.

:class:`ReplyPlan` reads the replies back: :meth:`ReplyPlan.answer` is the answer part rewritten in the
documented ``<tool_call>`` form (what the parser and the format terms read), :meth:`ReplyPlan.scored`
what the reward scores (the answer as the model wrote it, or with ``score_reasoning`` the whole reply).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage

from langchain_aisp.chat import _grammar as grammarlib
from langchain_aisp.chat import _reasoning as reasoninglib
from langchain_aisp.chat import _tool_formats as toolfmt
from langchain_aisp.chat._format import OutputFormat
from langchain_aisp.chat._render import RenderedPrompt, render


@dataclass(frozen=True)
class ReplyPlan:
    """How one call's reply is shaped and read."""

    mode: reasoninglib.ReasoningMode
    """Thinking: the tags (None: the model does not think) and the template arguments."""
    tool_format: toolfmt.ToolFormat
    """The tool-call format (``documented`` when no tools are bound)."""
    thinking_budget: int | None = None
    """Most thinking tokens before the closing tag is forced (None: no limit)."""
    score_reasoning: bool = False
    """The reward scores the whole reply (reasoning included) instead of the answer."""
    inside: bool = False
    """The reply starts inside a think section (set by :func:`render_variant`)."""
    forced: int = 0
    """Tokens of the grammar's forced start that a thinking reply writes itself after its closing tag, where a
    reply that does not think has it prefilled (set by :func:`render_variant`)."""

    def split(self, text: str) -> reasoninglib.SplitReply:
        return reasoninglib.split_reply(text, self.mode.tags, self.inside)

    def answer(self, text: str) -> str:
        """The answer part of a reply (prefill included), in the documented tool-call form."""
        return toolfmt.normalize(self.split(text).answer, self.tool_format)

    def scored(self, text: str) -> str:
        """What the reward scores of a reply (prefill included)."""
        return reasoninglib.scored_text(text, self.mode.tags, self.inside, self.score_reasoning)

    def thinks(self) -> bool:
        """Whether replies start inside a think section."""
        return self.mode.tags is not None and self.inside

    def engine_max_tokens(self, tokenizer: Any, max_tokens: Any) -> Any:
        """Tokens to decode for an answer of ``max_tokens``: with a thinking budget, the budget, the closing
        tag and the grammar's forced start on top (the answer keeps its ``max_tokens``, as a reply that does not
        think, whose forced start is prefilled). A bad ``max_tokens`` is returned as it is, for the sampling
        settings to refuse by its own value."""
        valid = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens >= 1
        if not self.thinks() or self.mode.tags is None or self.thinking_budget is None or not valid:
            return max_tokens
        close = reasoninglib.close_token_ids(tokenizer, self.mode.tags)
        return reasoninglib.engine_max_tokens(max_tokens, self.thinking_budget, len(close)) + self.forced


PLAIN = ReplyPlan(reasoninglib.ReasoningMode(None, None), toolfmt.FORMATS["documented"])
"""The reply of a model that does not think, without tools."""


def check_settings(reasoning_tags: Any, thinking_budget: Any, tool_format: Any) -> None:
    """Validate the model's reasoning and tool-format fields (ValueError naming the bad value)."""
    reasoninglib.ReasoningTags.of(reasoning_tags)
    _check_budget(thinking_budget)
    if tool_format not in toolfmt.TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {list(toolfmt.TOOL_FORMATS)}, got {tool_format!r}")


def _check_budget(thinking_budget: Any) -> None:
    if thinking_budget is not None and (
        isinstance(thinking_budget, bool) or not isinstance(thinking_budget, int) or thinking_budget < 0
    ):
        raise ValueError(f"thinking_budget must be an integer >= 0 or None, got {thinking_budget!r}")


def reasoning_kwargs(reasoning: str | None) -> dict[str, Any]:
    """``additional_kwargs`` of an answer: ``{"reasoning_content": ...}`` when the reply thought, else {}."""
    return {"reasoning_content": reasoning} if reasoning else {}


def reply_plan(
    tokenizer: Any,
    fmt: OutputFormat,
    *,
    reasoning: bool | None,
    reasoning_tags: Any,
    thinking_budget: int | None,
    score_reasoning: bool,
    tool_format: str,
) -> ReplyPlan:
    """Resolve a call's reasoning mode and tool-call format (ValueError naming a bad setting)."""
    _check_budget(thinking_budget)
    mode = reasoninglib.resolve_mode(tokenizer, reasoning, reasoning_tags)
    found = toolfmt.resolve(tokenizer, tool_format) if fmt.calls_tools else toolfmt.FORMATS["documented"]
    return ReplyPlan(mode, found, thinking_budget, bool(score_reasoning))


@dataclass(frozen=True)
class RenderedVariant:
    """One engine prompt: the rendered text (prefill included) and its constraint (None: free text)."""

    prompt: RenderedPrompt
    constraint: Any
    inside: bool
    forced: int = 0
    """Tokens of the forced start the reply writes itself (:attr:`ReplyPlan.forced`)."""


def render_variant(
    lm: Any,
    messages: Sequence[BaseMessage],
    fmt: OutputFormat,
    plan: ReplyPlan,
    grammar: str | Sequence[str] | None,
    *,
    prefix_grammar: str | None = None,
    close: bool = True,
) -> RenderedVariant:
    """Render one engine prompt of a call with its prefill and constraint.

    ``grammar``: the answer's grammar (or several, alternating over samples); ``prefix_grammar``: the
    grammar whose forced prefix is prefilled (None: none is); ``close``: steer answers to completion
    within the token budget. A thinking reply gets the opening tag as its prefill and the grammar after
    its closing tag (with the thinking budget), never a grammar prefill.
    """
    tokenizer, vocab, eos = lm.tokenizer, int(lm.head_weight.shape[0]), lm.eos_token_ids
    options = {"tools": plan.tool_format.rendering, "template_kwargs": plan.mode.template_kwargs}
    think, inside = "", False
    if plan.mode.tags is not None:
        base = render(tokenizer, messages, fmt, **options)  # type: ignore[arg-type]
        think, inside = plan.mode.prefill(base.text)
    grammar_prefill, forced = "", 0
    if prefix_grammar is not None:
        start = grammarlib.forced_prefix(tokenizer, vocab, eos, prefix_grammar)
        if inside:  # written after the closing tag: the reply's own tokens
            forced = len(tokenizer(start, add_special_tokens=False).input_ids)
        else:
            grammar_prefill = start
    answer = None
    if grammar is not None:
        answer = grammarlib.compile_constraint(tokenizer, vocab, eos, grammar, grammar_prefill, close=close)
    constraint: Any = answer
    if inside and plan.mode.tags is not None and (answer is not None or plan.thinking_budget is not None):
        gap = grammarlib.whitespace_tokens(tokenizer, vocab, eos) if answer is not None else ()
        constraint = reasoninglib.thinking_constraint(
            tokenizer, vocab, eos, plan.mode.tags, plan.thinking_budget, answer, gap
        )
    prompt = render(tokenizer, messages, fmt, think + grammar_prefill, **options)  # type: ignore[arg-type]
    return RenderedVariant(prompt, constraint, inside, forced)
