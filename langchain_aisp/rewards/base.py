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

A function that raises is reported as :class:`RewardFailure` naming the function, and,
for a plain ``fn(prompt, response)``, the sample (index and excerpt); the function's own
exception is its ``__cause__``.

This module also holds :class:`WeightedSum`, what ``reward_a * 0.5 + reward_b`` builds, so
that the operators of :class:`Reward` need no other reward module (no import cycle).
"""

from __future__ import annotations

import inspect
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage

from langchain_aisp._imports import import_object
from langchain_aisp.rewards.errors import RewardFailure, as_float, check_lengths, excerpt, fmt_indices, sample_failure

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

    # Composition: ``reward_a * 0.5 + reward_b`` builds a WeightedSum (defined at the end of this module).
    def __mul__(self, weight: float) -> Reward:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            return NotImplemented
        if isinstance(self, WeightedSum) and not self.explicit_name:
            return WeightedSum([(r, w * weight) for r, w in self.terms])
        return WeightedSum([(self, weight)])

    __rmul__ = __mul__

    def __add__(self, other: Reward | Callable[..., Any]) -> Reward:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # sum([r1, r2]) starts from 0
        if not isinstance(other, Reward) and not callable(other):
            return NotImplemented
        return WeightedSum([*_terms(self), *_terms(_to_reward(other))])

    def __radd__(self, other: Reward | Callable[..., Any]) -> Reward:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self
        if not isinstance(other, Reward) and not callable(other):
            return NotImplemented
        return WeightedSum([*_terms(_to_reward(other)), *_terms(self)])

    def __sub__(self, other: Reward | Callable[..., Any]) -> Reward:
        if not isinstance(other, Reward) and not callable(other):
            return NotImplemented
        return self + _to_reward(other) * -1.0

    def __neg__(self) -> Reward:
        return self * -1.0


def _terms(reward: Reward) -> list[tuple[Reward, float]]:
    """A reward's weighted terms: its own when it is an unnamed WeightedSum, else ``[(reward, 1.0)]``."""
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

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[Any]:
        """The function's values (checked by the caller); its exceptions become :class:`RewardFailure`."""
        prompts = [prompt_text(c) for c in conversations]
        if self.batched:
            try:
                return list(self.fn(prompts, list(responses)))
            except Exception as exc:
                reason = f"raised {type(exc).__name__}: {exc}"
                indices = list(range(len(responses)))
                raise RewardFailure(
                    f"reward {self.name} {reason} while scoring a batch of {len(responses)} responses "
                    f"(indices {fmt_indices(indices)})",
                    reward=self.name,
                    index=0 if len(responses) == 1 else None,
                    indices=indices,
                    reason=reason,
                ) from exc
        values = []
        for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            try:
                values.append(self.fn(prompt, response))
            except Exception as exc:
                raise sample_failure(self.name, f"raised {type(exc).__name__}: {exc}", i, response) from exc
        return values


def import_reward(path: str, *, app_dir: str | os.PathLike[str] | None = None) -> Any:
    """The object at ``"module:qualname"`` (:func:`langchain_aisp._imports.import_object`); a :class:`Reward`
    subclass is instantiated without arguments. ``app_dir``: a folder searched first (uvicorn's ``--app-dir``).

    Raises ValueError (malformed path), ImportError (no such module; names the folder searched) or AttributeError.
    """
    obj = import_object(path, app_dir=app_dir)
    if isinstance(obj, type) and issubclass(obj, Reward):
        obj = obj()
    return obj


def _to_reward(reward: Reward | Callable[..., Any]) -> Reward:
    """A :class:`Reward` as is; a ``fn(prompt, response)`` or :func:`batched` function as a :class:`FunctionReward`.

    The public :func:`langchain_aisp.rewards.as_reward` adds the ``on_invalid`` / ``timeout`` wrapping.
    """
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
    """Adapt a reward to the engine's ``score(prompt_indices, responses)`` (``langchain_aisp.engine.aisp.run``).

    ``conversations[j]`` is the conversation behind ``prompts[j]`` given to ``run``.
    The returned function carries the reward's ``name`` (the engine uses it in errors).
    """
    rew = _to_reward(reward)
    convs = list(conversations)

    def score(prompt_indices: Sequence[int], responses: Sequence[str]) -> list[float]:
        return rew.score([convs[j] for j in prompt_indices], list(responses))

    score.name = rew.name  # type: ignore[attr-defined]
    return score


