"""Combining rewards: :class:`Normalized`, and :class:`WeightedSum` (also ``reward_a * 0.5 + reward_b``).

``WeightedSum`` is defined in :mod:`langchain_aisp.rewards.base` (the operators of ``Reward`` build it)
and re-exported here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Literal

from langchain_aisp.rewards.base import Conversation, Reward, WeightedSum, _to_reward, score_term
from langchain_aisp.rewards.errors import as_float, check_lengths

__all__ = ["Normalized", "WeightedSum"]


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
        self.reward = _to_reward(reward)
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
        values = score_term(self.reward, conversations, responses, self.name)
        if self.mode == "clip":
            lo = -math.inf if self.lo is None else self.lo
            hi = math.inf if self.hi is None else self.hi
            return [min(max(v, lo), hi) for v in values]
        mean = statistics.fmean(values)
        std = statistics.pstdev(values, mu=mean)
        if std < self.eps:
            return [0.0] * len(values)
        return [(v - mean) / std for v in values]
