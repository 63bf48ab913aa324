"""Execution: jobs -> one engine run (retries, control memory, deadlines) -> one outcome per job.

A reward failing on one job's responses fails that job only (a ``RewardError`` with its partial
result); a job dropped by its caller gets ``RunCancelledError``; a job whose deadline passed with
nothing scored gets ``TimeoutError``; the others get their merged ``PromptResult``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage
from tenacity import Retrying, stop_after_attempt, stop_before_delay, wait_exponential

from langchain_aisp.chat import _grounding as groundlib
from langchain_aisp.chat._plan import BATCH_PLAN, BatchPlan, Job, Variant, build_job, format_term, merge_variants
from langchain_aisp.chat._progress import ProgressFn
from langchain_aisp.engine.aisp import IterationEvent, PromptResult, RewardError, RunTimeoutError
from langchain_aisp.engine.memory import run_with_memory
from langchain_aisp.errors import RunCancelledError
from langchain_aisp.rewards import Reward

if TYPE_CHECKING:
    from langchain_aisp.chat_models import AISPChatModel

RETRY_WAIT_MAX = 8.0
"""Longest wait (seconds) between two attempts of a failing reward call (exponential backoff from 0.5 s)."""

EventFn = Callable[[int, dict[str, Any]], None]
"""Receives (job index, progress event data)."""


def _retrying(max_retries: int, deadlines: Sequence[float | None]) -> Retrying:
    """Reward retries: ``max_retries`` more attempts with backoff, never outlasting every call's deadline."""
    stop: Any = stop_after_attempt(max_retries + 1)
    if all(d is not None for d in deadlines):
        stop = stop | stop_before_delay(max(0.0, max(d for d in deadlines if d is not None) - time.monotonic()))
    return Retrying(stop=stop, wait=wait_exponential(multiplier=0.5, max=RETRY_WAIT_MAX), reraise=True)


def _scorer(
    reward: Reward, name: str, entries: Sequence[tuple[int, Variant]], jobs: Sequence[Job], retrying: Retrying
) -> Callable[[Sequence[int], Sequence[str]], list[float]]:
    """The engine's ``score``: the reward on (conversation, prefill + response), plus the format term, plus
    the grounding term of forced calls and structured output (``chat/_grounding.py``)."""
    format_weight, grounding_weight = jobs[0].settings.format_weight, jobs[0].settings.grounding_weight

    def score(indices: Sequence[int], responses: Sequence[str]) -> list[float]:
        full = [entries[e][1].prompt.prefill + r for e, r in zip(indices, responses, strict=True)]
        owners = [jobs[entries[e][0]] for e in indices]
        scored = [job.reply.scored(text) for job, text in zip(owners, full, strict=True)]  # the answer, by default
        values = list(retrying(reward.score, [job.messages for job in owners], scored))
        if len(values) == len(full):
            for pos, job in enumerate(owners):
                if format_weight and job.fmt.constrained:
                    values[pos] = values[pos] + format_weight * format_term(job.reply.answer(full[pos]), job)
                if job.conversation is not None:  # forced calls / structured output: the grounding term
                    g = groundlib.reply_grounding(job.reply.answer(full[pos]), job.fmt, job.conversation)
                    values[pos] = values[pos] + grounding_weight * g
        return values

    score.name = name  # type: ignore[attr-defined]  # errors name the user's reward
    return score


def _iteration_hook(
    entries: Sequence[tuple[int, Variant]], method: str, on_event: EventFn, cancel: threading.Event | None
) -> Callable[[IterationEvent], None]:
    """The engine's ``on_iteration``: stop when cancelled, else one progress event per job."""

    def on_iteration(event: IterationEvent) -> None:
        if cancel is not None and cancel.is_set():
            raise RunCancelledError(
                f"the run was cancelled by its caller after iteration {event.iteration + 1} of {event.num_iterations}"
            )
        per_job: dict[int, tuple[list[float], float]] = {}
        for pos, e in enumerate(event.prompt_indices):
            rewards, best = per_job.get(entries[e][0], ([], -math.inf))
            per_job[entries[e][0]] = ([*rewards, *event.rewards[pos]], max(best, event.best_rewards[pos]))
        for i, (rewards, best) in per_job.items():
            on_event(
                i,
                {
                    "iteration": event.iteration,
                    "num_iterations": event.num_iterations,
                    "rewards": rewards,
                    "best_reward": best,
                    "method": method,
                },
            )

    return on_iteration


def _outcome(
    job: Job, index: int, mine: list[PromptResult], merged: PromptResult | None
) -> PromptResult | BaseException:
    """One job's outcome from its variants' engine results ``mine`` and their merge."""
    failed = next((r.error for r in mine if isinstance(r.error, RewardError)), None)
    if failed is not None:
        err = RewardError(
            str(failed),
            [merged],
            reward=failed.reward,
            prompt_index=index,
            iteration=failed.iteration,
            response_index=failed.response_index,
            response=failed.response,
        )
        err.__cause__ = failed.__cause__  # the reward's own exception
        return err
    if any(r.cancelled for r in mine):
        done = max((len(r.rewards) for r in mine), default=0)
        return RunCancelledError(f"the call was dropped by its caller after {done} iteration(s)", [merged])
    if merged is None:
        settings = job.settings
        timed_out = TimeoutError(
            f"timeout={job.timeout} s passed before the first {settings.params.num_samples} samples "
            f"(max_tokens={settings.sampling.max_tokens}) were decoded, so no answer was scored; raise "
            "timeout, or lower num_samples or max_tokens"
        )
        timed_out.__cause__ = next((r.error for r in mine if isinstance(r.error, RunTimeoutError)), None)
        return timed_out
    return merged


