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
``floor`` by itself.

:class:`TemperatureCheck` learns the learned rows' temperature the same way: half of them sample a little hotter,
half a little cooler, and the offset moves towards the half that wins significantly (:func:`split_gain`).
Pure Python, no torch; not thread-safe on its own (the memory's lock guards it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

UP = 1.5
DOWN = 2.0
T_UP = 1.0
T_TEMPERATURE = 2.0
"""The temperature moves only on a clearer difference: both directions are exploration, neither is "safe"
(at 1 SE it random-walked to its limits with no difference at all, in simulation)."""
MIN_EVIDENCE = 3.0
"""Calls (effective, after discounting) before the level may move up."""
DEFAULT_WINDOW = 16
DEFAULT_FLOOR = 0.25
"""The probe level: the learned rows always steer a little, so the check keeps measuring."""
DEFAULT_PROBE = 0.3
"""Half-width (log-temperature) of the learned rows' temperature exploration: x1.35 and /1.35."""
DEFAULT_TEMPERATURE_LIMIT = 0.7
"""Largest log-temperature offset the learned rows may reach: the call's temperature x2 or /2."""


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


def _spread(rows: Sequence[float]) -> float:
    mean = sum(rows) / len(rows)
    return math.sqrt(sum((r - mean) ** 2 for r in rows) / (len(rows) - 1)) if len(rows) > 1 else 0.0


def paired_gain(own: Sequence[float], learned: Sequence[float]) -> float | None:
    """(expected best of ``len(own)`` learned rows - best own row) / std of all rows; None when the rows carry no
    comparison (no own row, fewer learned rows than own ones, or all rewards equal)."""
    m = len(own)
    if m == 0 or len(learned) < m:
        return None
    spread = _spread([*own, *learned])
    if not spread > 0:
        return None
    return (expected_best_of(learned, m) - max(own)) / spread


def split_gain(hot: Sequence[float], cool: Sequence[float], rows: Sequence[float]) -> float | None:
    """(expected best of m hot rows - expected best of m cool rows) / std of ``rows`` (the call's rewards), m the
    smaller half: positive when the learned rows' hotter half wins. None without a comparison."""
    m = min(len(hot), len(cool))
    spread = _spread(rows)
    if m == 0 or not spread > 0:
        return None
    return (expected_best_of(hot, m) - expected_best_of(cool, m)) / spread


@dataclass
class Estimate:
    """An exponentially weighted mean of per-call observations, its effective count and its standard error."""

    window: int = DEFAULT_WINDOW
    weight: float = 0.0
    """Effective number of observations behind the estimate."""
    mean: float = 0.0
    square: float = 0.0
    """Exponentially weighted mean of d^2."""

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2 (calls), got {self.window!r}")

    @property
    def se(self) -> float:
        """Standard error of the mean (inf with fewer than two effective observations)."""
        if self.weight < 2.0:
            return math.inf
        variance = max(0.0, self.square - self.mean**2) * self.weight / (self.weight - 1.0)
        return math.sqrt(variance / self.weight)

    def add(self, gains: Sequence[float]) -> bool:
        """Fold one call's gains in (their mean counts as one observation); False when there were none."""
        if not gains:
            return False
        d = sum(gains) / len(gains)
        keep = 1.0 - 1.0 / self.window
        total = self.weight * keep + 1.0
        self.mean = (self.mean * self.weight * keep + d) / total
        self.square = (self.square * self.weight * keep + d * d) / total
        self.weight = total
        return True

    def significant(self, threshold: float = T_UP) -> int:
        """+1 / -1 when the mean is more than ``threshold`` standard errors above / below 0 (with enough evidence)."""
        if self.weight < MIN_EVIDENCE:
            return 0
        if self.mean > threshold * self.se:
            return 1
        return -1 if self.mean < -threshold * self.se else 0

    def discount(self) -> None:
        self.weight *= 0.5  # the evidence was gathered before a move: the next move needs new calls

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "weight": self.weight, "mean": self.mean, "square": self.square}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Estimate:
        return cls(int(data["window"]), float(data["weight"]), float(data["mean"]), float(data["square"]))


