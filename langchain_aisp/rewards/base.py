"""The reward protocol: one interface for rules, reward models, embeddings and judges.

A :class:`Reward` scores a batch: for each candidate response it sees the whole
conversation that produced it (LangChain messages, so a reward can read the system
prompt, retrieved context or tool results) and returns one float per response.

Plain functions are accepted wherever a ``Reward`` is (see :func:`as_reward`):

* ``fn(prompt: str, response: str) -> float`` is called once per response;
* a function decorated with :func:`batched` takes ``(prompts: list[str], responses:
  list[str])`` and returns one float per response.

For both, ``prompt`` is :func:`prompt_text` of the conversation: the text of the
last human message (for a conversation that ends in a tool result, still the last
human message, i.e. the user's request). Rewards that need more context subclass
:class:`Reward` and read the messages.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

Conversation = Sequence[BaseMessage]


def message_text(message: BaseMessage) -> str:
    """The plain text of a message (text blocks joined; other blocks skipped)."""
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def prompt_text(conversation: Conversation) -> str:
    """What a function reward receives as ``prompt``: the last human message's text.

    A conversation without a human message gives the last message's text ("" when empty).
    """
    for message in reversed(conversation):
        if isinstance(message, HumanMessage):
            return message_text(message)
    return message_text(conversation[-1]) if conversation else ""


class Reward(ABC):
    """Scores candidate responses; higher is better."""

    name: str = "reward"

    @abstractmethod
    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        """One float per response; ``conversations[i]`` is the conversation ``responses[i]`` answers."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # Composition: ``reward_a * 0.5 + reward_b`` builds a WeightedSum (see rewards.composition).
    def __mul__(self, weight: float) -> Reward:
        from langchain_aisp.rewards.composition import WeightedSum

        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        if isinstance(self, WeightedSum) and not self.explicit_name:
            return WeightedSum([(r, w * weight) for r, w in self.terms])
        return WeightedSum([(self, weight)])

    __rmul__ = __mul__

    def __add__(self, other: Reward | Callable[..., Any]) -> Reward:
        from langchain_aisp.rewards.composition import WeightedSum

        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # sum([r1, r2]) starts from 0
        if not isinstance(other, Reward) and not callable(other):
            return NotImplemented
        return WeightedSum([*_terms(self), *_terms(as_reward(other))])

    def __radd__(self, other: Reward | Callable[..., Any]) -> Reward:
        from langchain_aisp.rewards.composition import WeightedSum

        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self
        if not isinstance(other, Reward) and not callable(other):
            return NotImplemented
        return WeightedSum([*_terms(as_reward(other)), *_terms(self)])

    def __sub__(self, other: Reward | Callable[..., Any]) -> Reward:
        if not isinstance(other, Reward) and not callable(other):
            return NotImplemented
        return self + as_reward(other) * -1.0

    def __neg__(self) -> Reward:
        return self * -1.0


def _terms(reward: Reward) -> list[tuple[Reward, float]]:
    """A reward's weighted terms: its own when it is an unnamed WeightedSum, else ``[(reward, 1.0)]``."""
    from langchain_aisp.rewards.composition import WeightedSum

    if isinstance(reward, WeightedSum) and not reward.explicit_name:
        return list(reward.terms)
    return [(reward, 1.0)]


def batched(fn: Callable[[list[str], list[str]], Sequence[float]]) -> Callable[[list[str], list[str]], Sequence[float]]:
    """Mark ``fn(prompts, responses) -> scores`` as a batched function reward."""
    fn._aisp_batched = True  # type: ignore[attr-defined]
    return fn


class FunctionReward(Reward):
    """Wraps ``fn(prompt, response) -> float``, or a :func:`batched` function."""

    def __init__(self, fn: Callable[..., Any], *, batched: bool | None = None, name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"reward must be callable or a Reward, got {type(fn).__name__}")
        self.fn = fn
        self.batched = bool(getattr(fn, "_aisp_batched", False)) if batched is None else batched
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        prompts = [prompt_text(c) for c in conversations]
        if self.batched:
            return list(self.fn(prompts, list(responses)))
        return [self.fn(p, r) for p, r in zip(prompts, responses, strict=True)]


def as_reward(
    reward: Reward | Callable[..., Any],
    *,
    on_invalid: str | None = None,
    timeout: float | None = None,
) -> Reward:
    """Accept a :class:`Reward`, a ``fn(prompt, response)`` or a :func:`batched` function.

    With ``on_invalid`` ("raise" or "worst") or ``timeout`` (seconds) the result is
    wrapped in :class:`~langchain_aisp.rewards.safety.SafeReward`; without them the
    reward is returned as is (a function becomes a :class:`FunctionReward`).
    """
    if on_invalid is not None or timeout is not None:
        from langchain_aisp.rewards.safety import SafeReward

        return SafeReward(as_reward(reward), on_invalid=on_invalid or "raise", timeout=timeout)  # type: ignore[arg-type]
    if isinstance(reward, Reward):
        return reward
    if isinstance(reward, type) or not callable(reward):
        raise TypeError(
            "reward must be a Reward instance, a function fn(prompt: str, response: str) -> float, "
            f"or a @batched function; got {reward!r} ({type(reward).__name__})"
        )
    if not getattr(reward, "_aisp_batched", False):
        try:
            inspect.signature(reward).bind("prompt", "response")
        except TypeError as exc:
            raise TypeError(
                f"reward function {getattr(reward, '__name__', reward)!r} must accept (prompt, response): {exc}"
            ) from exc
        except ValueError:
            pass  # builtins without a signature: trust the caller
    return FunctionReward(reward)


def score_fn(
    reward: Reward | Callable[..., Any], conversations: Sequence[Conversation]
) -> Callable[[Sequence[int], Sequence[str]], list[float]]:
    """Adapt a reward to the engine's ``score(prompt_indices, responses)`` (``langchain_aisp.aisp.run``).

    ``conversations[j]`` is the conversation behind ``prompts[j]`` given to ``run``.
    The returned function carries the reward's ``name`` (the engine uses it in errors).
    """
    rew = as_reward(reward)
    convs = list(conversations)

    def score(prompt_indices: Sequence[int], responses: Sequence[str]) -> list[float]:
        return rew.score([convs[j] for j in prompt_indices], list(responses))

    score.name = rew.name  # type: ignore[attr-defined]
    return score