def run_jobs(
    model: AISPChatModel,
    jobs: Sequence[Job],
    on_event: EventFn,
    cancel: threading.Event | None = None,
    keep: Callable[[int], bool] | None = None,
    runner: Callable[..., list[PromptResult]] | None = None,
) -> list[PromptResult | BaseException]:
    """One engine call over ``jobs`` (same settings and model): results or per-job errors.

    ``runner`` (default ``model._runner``: ``engine.aisp.run``) runs the engine call, e.g. a continuous
    ``engine.scheduler.Scheduler``'s ``run`` (the server).

    ``cancel`` (set when an async caller is cancelled) stops the run at the next iteration
    boundary with :class:`RunCancelledError`, so an abandoned executor thread does not keep
    the CPU busy until the end of the run. ``keep(job_index)`` False drops that job alone at
    the next iteration boundary (its outcome is a ``RunCancelledError``).
    """
    settings, lm = jobs[0].settings, jobs[0].lm
    entries = [(i, v) for i, job in enumerate(jobs) for v in job.variants()]  # engine prompts
    params = settings.params
    if len(entries) > len(jobs):  # auto: the free and the forced prompt share the samples
        params = dataclasses.replace(params, num_samples=max(1, math.ceil(params.num_samples / 2)))
    start = time.monotonic()
    deadlines = [  # per job: prepare() fixed it, else this run's start + the call's timeout
        job.deadline if job.deadline is not None else (None if job.timeout is None else start + job.timeout)
        for job in jobs
    ]
    seeds = [jobs[i].settings.seed for i, _ in entries]  # calls of one run may differ in seed only
    score = _scorer(model._reward, model.reward_name, entries, jobs, _retrying(model.max_retries, deadlines))
    engine_keep = None if keep is None else (lambda e: keep(entries[e][0]))
    engine_deadlines = [deadlines[i] for i, _ in entries]
    memory = None if any(j.fmt.constrained for j in jobs) else model.control_memory
    # isolated: a reward failure or a timeout with nothing scored is recorded on its prompt, never raised
    results: list[PromptResult | None] = list(
        run_with_memory(
            memory,
            lm,
            [v.token_ids for _, v in entries],
            score,
            params,
            settings.sampling,
            reward=model.reward_name,
            seed=seeds[0] if len(set(seeds)) == 1 else seeds,
            max_batch_size=model.max_batch_size,
            on_iteration=_iteration_hook(entries, settings.params.method, on_event, cancel),
            runner=model._runner if runner is None else runner,
            on_reward_error="isolate",
            keep=engine_keep,
            decoding=model.decoding,
            constraints=[v.constraint for _, v in entries],
            deadline=engine_deadlines[0] if len(set(engine_deadlines)) == 1 else engine_deadlines,
        )
    )
    scored = [r if r is not None and r.rewards else None for r in results]  # failed calls keep their partial
    merged = merge_variants(entries, scored, jobs)
    outcomes: list[PromptResult | BaseException] = []
    for i, job in enumerate(jobs):
        job.batch_prompts = len(jobs)
        mine = [r for (owner, _), r in zip(entries, results, strict=False) if owner == i and r is not None]
        outcomes.append(_outcome(job, i, mine, merged[i]))
    return outcomes


def execute(
    model: AISPChatModel,
    messages: list[BaseMessage],
    stop: list[str] | None,
    kwargs: dict[str, Any],
    progress: ProgressFn | None,
    cancel: threading.Event | None = None,
) -> tuple[Job, PromptResult]:
    """Run one call; returns the job that ran and its result.

    Inside ``batch`` the call claims the job the batch plan rendered for it: a member of the plan's
    group gets its share of the group's one engine run (the first member to arrive runs it), any other
    job runs alone. Outside a batch the call is rendered here and runs alone.
    """
    plan = BATCH_PLAN.get()
    index = plan.claim(messages, stop, kwargs) if plan is not None and plan.owner == id(model) else None
    if plan is None or index is None:
        job = build_job(model, messages, stop, kwargs)
    else:
        job = plan.jobs[index]
    if plan is None or index is None or index not in plan.group:
        outcome = run_jobs(model, [job], lambda _i, data: progress(data) if progress else None, cancel)[0]
    else:
        outcome = _run_plan(model, plan, plan.group.index(index), progress, cancel)
    if isinstance(outcome, BaseException):
        raise outcome
    return job, outcome


def _run_plan(
    model: AISPChatModel,
    plan: BatchPlan,
    member: int,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> PromptResult | BaseException:
    """The outcome of ``plan.group[member]``: the group's engine run is made by the first member to get here."""
    with plan.lock:
        if progress is not None:
            plan.progress[member] = progress
        if plan.outcomes is None:

            def on_event(i: int, data: dict[str, Any]) -> None:
                plan.events.setdefault(i, []).append(data)
                plan.deliver(i)

            # Nested calls made by the reward (a judge on this very model) must not join the plan:
            # they would wait on plan.lock, which this thread holds.
            token = BATCH_PLAN.set(None)
            try:
                plan.outcomes = run_jobs(model, [plan.jobs[i] for i in plan.group], on_event, cancel)
            except BaseException as exc:
                # Interrupted, cancelled or failed: every input of the plan gets this error, so no
                # other input re-runs the whole batch after the caller gave up on it.
                plan.outcomes = [exc] * len(plan.group)
                raise
            finally:
                BATCH_PLAN.reset(token)
        plan.deliver(member)
        return plan.outcomes[member]
