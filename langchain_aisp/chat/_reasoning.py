"""Thinking models: the think tags, whether a call thinks, the reply split into reasoning and answer, the budget.

Models such as Qwen3, SmolLM3 and the DeepSeek-R1 distills write ``<think> ... </think>`` before
their answer. For such a model (its chat template mentions both tags, or ``reasoning_tags`` names
them) every reply of a thinking call starts inside the think section: the template's generation
prompt already ends in the opening tag (DeepSeek-R1 distills), or the opening tag is prefilled
(``"<think>\\n"``, what Qwen3 writes first). ``reasoning=False`` passes ``enable_thinking=False`` to
templates that take it (Qwen3, SmolLM3: they close an empty think section themselves); other
templates get the empty section prefilled (``"<think>\\n\\n</think>\\n\\n"``), or closed when the template
opened it (``"\\n</think>\\n\\n"``).

:func:`split_reply` cuts a reply at the closing tag: the reasoning (stripped) and the answer (leading
whitespace stripped); a reply cut inside its think section has an empty answer. The reward scores the
answer (``score_reasoning=True``: the whole reply), tool calls and JSON are parsed from the answer, and
:func:`thinking_constraint` builds the engine's :class:`~langchain_aisp.engine.constraints.ThinkingBudget`
(the closing tag forced after ``thinking_budget`` tokens, a grammar applied to the answer only).

The tags are matched as text in the decoded reply, and as token ids while decoding: they must be
text the tokenizer's ``decode(..., skip_special_tokens=True)`` keeps (true of Qwen3's and DeepSeek's
added ``<think>`` tokens, which are not special). While thinking, EOS is not allowed (every reply
reaches its answer), nor a token that would write the start of the closing tag other than as the
tag's own first token; once that token is written, the rest of the tag is forced.

Module-level cache (documented, guarded by ``_LOCK``): ``_MASKS`` holds the thinking-phase token
mask per tokenizer (held weakly) and (vocabulary size, EOS ids, closing-tag ids): one pass over
the vocabulary, once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from langchain_aisp.engine.constraints import Constraint, ThinkingBudget, thinking_mask

KNOWN_TAGS = (("<think>", "</think>"),)
"""Think tags looked for in a chat template, in order."""

_LOCK = threading.Lock()
_MASKS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], torch.Tensor]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ReasoningTags:
    """The tags around a thinking model's reasoning."""

    open: str = "<think>"
    """The opening tag."""
    close: str = "</think>"
    """The closing tag."""

    def __post_init__(self) -> None:
        for name in ("open", "close"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"reasoning_tags: the {name} tag must be a non-empty string, got {value!r}")
        if self.open == self.close:
            raise ValueError(f"reasoning_tags: the open and close tags must differ, got {self.open!r} twice")

    @classmethod
    def of(cls, value: Any) -> ReasoningTags | None:
        """``None``, a ``ReasoningTags`` or an ``(open, close)`` pair -> tags (ValueError naming the value)."""
        if value is None or isinstance(value, ReasoningTags):
            return value
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(value[0], value[1])
        raise ValueError(f"reasoning_tags must be None or an (open, close) pair of strings, got {value!r}")


