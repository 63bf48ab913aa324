"""Combining rewards: :class:`WeightedSum` (also ``reward_a * 0.5 + reward_b``) and :class:`Normalized`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Literal

from langchain_aisp.rewards.base import Conversation, Reward, as_reward
from langchain_aisp.rewards.safety import RewardFailure, _fmt_indices, as_float, check_lengths


def _check_scores(reward: Reward, values: Any, count: int, owner: str) -> list[float]:
    """A term's scores as floats; RewardFailure naming the term when they are not usable."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise RewardFailure(
            f"reward {reward.name} (in {owner}) returned {type(values).__name__}; expected {count} floats",
            reward=reward.name,
        )
    values = list(values)
    if len(values) != count:
        raise RewardFailure(
            f"reward {reward.name} (in {owner}) returned {len(values)} scores for {count} responses",
            reward=reward.name,
        )
    out = []
    for i, value in enumerate(values):
        number = as_float(value)
        if number is None or not math.isfinite(number):
            raise RewardFailure(
                f"reward {reward.name} (in {owner}) returned an invalid score {value!r} for sample {i}; "
                "scores must be finite numbers (wrap the term in SafeReward(..., on_invalid='worst') to tolerate it)",
                reward=reward.name,
                index=i,
            )
        out.append(number)
    return out


def _score_term(reward: Reward, conversations: Sequence[Conversation], responses: Sequence[str], owner: str) -> list:
    try:
        values = reward.score(conversations, responses)
    except RewardFailure:
        raise
    except Exception as exc:
        indices = list(range(len(responses)))
        raise RewardFailure(
            f"reward {reward.name} (in {owner}) raised {type(exc).__name__}: {exc} while scoring a batch of "
            f"{len(responses)} responses (indices {_fmt_indices(indices)})",
            reward=reward.name,
            indices=indices,
        ) from exc
    return _check_scores(reward, values, len(responses), owner)


class WeightedSum(Reward):
    """``sum(weight * reward.score(...))`` over ``terms``; each term scores the whole batch once.

    ``reward_a * 0.5 + reward_b`` builds ``WeightedSum([(reward_a, 0.5), (reward_b, 1.0)])``.
    A term that raises or returns unusable scores gives :class:`RewardFailure` naming
    the term (wrap a term in :class:`SafeReward` for per-term ``on_invalid``/``timeout``).
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
            checked.append((as_reward(reward), number))
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
            values = _score_term(reward, conversations, responses, self.name)
            total = [t + weight * v for t, v in zip(total, values, strict=True)]
        return total


class Normalized(Reward):
    """Rescale another reward's scores.

    * ``mode="standardize"``: per-``score``-call z-score, ``(x - mean) / std`` over the
      batch (population std); a batch whose std is below ``eps`` (e.g. one sample)
      scores 0 everywhere. Scores then depend on what else is in the batch: fine for
      combining rewards of different scales within a batch, but not comparable across
      calls. The AISP engine keeps the best response across iterations by comparing
      raw scores from different calls (and scores only the responses it has not seen),
      so prefer ``"clip"`` or fixed weights when the best-of-all-iterations matters.
    * ``mode="clip"``: clamp to ``[lo, hi]`` (either may be None for no bound).
    """

    def __init__(
        self,
        reward: Reward | Callable[..., Any],
        mode: Literal["standardize", "clip"] = "standardize",
        *,
        lo: float | None = None,
        hi: float | None = None,
        eps: float = 1e-8,
        name: str | None = None,
    ) -> None:
        if mode not in ("standardize", "clip"):
            raise ValueError(f"mode must be 'standardize' or 'clip', got {mode!r}")
        for field, bound in (("lo", lo), ("hi", hi)):
            if bound is not None and (as_float(bound) is None or not math.isfinite(float(bound))):
                raise ValueError(f"{field} must be None or a finite number, got {bound!r}")
        if mode == "clip":
            if lo is None and hi is None:
                raise ValueError("mode='clip' needs lo and/or hi, got neither")
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"clip bounds must satisfy lo < hi, got lo={lo!r}, hi={hi!r}")
        elif lo is not None or hi is not None:
            raise ValueError(f"lo/hi only apply to mode='clip', got lo={lo!r}, hi={hi!r} with mode='standardize'")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.reward = as_reward(reward)
        self.mode = mode
        self.lo = lo
        self.hi = hi
        self.eps = eps
        self.name = name or f"{mode}({self.reward.name})"

    def __repr__(self) -> str:
        return f"Normalized({self.reward!r}, mode={self.mode!r}, lo={self.lo!r}, hi={self.hi!r})"

    def score(self, conversations: Sequence[Conversation], responses: Sequence[str]) -> list[float]:
        check_lengths(conversations, responses, self.name)
        if not responses:
            return []
        values = _score_term(self.reward, conversations, responses, self.name)
        if self.mode == "clip":
            lo = -math.inf if self.lo is None else self.lo
            hi = math.inf if self.hi is None else self.hi
            return [min(max(v, lo), hi) for v in values]
        mean = statistics.fmean(values)
        std = statistics.pstdev(values, mu=mean)
        if std < self.eps:
            return [0.0] * len(values)
        return [(v - mean) / std for v in values]
