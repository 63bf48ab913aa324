"""Execution: jobs -> one engine run (retries, control memory, deadlines) -> one outcome per job.

Every function takes data: the :class:`Engine` (the reward, the engine entry and the run's fixed settings)
and the jobs. A reward failing on one job's responses fails that job only (a ``RewardError`` with its
partial result); a job dropped by its caller gets ``RunCancelledError``; a job whose deadline passed with
nothing scored gets ``TimeoutError``; the others get their merged ``PromptResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.messages import AIMessage
from langchain_core.runnables.config import run_in_executor
from tenacity import Retrying, stop_after_attempt, stop_before_delay, wait_exponential

from langchain_aisp.chat import _grounding as groundlib
from langchain_aisp.chat._auto import auto_choice_score
from langchain_aisp.chat._messages import to_message
from langchain_aisp.chat._parse import format_validity
from langchain_aisp.chat._plan import Job, Slot, Variant
from langchain_aisp.chat._progress import AsyncProgress, ProgressFn
from langchain_aisp.engine.aisp import IterationEvent, PromptResult, RewardError, RunTimeoutError
from langchain_aisp.engine.config import DEFAULT_DECODING, DEFAULT_MAX_BATCH_SIZE
from langchain_aisp.engine.memory import ControlMemory, run_with_memory
from langchain_aisp.errors import RunCancelledError, RunError, RunFailedError
from langchain_aisp.rewards import Reward

RETRY_WAIT_MAX = 8.0
"""Longest wait (seconds) between two attempts of a failing reward call (exponential backoff from 0.5 s)."""

EventFn = Callable[[int, dict[str, Any]], None]
"""Receives (job index, progress event data)."""

Runner = Callable[..., list[PromptResult]]
"""The engine entry: :func:`langchain_aisp.engine.aisp.run`, or a ``Scheduler``'s ``run`` (same arguments)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Engine:
    """What runs a chat model's jobs: its reward, its engine entry and the settings fixed per model."""

    reward: Reward
    reward_name: str
    runner: Runner
    max_retries: int = 0
    control_memory: ControlMemory | None = None
    max_batch_rows: int = DEFAULT_MAX_BATCH_SIZE
    decoding: str = DEFAULT_DECODING


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
                if grounding_weight and job.conversation is not None:  # forced calls / JSON: the grounding term
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


def _own_error(exc: BaseException, partial: list[PromptResult | None]) -> BaseException:
    """A copy of the run's error ``exc`` for one job (its type, message and cause), with that job's ``partial``.

    Every job of a batch gets its own object: raising one exception object from several threads would
    mix their tracebacks, and each job's ``partial`` is its own.
    """
    kind: Any = type(exc)  # a RunError subclass takes (message, partial); others their own args
    try:
        own = kind(*exc.args, partial) if isinstance(exc, RunError) else kind(*exc.args)
    except TypeError:  # an exception type that does not rebuild from its args
        own = RunFailedError(f"the engine run failed: {type(exc).__name__}: {exc}", partial)
    if isinstance(own, RunError):
        own.partial = partial
    own.__cause__ = exc.__cause__ if isinstance(exc, RunError) and exc.__cause__ is not None else exc
    return own


def _failed(
    exc: RunError, entries: Sequence[tuple[int, Variant]], jobs: Sequence[Job]
) -> list[PromptResult | BaseException]:
    """One error per job for a run that broke mid-way: ``exc``'s type and message, the job's merged best in
    ``.partial`` (the engine's ``partial`` holds one entry per engine prompt, i.e. per variant)."""
    partial = list(exc.partial) if len(exc.partial) == len(entries) else [None] * len(entries)
    merged = merge_variants(entries, [r if r is not None and r.rewards else None for r in partial], jobs)
    for job in jobs:
        job.batch_prompts = len(jobs)
    return [_own_error(exc, [merged[i]]) for i in range(len(jobs))]


