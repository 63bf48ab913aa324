"""Every error the package raises on purpose, in one place (pure Python: no torch, no LangChain import).

A run failure is a :class:`RunError`: it carries ``.partial``, one entry per prompt of the run
holding the best result scored before the failure (None where nothing was scored), and is raised
``from`` its cause. Nothing already paid for is lost, whatever broke.

- :class:`RewardError`: the reward failed or returned unusable scores.
- :class:`RunTimeoutError`: the deadline passed before some prompt had a single scored sample.
- :class:`RunCancelledError`: the caller cancelled the call (or ``keep`` dropped it).
- :class:`RunFailedError`: anything else broke mid-run (out of memory, a grammar matcher, a progress callback).

Raised inside a ``score`` call: :class:`RewardFailure`. Raised at construction or load:
:class:`ModelLoadError`, :class:`DefaultModelError`, :class:`GrammarError`; mid-decode:
:class:`ConstraintError`; by the judge reward: :class:`JudgeParseError`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

PromptResult = Any
"""``langchain_aisp.engine.aisp.PromptResult``; named, not imported, so this module depends on nothing."""

__all__ = [
    "ConstraintError",
    "DefaultModelError",
    "GrammarError",
    "JudgeParseError",
    "ModelLoadError",
    "RewardError",
    "RewardFailure",
    "RunCancelledError",
    "RunError",
    "RunFailedError",
    "RunTimeoutError",
    "as_float",
    "excerpt",
]


class RunError(RuntimeError):
    """A run stopped before it finished. ``partial`` holds, per prompt, the best result scored before
    the failure (None where nothing was scored yet); ``__cause__`` is what broke."""

    def __init__(self, message: str, partial: Sequence[PromptResult | None] | None = None) -> None:
        super().__init__(message)
        self.partial: list[PromptResult | None] = list(partial) if partial is not None else [None]


class RunFailedError(RunError):
    """Something other than the reward, the deadline or the caller broke mid-run: an out-of-memory, a grammar
    matcher, a progress callback. The iterations scored before it are in ``partial``; ``__cause__`` is the error."""


class RewardFailure(RuntimeError):  # noqa: N818 (the name is part of the public API)
    """A reward raised, timed out or returned unusable scores; raised inside a ``score`` call.

    ``reward`` is the failing reward's name; ``index`` the index of the failing sample in the
    ``responses`` passed to ``score`` (None when only the batch is known); ``indices`` every index
    concerned (the whole batch for a batched reward that raised); ``reason`` (optional) what went
    wrong as a predicate without the location, e.g. ``"raised KeyError: 'x'"`` (the engine then
    writes ``"reward <name> <reason> (prompt, iteration, response)"``).
    The original exception, if any, is chained as ``__cause__``. Re-exported by
    ``langchain_aisp.rewards``; a custom ``score`` may raise it to name the failing response.
    """

    def __init__(
        self,
        message: str,
        *,
        reward: str = "reward",
        index: int | None = None,
        indices: Sequence[int] = (),
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reward = reward
        self.index = index
        self.indices = list(indices) if indices else ([] if index is None else [index])
        self.reason = reason


class RewardError(RunError):
    """The reward failed or returned unusable scores: the run stopped.

    ``partial`` holds, per prompt, the best result found before the failure (None
    where nothing had been scored yet): nothing already paid for is lost. Where the
    failing sample is known, ``prompt_index``, ``iteration``, ``response_index`` and
    ``response`` (its text) locate it (``response_index`` counts within the iteration,
    as in ``PromptResult.rewards[iteration]``). ``__cause__`` is the reward's own exception.
    """

    def __init__(
        self,
        message: str,
        partial: Sequence[PromptResult | None],
        *,
        reward: str | None = None,
        prompt_index: int | None = None,
        iteration: int | None = None,
        response_index: int | None = None,
        response: str | None = None,
    ) -> None:
        super().__init__(message, partial)
        self.reward = reward
        self.prompt_index = prompt_index
        self.iteration = iteration
        self.response_index = response_index
        self.response = response


class RunTimeoutError(RunError, TimeoutError):
    """The deadline passed before some prompt had a single scored sample.

    ``partial`` holds, per prompt, the best result of the iterations that did complete
    (``timed_out=True`` where the deadline cut them short), or None where nothing had been scored.
    """

    def __init__(self, message: str, partial: Sequence[PromptResult | None]) -> None:
        super().__init__(message, partial)


class RunCancelledError(RunError):
    """An async call was cancelled (or ``run_prepared``'s ``keep`` dropped it); its run stopped at the next
    iteration boundary. ``partial`` holds what was computed for the call before (None where unknown)."""


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded or does not fit AISP."""


class DefaultModelError(RuntimeError):
    """The embedded default model is missing or its cache is unusable."""


class ConstraintError(RuntimeError):
    """A matcher failed mid-decode (a grammar library error: never a user input error)."""


class GrammarError(ValueError):
    """A schema or tool definition the grammar library cannot enforce (raised when it is bound)."""


class JudgeParseError(ValueError):
    """The judge's reply held no usable score."""


# --- helpers for error messages and reward values ------------------------------------------


def as_float(value: object) -> float | None:
    """A score as a float, or None when it is not a real number (None, str, bool, list...).

    Accepts Python numbers, numpy scalars and 0-d tensors; the one coercion used by the
    engine and by ``langchain_aisp.rewards``.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy scalars, 0-d tensors
        item = value.item()
        if isinstance(item, numbers.Real) and not isinstance(item, bool):
            return float(item)
    return None


def excerpt(text: str, limit: int = 60) -> str:
    """``repr`` of ``text`` cut to about ``limit`` characters (for error messages)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
