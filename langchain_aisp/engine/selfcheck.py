"""A memory that checks itself: an online, paired estimate of whether its learned proposal wins (issue 27).

Every call of a :class:`~langchain_aisp.engine.memory.ControlMemory` draws its first ``m`` sample rows from the
model's own proposal and the other ``n - m`` from the learned one. Per prompt (and iteration) that gives one
paired comparison, :func:`paired_gain`:

    d = (E[best of m learned rows] - best of the m own rows) / spread of the call's rewards

The expected best of m learned rows is the unbiased order-statistics estimate from the ``n - m`` learned
rows (:func:`expected_best_of`, also Best-of-N's estimator in ``bench efficiency``), so both terms estimate
a best of ``m``: the halves' different sizes do not bias the difference. With no difference between the
proposals the rows are exchangeable, so conditional on the call's multiset of rewards E[d] = 0 exactly,
whatever the division by their spread does: the spread only makes calls with different reward scales
comparable.

:class:`SelfCheck` keeps an exponentially weighted mean and variance of d (``window`` calls) and turns it
into a **level** in [``floor``, 1], the share of the memory's full strength its learned rows use:

* up (x ``UP``) while the estimate is positive with t = mean / SE > ``T_UP``;
* down (/ ``DOWN``) as soon as the mean is negative (harm is not waited for);
* after a move the evidence is discounted (its weight halved), so the next move needs fresh calls.

A memory whose direction stops helping (the reward or the traffic changed) sees d turn negative and falls to
``floor`` by itself. Pure Python, no torch; not thread-safe on its own (the memory's lock guards it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

UP = 1.5
DOWN = 2.0
T_UP = 1.0
MIN_EVIDENCE = 3.0
"""Calls (effective, after discounting) before the level may move up."""
DEFAULT_WINDOW = 16
DEFAULT_FLOOR = 0.125
"""The probe level: the learned rows always steer a little, so the check keeps measuring."""


def expected_best_of(rewards: Sequence[float], n: int) -> float:
    """Unbiased estimate of E[max of n draws] from a pool of M i.i.d. rewards (n <= M).

    With the pool sorted ascending, r_(1) <= ... <= r_(M): E[max of n] = sum_j r_(j) C(j-1, n-1) / C(M, n),
    the chance that r_(j) is the largest of a random n-subset of the pool. n = M gives the pool's max,
    n = 1 its mean.
    """
    m = len(rewards)
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}] (the pool size), got {n}")
    ordered = sorted(rewards)
    total = math.comb(m, n)
    return sum(ordered[j - 1] * (math.comb(j - 1, n - 1) / total) for j in range(n, m + 1))


def paired_gain(own: Sequence[float], learned: Sequence[float]) -> float | None:
    """(expected best of ``len(own)`` learned rows - best own row) / std of all rows; None when the rows carry no
    comparison (no own row, fewer learned rows than own ones, or all rewards equal)."""
    m = len(own)
    if m == 0 or len(learned) < m:
        return None
    rows = [*own, *learned]
    mean = sum(rows) / len(rows)
    spread = math.sqrt(sum((r - mean) ** 2 for r in rows) / (len(rows) - 1))
    if not spread > 0:
        return None
    return (expected_best_of(learned, m) - max(own)) / spread


@dataclass
class SelfCheck:
    """The online estimate and the level it sets (see the module docstring)."""

    window: int = DEFAULT_WINDOW
    floor: float = DEFAULT_FLOOR
    level: float = DEFAULT_FLOOR
    weight: float = 0.0
    """Effective number of observations behind the estimate."""
    mean: float = 0.0
    square: float = 0.0
    """Exponentially weighted mean of d^2."""
    moves: list[float] = field(default_factory=list)
    """The level after each move (most recent last, at most 64 kept): what the check decided."""

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (calls), got {self.window!r}")
        if not (isinstance(self.floor, (int, float)) and 0.0 <= self.floor <= 1.0):
            raise ValueError(f"floor must be a number in [0, 1], got {self.floor!r}")
        self.level = min(1.0, max(self.floor, float(self.level)))

    @property
    def se(self) -> float:
        """Standard error of the mean (inf with fewer than two effective observations)."""
        if self.weight < 2.0:
            return math.inf
        variance = max(0.0, self.square - self.mean**2) * self.weight / (self.weight - 1.0)
        return math.sqrt(variance / self.weight)

    def observe(self, gains: Sequence[float]) -> float:
        """Fold one call's paired gains in (their mean counts as one observation) and move the level; returns it."""
        if not gains:
            return self.level
        d = sum(gains) / len(gains)
        keep = 1.0 - 1.0 / self.window
        total = self.weight * keep + 1.0
        self.mean = (self.mean * self.weight * keep + d) / total
        self.square = (self.square * self.weight * keep + d * d) / total
        self.weight = total
        self._move()
        return self.level

    def _move(self) -> None:
        if self.mean < 0.0 and self.level > self.floor:
            self._set(max(self.floor, self.level / DOWN))
        elif self.weight >= MIN_EVIDENCE and self.mean > T_UP * self.se and self.level < 1.0:
            self._set(min(1.0, self.level * UP))

    def _set(self, level: float) -> None:
        self.level = level
        self.weight *= 0.5  # the evidence was gathered at the old level: the next move needs new calls
        self.moves = [*self.moves[-63:], level]

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "floor": self.floor,
            "level": self.level,
            "weight": self.weight,
            "mean": self.mean,
            "square": self.square,
            "moves": list(self.moves),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SelfCheck:
        check = cls(window=int(data["window"]), floor=float(data["floor"]), level=float(data["level"]))
        check.weight, check.mean, check.square = float(data["weight"]), float(data["mean"]), float(data["square"])
        check.moves = [float(v) for v in data.get("moves", [])]
        return check
