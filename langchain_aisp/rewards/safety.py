"""Failure semantics for rewards: :class:`RewardFailure`, :class:`SafeReward` and timeouts.

A reward that raises, hangs or returns unusable values must fail loudly and say
which reward and which sample, or, where the caller asked for it, degrade a bad
sample to the worst score of its batch with a warning. See ``docs/rewards.md``.
"""

from __future__ import annotations

import contextvars
import math
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, TypeVar

from langchain_core.messages import BaseMessage

from langchain_aisp.rewards.base import Conversation, FunctionReward, Reward, _to_reward, prompt_text
from langchain_aisp.rewards.errors import (
    RewardFailure,
    RewardWarning,
    as_float,
    check_lengths,
    check_timeout,
    excerpt,
    fmt_indices,
    sample_failure,
)

__all__ = [
    "OnInvalid",
    "RewardFailure",
    "RewardWarning",
    "SafeReward",
    "as_reward",
    "call_with_timeout",
    "check_lengths",
    "check_timeout",
    "conversation_key",
    "unique_items",
]

T = TypeVar("T")

OnInvalid = Literal["raise", "worst"]


def call_with_timeout(fn: Callable[..., T], timeout: float | None, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, raising :class:`TimeoutError` if it has not returned after ``timeout`` seconds.

    The call runs in a daemon worker thread (with the caller's context variables, so
    LangChain callbacks still see their run). Python cannot stop a thread: after a
    timeout the call keeps running in the background until it returns on its own,
    and its result is discarded. ``timeout=None`` calls ``fn`` directly.
    """
    if timeout is None:
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}
    done = threading.Event()
    context = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name=f"aisp-reward-{getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    if not done.wait(timeout):
        raise TimeoutError(f"did not return within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def conversation_key(conversation: Conversation) -> Hashable:
    """A hashable key equal for conversations with the same messages (type, content, tool calls, ids)."""
    return tuple(_message_key(m) for m in conversation)


def _message_key(message: BaseMessage) -> Hashable:
    return (
        message.type,
        repr(message.content),
        repr(getattr(message, "tool_calls", None) or None),
        getattr(message, "tool_call_id", None),
        message.name,
    )


def unique_items(conversations: Sequence[Conversation], responses: Sequence[str]) -> tuple[list[int], list[int]]:
    """Deduplicate (conversation, response) pairs.

    Returns ``(first, slot)``: ``first`` lists the index of the first occurrence of
    each distinct pair, ``slot[i]`` says which entry of ``first`` sample ``i`` maps to.
    """
    conv_keys: dict[int, Hashable] = {}  # per conversation object: its content key
    seen: dict[Hashable, int] = {}
    first: list[int] = []
    slot: list[int] = []
    for i, (conversation, response) in enumerate(zip(conversations, responses, strict=True)):
        ckey = conv_keys.get(id(conversation))
        if ckey is None:
            ckey = conv_keys[id(conversation)] = conversation_key(conversation)
        key = (ckey, response)
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        slot.append(seen[key])
    return first, slot


class SafeReward(Reward):
    """Wraps a reward with deduplication, a timeout and checks of what it returns.

    * Identical (conversation, response) pairs are scored once per ``score`` call.
    * An exception from the wrapped reward becomes :class:`RewardFailure` naming the
      reward and the failing sample's index. A plain ``fn(prompt, response)``
      reward is called one sample at a time, so the sample is always known; a
      batched reward that raises is reported with the whole batch's indices.
    * ``timeout`` (seconds) bounds each call into the wrapped reward: one sample for a
      plain function, the whole deduplicated batch otherwise. Past it:
      :class:`RewardFailure` (the call is left running in a daemon thread).
    * A wrong number of scores, or a return value that is not a sequence, always
      raises :class:`RewardFailure`: no score could be matched to its sample.
    * A score that is NaN, +-inf, None, a string, a bool or anything else that is not
      a real number is *invalid*. ``on_invalid="raise"`` (default) raises
      :class:`RewardFailure` naming the first such sample. ``on_invalid="worst"``
      gives each invalid sample ``floor`` when set, else the lowest valid score of the
      batch, and emits a :class:`RewardWarning`; if no sample is valid and no
      ``floor`` is set it raises.
    """

    def __init__(
        self,
        reward: Reward | Callable[..., Any],
        *,
        on_invalid: OnInvalid = "raise",
        timeout: float | None = None,
        floor: float | None = None,
        name: str | None = None,
    ) -> None:
        if on_invalid not in ("raise", "worst"):
            raise ValueError(f"on_invalid must be 'raise' or 'worst', got {on_invalid!r}")
        if floor is not None and (as_float(floor) is None or not math.isfinite(float(floor))):
            raise ValueError(f"floor must be None or a finite number, got {floor!r}")
        self.reward = _to_reward(reward)
        self.on_invalid: OnInvalid = on_invalid
        self.timeout = check_timeout(timeout)
        self.floor = None if floor is None else float(floor)
        self.name = name or self.reward.name

    def __repr__(self) -> str:
        return f"SafeReward({self.reward!r}, on_invalid={self.on_invalid!r}, timeout={self.timeout!r})"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        if not responses:
            return []
        first, slot = unique_items(conversations, responses)
        convs = [conversations[i] for i in first]
        texts = [responses[i] for i in first]
        raw = self._call(convs, texts, first)
        values = self._validate(raw, texts, first)
        return [values[s] for s in slot]

    def _call(self, convs: list[Conversation], texts: list[str], first: list[int]) -> Sequence[Any]:
        inner = self.reward
        if isinstance(inner, FunctionReward) and not inner.batched:
            return [self._call_one(inner, c, t, i) for c, t, i in zip(convs, texts, first, strict=True)]
        try:
            raw = call_with_timeout(inner.score, self.timeout, convs, texts)
        except RewardFailure:
            raise  # already names the reward and sample (a nested SafeReward, a judge...)
        except TimeoutError as exc:
            raise RewardFailure(
                f"reward {self.name} timed out after {self.timeout:g} s scoring a batch of {len(texts)} responses "
                f"(indices {fmt_indices(first)})",
                reward=self.name,
                indices=first,
                reason=f"timed out after {self.timeout:g} s",
            ) from exc
        except Exception as exc:
            raise RewardFailure(
                f"reward {self.name} raised {type(exc).__name__}: {exc} while scoring a batch of {len(texts)} "
                f"responses (indices {fmt_indices(first)})",
                reward=self.name,
                indices=first,
                reason=f"raised {type(exc).__name__}: {exc}",
            ) from exc
        if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__iter__"):
            raise RewardFailure(
                f"reward {self.name} returned {type(raw).__name__} {raw!r:.80}; expected a list of {len(texts)} floats",
                reward=self.name,
                indices=first,
            )
        raw = list(raw)
        if len(raw) != len(texts):
            raise RewardFailure(
                f"reward {self.name} returned {len(raw)} scores for {len(texts)} responses "
                f"(indices {fmt_indices(first)}); expected one float per response",
                reward=self.name,
                indices=first,
            )
        return raw

    def _call_one(self, inner: FunctionReward, conversation: Conversation, text: str, index: int) -> Any:
        try:
            return call_with_timeout(inner.fn, self.timeout, prompt_text(conversation), text)
        except TimeoutError as exc:
            raise sample_failure(self.name, f"timed out after {self.timeout:g} s", index, text) from exc
        except Exception as exc:
            raise sample_failure(self.name, f"raised {type(exc).__name__}: {exc}", index, text) from exc

    def _validate(self, raw: Sequence[Any], texts: list[str], first: list[int]) -> list[float]:
        values: list[float | None] = []
        for value in raw:
            number = as_float(value)
            values.append(number if number is not None and math.isfinite(number) else None)
        bad = [k for k, v in enumerate(values) if v is None]
        if not bad:
            return [v for v in values if v is not None]
        k = bad[0]
        detail = f"{raw[k]!r} ({type(raw[k]).__name__}) for sample {first[k]} (response {excerpt(texts[k])})"
        if self.on_invalid == "raise":
            more = f" and {len(bad) - 1} other samples" if len(bad) > 1 else ""
            raise RewardFailure(
                f"reward {self.name} returned an invalid score {detail}{more}; scores must be finite numbers "
                "(use on_invalid='worst' to give such samples the worst score of the batch)",
                reward=self.name,
                index=first[k],
                indices=[first[b] for b in bad],
                reason=f"returned an invalid score {raw[k]!r} ({type(raw[k]).__name__})",
            )
        valid = [v for v in values if v is not None]
        if self.floor is not None:
            fallback, source = self.floor, "the configured floor"
        elif valid:
            fallback, source = min(valid), "the worst valid score of the batch"
        else:
            raise RewardFailure(
                f"reward {self.name} returned no valid score in a batch of {len(texts)} (first: {detail}) and "
                "no floor is set to fall back to",
                reward=self.name,
                index=first[k],
                indices=[first[b] for b in bad],
            )
        warnings.warn(
            f"reward {self.name} returned an invalid score {detail}"
            + (f" and {len(bad) - 1} other samples" if len(bad) > 1 else "")
            + f"; using {source} ({fallback:g}) instead",
            RewardWarning,
            stacklevel=3,
        )
        return [fallback if v is None else v for v in values]


def as_reward(
    reward: Reward | Callable[..., Any],
    *,
    on_invalid: str | None = None,
    timeout: float | None = None,
) -> Reward:
    """Accept a :class:`Reward`, a ``fn(prompt, response)`` or a :func:`~langchain_aisp.rewards.batched` function.

    With ``on_invalid`` ("raise" or "worst") or ``timeout`` (seconds) the result is
    wrapped in :class:`SafeReward`; without them the reward is returned as is (a
    function becomes a :class:`~langchain_aisp.rewards.FunctionReward`).
    """
    if on_invalid is not None or timeout is not None:
        return SafeReward(_to_reward(reward), on_invalid=on_invalid or "raise", timeout=timeout)  # type: ignore[arg-type]
    return _to_reward(reward)