# --- WeightedSum: what the operators build ---------------------------------------------------------


def _check_term_scores(reward: Reward, values: Any, count: int, owner: str) -> list[float]:
    """A term's scores as floats; RewardFailure naming the term when they are not usable."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        reason = f"(in {owner}) returned {type(values).__name__}; expected {count} floats"
        raise RewardFailure(f"reward {reward.name} {reason}", reward=reward.name, reason=reason)
    values = list(values)
    if len(values) != count:
        reason = f"(in {owner}) returned {len(values)} scores for {count} responses"
        raise RewardFailure(f"reward {reward.name} {reason}", reward=reward.name, reason=reason)
    out = []
    for i, value in enumerate(values):
        number = as_float(value)
        if number is None or not math.isfinite(number):
            reason = f"(in {owner}) returned an invalid score {value!r}"
            raise RewardFailure(
                f"reward {reward.name} {reason} for sample {i}; scores must be finite numbers (wrap the term "
                "in SafeReward(..., on_invalid='worst') to tolerate it)",
                reward=reward.name,
                index=i,
                reason=reason,
            )
        out.append(number)
    return out


def score_term(reward: Reward, conversations: Sequence[Conversation], responses: Sequence[str], owner: str) -> list:
    """``reward.score`` as one term of the composite ``owner``: failures name the term (and the sample if known)."""
    try:
        values = reward.score(conversations, responses)
    except RewardFailure as exc:
        if exc.reward != reward.name or exc.reason is None:
            raise  # from deeper inside the term: already names its reward and sample
        reason = f"(in {owner}) {exc.reason}"
        where = f" on sample {exc.index} (response {excerpt(responses[exc.index])})" if exc.index is not None else ""
        raise RewardFailure(
            f"reward {reward.name} {reason}{where}",
            reward=reward.name,
            index=exc.index,
            indices=exc.indices,
            reason=reason,
        ) from (exc.__cause__ or exc)
    except Exception as exc:
        indices = list(range(len(responses)))
        reason = f"(in {owner}) raised {type(exc).__name__}: {exc}"
        raise RewardFailure(
            f"reward {reward.name} {reason} while scoring a batch of {len(responses)} responses "
            f"(indices {fmt_indices(indices)})",
            reward=reward.name,
            indices=indices,
            reason=reason,
        ) from exc
    return _check_term_scores(reward, values, len(responses), owner)


class WeightedSum(Reward):
    """``sum(weight * reward.score(...))`` over ``terms``; each term scores the whole batch once.

    ``reward_a * 0.5 + reward_b`` builds ``WeightedSum([(reward_a, 0.5), (reward_b, 1.0)])``.
    A term that raises or returns unusable scores gives :class:`RewardFailure` naming
    the term (wrap a term in ``SafeReward`` for per-term ``on_invalid``/``timeout``).
    """

    def __init__(self, terms: Sequence[tuple[Reward | Callable[..., Any], float]], *, name: str | None = None) -> None:
        if not terms:
            raise ValueError("WeightedSum needs at least one (reward, weight) term, got none")
        checked: list[tuple[Reward, float]] = []
        for term in terms:
            if not isinstance(term, tuple) or len(term) != 2:
                raise TypeError(f"WeightedSum terms must be (reward, weight) pairs, got {term!r}")
            reward, weight = term
            number = as_float(weight)
            if number is None or not math.isfinite(number):
                raise ValueError(
                    f"weight of {getattr(reward, 'name', reward)!r} must be a finite number, got {weight!r}"
                )
            checked.append((_to_reward(reward), number))
        self.terms: list[tuple[Reward, float]] = checked
        self.explicit_name = name is not None
        self.name = name or " + ".join(f"{w:g}*{r.name}" for r, w in checked)

    def __repr__(self) -> str:
        return f"WeightedSum({self.terms!r})"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        total = [0.0] * len(responses)
        if not responses:
            return total
        for reward, weight in self.terms:
            values = score_term(reward, conversations, responses, self.name)
            total = [t + weight * v for t, v in zip(total, values, strict=True)]
        return total
