"""Failure types and argument checks shared by every reward module (imports no other reward module).

The layering of ``langchain_aisp.rewards``, bottom up, with no cycle:
``errors`` -> ``base`` (the protocol, function rewards, ``WeightedSum``) -> ``safety``,
``composition``, ``rules``, ``hf``, ``embedding``, ``judge`` -> the package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from langchain_aisp.errors import RewardFailure, as_float, excerpt

__all__ = [
    "RewardFailure",
    "RewardWarning",
    "as_float",
    "check_lengths",
    "check_timeout",
    "excerpt",
    "fmt_indices",
    "sample_failure",
]


class RewardWarning(UserWarning):
    """A sample got a fallback score because its reward value was unusable (``on_invalid="worst"``)."""


def check_timeout(timeout: float | None, field: str = "timeout") -> float | None:
    """Validate a timeout in seconds: None (no limit) or a finite number > 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < float(timeout) < math.inf:
        raise ValueError(f"{field} must be None or a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def check_lengths(conversations: Sequence[object], responses: Sequence[str], name: str) -> None:
    """Raise a ValueError when the caller passed different numbers of conversations and responses."""
    if len(conversations) != len(responses):
        raise ValueError(
            f"reward {name}: got {len(conversations)} conversations for {len(responses)} responses; "
            "pass one conversation per response"
        )


def fmt_indices(indices: Sequence[int], limit: int = 10) -> str:
    """``[0, 1, 2, ...]``: at most ``limit`` indices."""
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


def sample_failure(reward: str, reason: str, index: int, response: str) -> RewardFailure:
    """The :class:`RewardFailure` of one known sample: "reward NAME REASON on sample I (response '...')"."""
    return RewardFailure(
        f"reward {reward} {reason} on sample {index} (response {excerpt(response)})",
        reward=reward,
        index=index,
        reason=reason,
    )