def run_jobs(
    engine: Engine,
    jobs: Sequence[Job],
    on_event: EventFn,
    cancel: threading.Event | None = None,
    keep: Callable[[int], bool] | None = None,
    runner: Runner | None = None,
) -> list[PromptResult | BaseException]:
    """One engine call over ``jobs`` (same settings and model): results or per-job errors.

    A failure of the whole run gives each job its own error of the run's type: after a scored iteration
    (:class:`~langchain_aisp.errors.RunFailedError`, a cancellation, ...) with that job's best so far in
    ``.partial``; before one, the engine's error itself (a copy per job in a batch).

    ``runner`` (default ``engine.runner``, the chat model's ``runner``) runs the engine call, e.g. a
    continuous ``engine.scheduler.Scheduler``'s ``run`` (the server).

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
    score = _scorer(engine.reward, engine.reward_name, entries, jobs, _retrying(engine.max_retries, deadlines))
    engine_keep = None if keep is None else (lambda e: keep(entries[e][0]))
    engine_deadlines = [deadlines[i] for i, _ in entries]
    memory = None if any(j.fmt.constrained for j in jobs) else engine.control_memory
    # isolated: a reward failure or a timeout with nothing scored is recorded on its prompt, never raised
    try:
        results: list[PromptResult | None] = list(
            run_with_memory(
                memory,
                lm,
                [v.token_ids for _, v in entries],
                score,
                params,
                settings.sampling,
                reward=engine.reward_name,
                seed=seeds[0] if len(set(seeds)) == 1 else seeds,
                max_batch_size=engine.max_batch_rows,  # the engine's name: rows
                on_iteration=_iteration_hook(entries, settings.params.method, on_event, cancel),
                runner=engine.runner if runner is None else runner,
                on_reward_error="isolate",
                keep=engine_keep,
                decoding=engine.decoding,
                constraints=[v.constraint for _, v in entries],
                deadline=engine_deadlines[0] if len(set(engine_deadlines)) == 1 else engine_deadlines,
            )
        )
    except RunError as exc:  # the run broke after some iterations: each job keeps its own best
        return _failed(exc, entries, jobs)
    except Exception as exc:  # before any iteration was scored: nothing to keep
        return [exc] if len(jobs) == 1 else [_own_error(exc, [None]) for _ in jobs]
    scored = [r if r is not None and r.rewards else None for r in results]  # failed calls keep their partial
    merged = merge_variants(entries, scored, jobs)
    outcomes: list[PromptResult | BaseException] = []
    for i, job in enumerate(jobs):
        job.batch_prompts = len(jobs)
        mine = [r for (owner, _), r in zip(entries, results, strict=False) if owner == i and r is not None]
        outcomes.append(_outcome(job, i, mine, merged[i]))
    return outcomes


def merge_variants(
    entries: Sequence[tuple[int, Variant]], results: Sequence[PromptResult | None], jobs: Sequence[Job]
) -> list[PromptResult | None]:
    """One result per job. A job with a forced-call variant (``tool_choice="auto"``) returns that
    variant's best sample when it is a valid, grounded, new call (:func:`_auto.auto_choice_score`
    is positive), else the prose variant's best: the choice does not depend on the reward's scale.

    The forced variant's prefill is put in front of its texts (the free prompt has none); samples,
    tokens and per-iteration rewards of both variants are reported together.
    """
    merged: list[PromptResult | None] = [None] * len(jobs)
    seen: set[int] = set()
    for (i, variant), result in zip(entries, results, strict=False):
        forced = i in seen  # a job's second variant is its forced-call prompt
        seen.add(i)
        if result is None:
            continue
        if forced:  # its prefill beyond the free prompt's (which the reply readers add)
            extra = variant.prompt.prefill.removeprefix(jobs[i].prompt.prefill)
            result = dataclasses.replace(
                result, text=extra + result.text, texts=[[extra + t for t in ts] for ts in result.texts]
            )
        current = merged[i]
        if current is None:
            merged[i] = result
            continue
        call = format_term(jobs[i].reply.answer(jobs[i].prompt.prefill + result.text), jobs[i]) > 0
        jobs[i].auto_choice = "call" if call else "prose"
        best = result if call else current
        merged[i] = dataclasses.replace(
            best,
            samples=current.samples + result.samples,
            generated_tokens=current.generated_tokens + result.generated_tokens,
            rewards=[a + b for a, b in zip(current.rewards, result.rewards, strict=False)],
            texts=[a + b for a, b in zip(current.texts, result.texts, strict=False)],
        )
    return merged


def format_term(text: str, job: Job) -> float:
    """The format term of one reply (times ``format_weight``): validity, or the auto-choice rule."""
    if job.turn is not None:  # tool_choice="auto"
        return auto_choice_score(text, job.fmt, job.turn)
    return format_validity(text, job.fmt)  # forced calls / JSON; grounding is its own term (_grounding)


def execute(
    engine: Engine, job: Job, slot: Slot | None, progress: ProgressFn | None, cancel: threading.Event | None = None
) -> PromptResult:
    """Run one call's ``job``: alone, or (an input of a ``batch`` whose job shares the group's run,
    ``slot``) as its share of the group's one engine run (:func:`run_member`). Raises the call's error."""
    if slot is not None and slot.shared:
        outcome = run_member(engine, slot, progress, cancel)
    else:
        outcome = run_jobs(engine, [job], lambda _i, data: progress(data) if progress else None, cancel)[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_member(
    engine: Engine, slot: Slot, progress: ProgressFn | None, cancel: threading.Event | None
) -> PromptResult | BaseException:
    """The outcome of a ``batch`` input of the plan's group: the first of the group's calls to get here runs
    the group's engine run (its own progress events go out live, the others' are kept); each other member
    gets its outcome and its progress events when the run is over."""
    plan, index = slot.plan, slot.index
    with plan.lock:
        if plan.outcomes is None:
            members = plan.group

            def on_event(position: int, data: dict[str, Any]) -> None:
                if members[position] == index:
                    if progress is not None:
                        progress(data)
                else:
                    plan.events.setdefault(members[position], []).append(data)

            jobs = [job for job in (plan.jobs[i] for i in members) if job is not None]
            try:
                outcomes = run_jobs(engine, jobs, on_event, cancel)
            except BaseException as exc:
                # Interrupted, cancelled or failed: every input of the group gets this error, so no
                # other input re-runs the whole group after the caller gave up on it.
                plan.outcomes = dict.fromkeys(members, exc)
                raise
            plan.outcomes = dict(zip(members, outcomes, strict=True))
    if progress is not None:
        for data in plan.events.pop(index, []):
            progress(data)
    return plan.outcomes[index]


def run_prepared(
    engine: Engine, jobs: Sequence[Job], keep: Callable[[int], bool] | None, runner: Runner | None = None
) -> list[AIMessage | BaseException]:
    """``AISPChatModel.run_prepared``: jobs with equal ``batch_key`` share one engine run; one outcome each."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.batch_key(), []).append(i)
    outcomes: list[AIMessage | BaseException | None] = [None] * len(jobs)
    for members in groups.values():
        group = [jobs[i] for i in members]
        group_keep = None if keep is None else (lambda pos, members=members: keep(members[pos]))
        try:
            results = run_jobs(engine, group, lambda _i, _data: None, keep=group_keep, runner=runner)
        except Exception as exc:  # outside the engine run (which gives per-job outcomes): each its own copy
            results = [_own_error(exc, [None]) for _ in group]
        for i, job, result in zip(members, group, results, strict=True):
            outcomes[i] = result if isinstance(result, BaseException) else to_message(job, result, engine.reward_name)
    return [o for o in outcomes if o is not None]


async def in_thread(
    call: Callable[[ProgressFn | None, threading.Event], T], progress: AsyncProgress | None, cancel: threading.Event
) -> T:
    """``call(progress, cancel)`` in an executor thread; cancelling the awaiting task stops the run at its next
    iteration (``cancel``). Progress events go to the caller's loop without the engine thread waiting for
    them; every event sent is delivered before this returns or raises (a cancelled call sends no more)."""
    try:
        outcome = await run_in_executor(None, call, progress, cancel)
    except asyncio.CancelledError:
        cancel.set()
        raise
    except Exception:
        if progress is not None:
            with contextlib.suppress(Exception):  # the run's error is the one to raise
                await progress.drain()
        raise
    if progress is not None:
        await progress.drain()
    return outcome