@dataclass
class SelfCheck:
    """The learned-vs-own estimate and the level it sets (see the module docstring)."""

    window: int = DEFAULT_WINDOW
    floor: float = DEFAULT_FLOOR
    level: float = DEFAULT_FLOOR
    estimate: Estimate = field(default_factory=Estimate)
    moves: list[float] = field(default_factory=list)
    """The level after each move (most recent last, at most 64 kept): what the check decided."""

    def __post_init__(self) -> None:
        if not (isinstance(self.floor, (int, float)) and 0.0 <= self.floor <= 1.0):
            raise ValueError(f"floor must be a number in [0, 1], got {self.floor!r}")
        self.level = min(1.0, max(self.floor, float(self.level)))
        if self.estimate.weight == 0.0:
            self.estimate = Estimate(self.window)

    @property
    def se(self) -> float:
        return self.estimate.se

    def observe(self, gains: Sequence[float]) -> float:
        """Fold one call's paired gains in (their mean counts as one observation) and move the level; returns it."""
        if self.estimate.add(gains):
            if self.estimate.mean < 0.0 and self.level > self.floor:  # harm is not waited for
                self._set(max(self.floor, self.level / DOWN))
            elif self.estimate.significant() > 0 and self.level < 1.0:
                self._set(min(1.0, self.level * UP))
        return self.level

    def _set(self, level: float) -> None:
        self.level = level
        self.estimate.discount()
        self.moves = [*self.moves[-63:], level]

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "floor": self.floor,
            "level": self.level,
            "estimate": self.estimate.to_json(),
            "moves": list(self.moves),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SelfCheck:
        check = cls(window=int(data["window"]), floor=float(data["floor"]), level=float(data["level"]))
        check.estimate = Estimate.from_json(data["estimate"])
        check.moves = [float(v) for v in data.get("moves", [])]
        return check


@dataclass
class TemperatureCheck:
    """The learned rows' log-temperature offset, learned across calls.

    The learned rows alternate between ``offset + probe`` and ``offset - probe`` (a hotter and a cooler half,
    on top of the call's temperature); :func:`split_gain` compares the halves per prompt, and the offset moves
    by ``step`` towards the half that wins significantly, within ``[-limit, limit]``.
    """

    window: int = DEFAULT_WINDOW
    probe: float = DEFAULT_PROBE
    step: float = DEFAULT_PROBE / 2
    limit: float = DEFAULT_TEMPERATURE_LIMIT
    offset: float = 0.0
    estimate: Estimate = field(default_factory=Estimate)

    def __post_init__(self) -> None:
        for name in ("probe", "step", "limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 2.0:
                raise ValueError(f"temperature {name} must be a number in [0, 2] (log-temperature), got {value!r}")
        self.offset = min(self.limit, max(-self.limit, float(self.offset)))
        if self.estimate.weight == 0.0:
            self.estimate = Estimate(self.window)

    def rows(self, learned: int) -> list[float]:
        """The log-temperature offsets of ``learned`` learned rows: hot, cool, hot, cool, ... (one row: no probe)."""
        if learned < 2:
            return [self.offset] * learned
        return [self.offset + (self.probe if i % 2 == 0 else -self.probe) for i in range(learned)]

    def observe(self, gains: Sequence[float]) -> float:
        """Fold one call's hot-minus-cool gains in and move the offset; returns it."""
        if self.estimate.add(gains) and self.probe > 0:
            sign = self.estimate.significant(T_TEMPERATURE)
            moved = min(self.limit, max(-self.limit, self.offset + sign * self.step))
            if moved != self.offset:
                self.offset = moved
                self.estimate.discount()
        return self.offset

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "probe": self.probe,
            "step": self.step,
            "limit": self.limit,
            "offset": self.offset,
            "estimate": self.estimate.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TemperatureCheck:
        check = cls(int(data["window"]), float(data["probe"]), float(data["step"]), float(data["limit"]))
        check.offset = float(data["offset"])
        check.estimate = Estimate.from_json(data["estimate"])
        return check
