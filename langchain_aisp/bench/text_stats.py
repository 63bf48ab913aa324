"""Pure metric functions of the benchmark (no model, no torch): easy to test on hand-made inputs.

Definitions (also in docs/benchmarks.md):

* **diversity** of a set of responses: split each response into lower-cased word and
  punctuation tokens (:func:`words`); for n = 2, 3, 4 pool the n-grams of all responses
  and take ``rep_n = 1 - distinct / total`` (the fraction of n-gram occurrences that
  repeat an earlier one); diversity = ``prod_n (1 - rep_n) = prod_n distinct_n / total_n``.
  An n with no n-gram at all contributes a factor 1. 1.0 means no repeated n-gram.
* **win rate** of A over B: over paired items, the fraction where A > B, ties counting 1/2.
* **best so far**: per iteration j, the best reward among the samples of iterations 1..j.
* **clustered standard error** of a mean over prompt-seeds: the seeds of one prompt share the prompt's
  difficulty and are not independent, so the statistical unit is the prompt (:func:`clustered_mean_se`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\w+|[^\w\s]")
TIE_TOLERANCE = 1e-9
"""Rewards closer than this count as a tie in :func:`win_rate`."""


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: ``"Hi, you!" -> ["hi", ",", "you", "!"]``."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``tokens`` (empty when there are fewer than n tokens)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(texts: Iterable[str], n: int) -> float:
    """``1 - distinct / total`` over the n-grams of all ``texts`` pooled; 0.0 when there are none."""
    pooled: list[tuple[str, ...]] = []
    for text in texts:
        pooled.extend(ngrams(words(text), n))
    if not pooled:
        return 0.0
    return 1.0 - len(set(pooled)) / len(pooled)


def diversity(texts: Sequence[str], orders: Sequence[int] = (2, 3, 4)) -> float:
    """``prod over n in orders of (1 - repetition_rate(texts, n))``: 1.0 = no repeated n-gram."""
    value = 1.0
    for n in orders:
        value *= 1.0 - repetition_rate(texts, n)
    return value


def win_rate(a: Sequence[float], b: Sequence[float], tolerance: float = TIE_TOLERANCE) -> float:
    """Fraction of pairs where ``a[i] > b[i]``, ties (within ``tolerance``) counting half."""
    if len(a) != len(b):
        raise ValueError(f"win_rate needs paired sequences, got lengths {len(a)} and {len(b)}")
    if not a:
        return math.nan
    score = 0.0
    for x, y in zip(a, b, strict=True):
        if abs(x - y) <= tolerance:
            score += 0.5
        elif x > y:
            score += 1.0
    return score / len(a)


def best_so_far(rewards_per_iteration: Sequence[Sequence[float]]) -> list[float]:
    """Running maximum over iterations: ``[[1, 3], [2, 2], [5, 0]] -> [3, 3, 5]``."""
    curve: list[float] = []
    best = -math.inf
    for rewards in rewards_per_iteration:
        if rewards:
            best = max(best, max(rewards))
        curve.append(best)
    return curve


def iteration_means(rewards_per_iteration: Sequence[Sequence[float]]) -> list[float]:
    """Mean reward within each iteration (the steered policy's average quality)."""
    return [sum(r) / len(r) if r else math.nan for r in rewards_per_iteration]


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty sequence."""
    return sum(values) / len(values) if values else math.nan


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); NaN with fewer than two values."""
    if len(values) < 2:
        return math.nan
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def seed_mean_std(per_seed: Sequence[Sequence[float]]) -> tuple[float, float]:
    """Mean and std over seeds of the per-seed means across prompts.

    ``per_seed[s]`` holds one value per prompt for seed s; the mean is that of the
    per-seed means, the std their sample std (NaN with one seed).
    """
    seed_means = [mean(values) for values in per_seed if values]
    return mean(seed_means), std(seed_means)


def mean_curves(curves: Sequence[Sequence[float]]) -> list[float]:
    """Pointwise mean of equally long curves (one per prompt-seed)."""
    if not curves:
        return []
    length = len(curves[0])
    if any(len(c) != length for c in curves):
        raise ValueError(f"curves must have equal lengths, got {sorted({len(c) for c in curves})}")
    return [mean([c[i] for c in curves]) for i in range(length)]


def clustered_mean_se(values: Sequence[float], clusters: Sequence[object]) -> tuple[float, float]:
    """Mean of ``values`` and its standard error clustered by ``clusters`` (e.g. the prompt of each prompt-seed).

    The cluster-robust (CR1) variance of a mean: ``G / (G - 1) * sum_g (sum_{i in g} (v_i - mean))^2 / N^2``
    over G clusters and N values. With equal cluster sizes it equals the standard error of the cluster means
    (``std(cluster means) / sqrt(G)``); with one value per cluster, the ordinary standard error. NaN with fewer
    than two clusters.
    """
    if len(values) != len(clusters):
        raise ValueError(f"values and clusters must be equally long, got {len(values)} and {len(clusters)}")
    m = mean(values)
    sums: dict[object, float] = {}
    for value, cluster in zip(values, clusters, strict=True):
        sums[cluster] = sums.get(cluster, 0.0) + (value - m)
    groups = len(sums)
    if groups < 2:
        return m, math.nan
    variance = groups / (groups - 1) * sum(s * s for s in sums.values()) / len(values) ** 2
    return m, math.sqrt(variance)
