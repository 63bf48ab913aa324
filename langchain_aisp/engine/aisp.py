"""The AISP loop (adaptive importance sampling on pre-logits), Best-of-N and plain sampling.

Plain torch, no LangChain. For each prompt a controller (:mod:`langchain_aisp.engine.controller`) holds a
mean control ``U`` (tau, d), starting at zero; each iteration it draws ``V_i = U + sigma * eps_i`` for n
samples, the prompts running together decode in one batch (Batched AISP), the samples are scored, and
each controller moves its ``U`` to the importance-weighted mean of its ``V_i``. Best-of-N is the same
loop with ``sigma = 0`` and no update, so both methods decode exactly the same shapes and draw the same
token-sampling random numbers for a given seed. :func:`run` below is that loop; the pieces live in
:mod:`~langchain_aisp.engine.loop` (requests, decode groups), shared with the continuous scheduler
(:mod:`langchain_aisp.engine.scheduler`).

Optional per-prompt grammar ``constraints`` (:mod:`langchain_aisp.engine.constraints`) make every
sample of a prompt follow its grammar, so the weights only ever compare valid samples. A
``deadline`` (one for the run, or one per prompt) makes the run anytime: a prompt out of time
stops with the best answer of its iterations completed so far; decoding stops mid-iteration
once every running prompt is out of time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from langchain_aisp.engine.config import DEFAULT_DECODING, DEFAULT_MAX_BATCH_SIZE, AISPParams, SamplingParams
from langchain_aisp.engine.constraints import Constraint
from langchain_aisp.engine.controller import IterationEvent, PromptResult
from langchain_aisp.engine.decode.select import DecodeFn, select_decode
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.logit_control import LOGIT_CONTROLS
from langchain_aisp.engine.loop import (
    ON_REWARD_ERROR,
    DecodeGroup,
    OnRewardError,
    check_max_batch_size,
    context_window_error,
    control_shape,
)
from langchain_aisp.engine.scoring import ScoreFn
from langchain_aisp.errors import RewardError, RunTimeoutError

__all__ = [
    "ON_REWARD_ERROR",
    "IterationEvent",
    "OnRewardError",
    "PromptResult",
    "RewardError",
    "RunTimeoutError",
    "ScoreFn",
    "context_window_error",
    "control_shape",
    "run",
]


def run(
    lm: CausalLM,
    prompts: Sequence[Sequence[int]],
    score: ScoreFn,
    params: AISPParams,
    sampling: SamplingParams,
    *,
    seed: int | Sequence[int | None] | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    on_iteration: Callable[[IterationEvent], None] | None = None,
    decoding: str = DEFAULT_DECODING,
    on_reward_error: OnRewardError = "raise",
    keep: Callable[[int], bool] | None = None,
    initial_U: torch.Tensor | None = None,
    constraints: Sequence[Constraint | None] | None = None,
    deadline: float | Sequence[float | None] | None = None,
    decode_fn: DecodeFn | None = None,
    row_shift: torch.Tensor | None = None,
    row_temperature: torch.Tensor | None = None,
) -> list[PromptResult]:
    """Align one response per prompt; returns one :class:`PromptResult` per prompt, in order.

    Prompts are token-id lists (already templated). Up to ``max_batch_size // n``
    prompts run together (Batched AISP); each keeps its own U, weights, best and
    random generator, so its result does not depend on which prompts share its batch.
    ``decoding`` picks the decode path once for the run: ``"static"`` (preallocated KV cache and,
    on CUDA, a captured CUDA graph per step: :mod:`langchain_aisp.engine.decode.static`), ``"compiled"``
    (the static path with a ``torch.compile``-d step), ``"eager"``
    (:func:`langchain_aisp.engine.decode.eager.decode`), or ``"auto"`` (static on CUDA, eager elsewhere).

    ``seed``: one seed for every prompt, or a sequence with one seed (or None) per prompt.

    ``on_reward_error``: ``"raise"`` stops the run with :class:`RewardError` when ``score``
    fails; ``"isolate"`` scores the prompts of the failed call one by one, stops only the
    prompts whose scoring still fails (their ``PromptResult.error``) and goes on with the
    others. ``keep(prompt_index)`` is asked before every iteration: a prompt for which it
    returns False stops there (``PromptResult.cancelled``), and its rows leave the batch.

    ``initial_U`` (AISP only) is the starting mean of U instead of zero: shape
    :func:`control_shape` (steps, d) for every prompt, or (len(prompts), steps, d) one per prompt.

    ``row_shift`` (any method) shifts each sample row's control by a fixed vector at every decoded
    position: shape (num_samples, width) for every prompt, or (len(prompts), num_samples, width); width is
    the hidden size for the pre-logit controls (Best-of-N included), the control's width for the logit
    controls. Row i of every iteration gets shift i; the importance weights and U's update do not see it.
    A learned proposal (:mod:`langchain_aisp.engine.memory`) puts it on some rows and leaves others at zero.
    ``row_temperature`` (pre-logit controls) gives each row a log-temperature offset on top of the sampling
    temperature: shape (num_samples,) or (len(prompts), num_samples); such a run decodes on the eager path.

    ``constraints`` (one per prompt, None = free text) constrain every sample of a prompt to
    its grammar.

    ``decode_fn`` (tests and custom paths) replaces the decode function ``decoding`` would pick; it has
    :func:`langchain_aisp.engine.decode.eager.decode`'s signature.

    Nothing scored is lost on a failure: a reward failure raises :class:`RewardError`, any other error
    (out of memory on a single row, a grammar matcher's :class:`~langchain_aisp.errors.ConstraintError`, an
    exception from ``on_iteration``) raises :class:`~langchain_aisp.errors.RunFailedError` ``from`` it, each
    with every prompt's best scored result in ``.partial``. An error raised before any iteration was scored
    propagates unchanged (there is nothing to keep); a :class:`~langchain_aisp.errors.RunError` raised by
    ``on_iteration`` (e.g. :class:`~langchain_aisp.errors.RunCancelledError`) keeps its type and gets ``.partial``.

    ``deadline``: a ``time.monotonic()`` value for every prompt, or a sequence with one (or None)
    per prompt. A prompt whose deadline has passed stops before its next iteration and keeps its
    best scored answer, with ``timed_out=True``. Decoding stops mid-iteration (after the current
    step) only once the deadline of every prompt still running has passed: that unfinished
    iteration is dropped and those prompts stop likewise. So with one deadline for all, the run
    stops after the decoding step during which it passed. A prompt that timed out before any of
    its samples was scored has nothing to return: with ``on_reward_error="raise"``,
    :class:`RunTimeoutError` is raised at the end of the run with every prompt's result in
    ``.partial`` (None for those); with ``"isolate"`` that prompt's result carries the
    ``RunTimeoutError`` in ``error`` and the others are unaffected.
    """
    check_max_batch_size(max_batch_size)
    if params.method == "aisp" and params.control in LOGIT_CONTROLS and decoding in ("static", "compiled"):
        raise ValueError(
            f"control={params.control!r} decodes on the eager path; use decoding='auto' or 'eager', "
            f"got decoding={decoding!r}"
        )
    if decode_fn is None:
        decode_fn = select_decode(lm, decoding)[0]  # every path takes the constraints and the deadline
    group = DecodeGroup(
        lm, params, sampling, max_batch_size=max_batch_size, decode_fn=decode_fn,
        row_temperature=row_temperature is not None,
    )  # fmt: skip
    request = group.request(
        prompts,
        score,
        seed=seed,
        on_iteration=on_iteration,
        on_reward_error=on_reward_error,
        keep=keep,
        initial_U=initial_U,
        constraints=constraints,
        deadline=deadline,
        row_shift=row_shift,
        row_temperature=row_temperature,
    )
    group.add(request)
    while not request.finished:
        group.admit()  # waiting prompts join at the iteration boundary (up to max_batch_size // n at once)
        group.iterate()  # sample, decode, score, update, report: one iteration of every live prompt
        group.collect()
    return request.outcome()  # the results in order, or the run's error with .partial