def template_text(tokenizer: Any) -> str:
    """The tokenizer's chat template(s) as one string ("" without a template)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    return template if isinstance(template, str) else ""


def detect_tags(tokenizer: Any) -> ReasoningTags | None:
    """The think tags the chat template writes (both of a known pair must appear), else None."""
    template = template_text(tokenizer)
    for open_tag, close_tag in KNOWN_TAGS:
        if open_tag in template and close_tag in template:
            return ReasoningTags(open_tag, close_tag)
    return None


def supports_enable_thinking(tokenizer: Any) -> bool:
    """Whether the chat template reads an ``enable_thinking`` variable (Qwen3, SmolLM3)."""
    return "enable_thinking" in template_text(tokenizer)


@dataclass(frozen=True)
class ReasoningMode:
    """How one call treats thinking (resolved from the model's fields, the call and the tokenizer)."""

    tags: ReasoningTags | None
    """The think tags, None for a model that does not think."""
    reasoning: bool | None
    """The ``reasoning`` setting: None (the template's default), True or False."""
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``apply_chat_template`` arguments (``enable_thinking``)."""

    def prefill(self, prompt_text: str) -> tuple[str, bool]:
        """(text to prefill after the rendered prompt, whether the reply starts inside a think section)."""
        if self.tags is None:
            return "", False
        tail = prompt_text.rstrip()
        if tail.endswith(self.tags.open):  # the template opened it (DeepSeek-R1 distills)
            return (f"\n{self.tags.close}\n\n", False) if self.reasoning is False else ("", True)
        if tail.endswith(self.tags.close):
            return "", False  # the template closed an empty one (enable_thinking=False)
        if self.reasoning is False:
            return f"{self.tags.open}\n\n{self.tags.close}\n\n", False
        return f"{self.tags.open}\n", True


def resolve_mode(tokenizer: Any, reasoning: bool | None, tags: Any = None) -> ReasoningMode:
    """The reasoning mode of a call: ``tags`` (an ``(open, close)`` pair) or those the template writes."""
    if reasoning is not None and not isinstance(reasoning, bool):
        raise ValueError(f"reasoning must be True, False or None, got {reasoning!r}")
    found = ReasoningTags.of(tags) or detect_tags(tokenizer)
    if found is None:
        if reasoning:
            raise ValueError(
                "reasoning=True, but the model's chat template writes no think section (no <think> ... </think>); "
                "pass reasoning_tags=(open, close) for a model that uses other tags"
            )
        return ReasoningMode(None, reasoning)
    kwargs = {"enable_thinking": reasoning} if reasoning is not None and supports_enable_thinking(tokenizer) else {}
    return ReasoningMode(found, reasoning, kwargs)


@dataclass(frozen=True)
class SplitReply:
    """A reply cut at the closing tag."""

    reasoning: str | None
    """The text inside the think section (stripped); None when the reply has no think section."""
    answer: str
    """The text after the closing tag (leading whitespace stripped); "" when the reply ends while thinking."""
    closed: bool
    """Whether the think section was closed (False: the reply was cut inside it, or had none)."""


def split_reply(text: str, tags: ReasoningTags | None, inside: bool) -> SplitReply:
    """Split ``text`` (the reply, prefill included) into reasoning and answer.

    ``inside``: the reply starts inside a think section (its opening tag is in the prompt). A reply
    that starts with the opening tag (after whitespace) is inside from there.
    """
    if tags is None:
        return SplitReply(None, text, False)
    body = text
    stripped = body.lstrip()
    if stripped.startswith(tags.open):
        body, inside = stripped[len(tags.open) :], True
    if not inside:
        if stripped.startswith(tags.close):  # an opened section closed by the prefill (reasoning=False)
            return SplitReply("", stripped[len(tags.close) :].lstrip(), True)
        return SplitReply(None, text, False)
    end = body.find(tags.close)
    if end < 0:
        return SplitReply(body.strip(), "", False)
    return SplitReply(body[:end].strip(), body[end + len(tags.close) :].lstrip(), True)


def scored_text(text: str, tags: ReasoningTags | None, inside: bool, score_reasoning: bool) -> str:
    """What the reward scores: the answer, or with ``score_reasoning`` the whole reply."""
    return text if score_reasoning else split_reply(text, tags, inside).answer


# --- the thinking budget ---------------------------------------------------------------------------


def close_token_ids(tokenizer: Any, tags: ReasoningTags) -> list[int]:
    """Token ids of the closing tag; ValueError if decoding would drop it (a special token)."""
    ids = list(tokenizer(tags.close, add_special_tokens=False).input_ids)
    if not ids or tags.close not in tokenizer.decode(ids, skip_special_tokens=True):
        raise ValueError(
            f"the closing think tag {tags.close!r} is a special token that decoding drops (token ids {ids}); "
            "reasoning cannot be split from the answer for this tokenizer"
        )
    return ids


def _thinking_tokens_mask(tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int], close_ids: list[int]) -> Any:
    """Bitmask of the tokens allowed while thinking: all but EOS and the tokens that contain the closing
    tag's first token's text without being that token (cached per tokenizer)."""
    key = (vocab_size, tuple(eos_token_ids), tuple(close_ids))
    with _LOCK:
        found = _MASKS.setdefault(tokenizer, {}).get(key)
    if found is not None:
        return found
    first = close_ids[0]
    start = tokenizer.convert_ids_to_tokens(first)
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    forbidden = {t for t in eos_token_ids if 0 <= t < vocab_size}
    forbidden |= {i for i, piece in enumerate(pieces) if piece is not None and start in piece and i != first}
    mask = thinking_mask(vocab_size, sorted(forbidden))  # (W,)
    with _LOCK:
        _MASKS[tokenizer][key] = mask
    return mask


def thinking_constraint(
    tokenizer: Any,
    vocab_size: int,
    eos_token_ids: Sequence[int],
    tags: ReasoningTags,
    budget: int | None,
    answer: Constraint | None = None,
    gap: Sequence[int] = (),
) -> ThinkingBudget:
    """The engine constraint of a thinking reply: at most ``budget`` thinking tokens, then ``answer``, which may
    be preceded by a few ``gap`` tokens (the whitespace tokens: what the template and the model write after the
    closing tag, e.g. Qwen3's ``"\n\n"``)."""
    close_ids = close_token_ids(tokenizer, tags)
    mask = _thinking_tokens_mask(tokenizer, vocab_size, eos_token_ids, close_ids)
    return ThinkingBudget(close_ids, budget, mask, answer, gap)


def engine_max_tokens(max_tokens: int, budget: int | None, close_tokens: int) -> int:
    """Tokens a thinking reply may decode: ``max_tokens`` alone without a budget (thinking and answer share
    it), else ``budget + close_tokens + max_tokens`` (the answer always keeps ``max_tokens`` of room)."""
    return max_tokens if budget is None else budget + close_tokens + max_tokens
