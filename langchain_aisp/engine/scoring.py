"""Scoring one iteration's responses: one ``score`` call per owner, identical responses scored once,
and the :class:`~langchain_aisp.errors.RewardError` that names the reward, prompt, iteration and response."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from langchain_aisp.engine.controller import Controller
from langchain_aisp.errors import RewardError, RewardFailure, as_float, excerpt

ScoreFn = Callable[[Sequence[int], Sequence[str]], Sequence[float]]
"""``score(prompt_indices, responses) -> rewards``: one float per response; the indices
point into the ``prompts`` passed to :func:`~langchain_aisp.engine.aisp.run`."""


def score_name(score: ScoreFn) -> str:
    return str(getattr(score, "name", None) or getattr(score, "__name__", None) or type(score).__name__)


def check_scores(scores: object, expected: int, name: str) -> list[float]:
    """The scores as floats; :class:`RewardFailure` (with the sample's index where one is at fault) otherwise."""
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().flatten().tolist()
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence):
        reason = f"must return a sequence of {expected} floats, got {type(scores).__name__}"
        raise RewardFailure(f"reward {name} {reason}", reward=name, reason=reason)
    if len(scores) != expected:
        reason = f"returned {len(scores)} scores for {expected} responses"
        raise RewardFailure(f"reward {name} {reason}", reward=name, reason=reason)
    values: list[float] = []
    for i, value in enumerate(scores):
        number = as_float(value)
        if number is None:
            reason = f"returned {value!r} ({type(value).__name__}); expected a float"
        elif not math.isfinite(number):
            reason = f"returned a non-finite score {number}"
        else:
            values.append(number)
            continue
        raise RewardFailure(f"reward {name} {reason} for response {i}", reward=name, index=i, reason=reason)
    return values


def score_rows(
    score: ScoreFn, name: str, members: list[Controller], texts: list[str], isolate: bool
) -> list[float | None]:
    """Score the rows of ``members`` (n consecutive rows each, in ``texts``) with one ``score`` call over
    the distinct (prompt, response) pairs not scored before; rows of a prompt whose reward failed get None.

    Without ``isolate`` a failure raises :class:`RewardError` (its ``partial`` is left for the caller to
    fill); with it, the prompts of the failed call are scored one by one and each that still fails gets its
    own ``RewardError`` in ``result.error`` (the others go on).
    """
    n = len(texts) // len(members)
    by_number = {c.number: c for c in members}
    keys = [(members[row // n].number, text) for row, text in enumerate(texts)]
    todo = list(dict.fromkeys(key for key in keys if key[1] not in by_number[key[0]].seen))
    if todo:
        try:
            values = check_scores(score([j for j, _ in todo], [t for _, t in todo]), len(todo), name)
        except Exception as exc:
            if not isolate:
                raise reward_error(exc, name, todo, keys, n, by_number, []) from own_cause(exc)
            _score_each_prompt(score, name, todo, keys, n, exc, by_number)
        else:
            for (j, text), value in zip(todo, values, strict=True):
                by_number[j].seen[text] = value
    return [by_number[j].seen.get(text) for j, text in keys]


def own_cause(exc: Exception) -> BaseException:
    """The reward's own exception, not the RewardFailure that wrapped it to name the sample."""
    return exc.__cause__ if isinstance(exc, RewardFailure) and exc.__cause__ is not None else exc


def _score_each_prompt(
    score: ScoreFn,
    name: str,
    todo: list[tuple[int, str]],
    keys: list[tuple[int, str]],
    n: int,
    first_error: Exception,
    by_number: dict[int, Controller],
) -> None:
    """After a failed joint call: score each prompt's responses alone; record a ``RewardError`` where it fails."""
    by_prompt: dict[int, list[tuple[int, str]]] = {}
    for key in todo:
        by_prompt.setdefault(key[0], []).append(key)
    for j, mine in by_prompt.items():
        exc: Exception = first_error
        if len(by_prompt) > 1:  # with one prompt in the call, the culprit is known: no second call
            try:
                values = check_scores(score([j] * len(mine), [t for _, t in mine]), len(mine), name)
            except Exception as retry_exc:
                exc = retry_exc
            else:
                for (_, text), value in zip(mine, values, strict=True):
                    by_number[j].seen[text] = value
                continue
        result = by_number[j].result
        error = reward_error(exc, name, mine, keys, n, by_number, [result if result.rewards else None])
        error.__cause__ = own_cause(exc)
        result.error = error


def reward_error(
    exc: Exception,
    name: str,
    todo: list[tuple[int, str]],
    keys: list[tuple[int, str]],
    n: int,
    by_number: dict[int, Controller],
    partial: list,
) -> RewardError:
    """The error for a failed ``score`` call over ``todo``: which reward, what, and which prompt and response."""
    failure = exc if isinstance(exc, RewardFailure) else None
    index = failure.index if failure is not None else None
    if index is None and len(todo) == 1:
        index = 0  # one response was being scored: it is the one
    if failure is None:
        what = f"reward {name} raised {type(exc).__name__}: {exc}"
    elif failure.reason is not None:
        what = f"reward {name} {failure.reason}"
    else:
        what = f"reward {name} failed: {failure}"
    tail = ". The best answers found so far are in .partial"
    if index is not None and 0 <= index < len(todo):
        prompt, text = todo[index]
        iteration = by_number[prompt].iteration
        response = keys.index(todo[index]) % n  # its first row; the rows of a prompt are consecutive
        return RewardError(
            f"{what} (prompt {prompt}, iteration {iteration}, response {response}: {excerpt(text)}){tail}",
            partial,
            reward=name,
            prompt_index=prompt,
            iteration=iteration,
            response_index=response,
            response=text,
        )
    prompts = sorted({j for j, _ in todo})
    iteration = max(by_number[j].iteration for j in prompts)
    which = f"prompt {prompts[0]}" if len(prompts) == 1 else f"prompts {prompts}"
    return RewardError(
        f"{what} ({which}, iteration {iteration}, scoring a batch of {len(todo)} responses: an error raised for "
        f"the whole batch names no single response){tail}",
        partial,
        reward=name,
        prompt_index=prompts[0] if len(prompts) == 1 else None,
        iteration=iteration,
    )
