"""The AISP loop (adaptive importance sampling on pre-logits), Best-of-N and plain sampling.

Plain torch, no LangChain. For each prompt a mean control ``U`` (tau, d) starts at
zero; each iteration draws ``V_i = U + sigma * eps_i`` for n samples, decodes them in
one batch (together with the other prompts of the chunk: Batched AISP), scores them,
and moves ``U`` to the importance-weighted mean of the ``V_i``. Best-of-N is the same
loop with ``sigma = 0`` and no update, so both methods decode exactly the same shapes
and draw the same token-sampling random numbers for a given seed.

Optional per-prompt grammar ``constraints`` (:mod:`langchain_aisp.engine.constraints`) make every
sample of a prompt follow its grammar, so the weights only ever compare valid samples. A
``deadline`` (one for the run, or one per prompt) makes the run anytime: a prompt out of time
stops with the best answer of its iterations completed so far; decoding stops mid-iteration
once every running prompt is out of time.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from langchain_aisp.engine.config import (
    DEFAULT_DECODING,
    DEFAULT_MAX_BATCH_SIZE,
    AISPParams,
    SamplingParams,
    check_seed,
)
from langchain_aisp.engine.constraints import Constraint, Matcher
from langchain_aisp.engine.decode.eager import DecodeOutput, Decoder, PromptPrefix, decode, prefill
from langchain_aisp.engine.decode.static import DecodeFn, select_decode
from langchain_aisp.engine.early_rejection import EarlyRejection
from langchain_aisp.engine.importance import (
    control_inner,
    effective_sample_size,
    importance_weights,
    lambda_for_ess,
    token_direction,
    update_mean,
)
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.errors import RewardError, RewardFailure, RunTimeoutError, as_float, excerpt

ScoreFn = Callable[[Sequence[int], Sequence[str]], Sequence[float]]
"""``score(prompt_indices, responses) -> rewards``: one float per response; the indices
point into the ``prompts`` passed to :func:`run`."""

OnRewardError = Literal["raise", "isolate"]
ON_REWARD_ERROR: tuple[str, ...] = ("raise", "isolate")


@dataclass
class PromptResult:
    """The outcome for one prompt."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    reward: float = -math.inf
    finish_reason: str = ""
    best_iteration: int = -1
    prompt_tokens: int = 0
    samples: int = 0
    generated_tokens: int = 0
    rewards: list[list[float]] = field(default_factory=list)
    """Rewards of every sample, per iteration."""
    texts: list[list[str]] = field(default_factory=list)
    """Every sampled response, per iteration."""
    ess: list[float] = field(default_factory=list)
    """Effective sample size of the importance weights, per iteration."""
    lambdas: list[float] = field(default_factory=list)
    """Lambda used for the weights, per iteration."""
    u_norms: list[float] = field(default_factory=list)
    """Frobenius norm of U after each iteration's update."""
    timed_out: bool = False
    """Its deadline stopped it before all iterations were done (this is the best so far)."""
    error: RewardError | RunTimeoutError | None = None
    """With ``on_reward_error="isolate"``: the reward failed for this prompt (a :class:`RewardError`), or
    its deadline passed before any of its samples was scored (a :class:`RunTimeoutError`); it stopped
    while the others went on, and the fields above hold what was scored before."""
    cancelled: bool = False
    """``keep`` returned False for this prompt: it stopped after ``len(rewards)`` iterations."""
    weights: list[list[float]] = field(default_factory=list)
    """Importance weights of every sample, per iteration (uniform for Best-of-N and sampling)."""
    sample_token_ids: list[list[list[int]]] = field(default_factory=list)
    """Token ids of every sampled response, per iteration."""
    initial_U_norm: float = 0.0  # noqa: N815 - the paper's U
    """Frobenius norm of the starting mean U (0 for a cold start; see ``run(initial_U=...)``)."""
    U: torch.Tensor | None = None
    """The final mean control (steps, d), float32 on CPU (method "aisp" only): what a control memory learns from."""
    U_mass: torch.Tensor | None = None
    """Importance mass behind each row of ``U`` (steps,), summed over iterations: sum_i w_i over the samples
    that reached the position (0 where no sample did, and U kept its starting value)."""


@dataclass(frozen=True)
class IterationEvent:
    """Reported after every iteration of a chunk of prompts (for progress bars, callbacks)."""

    iteration: int
    num_iterations: int
    prompt_indices: list[int]
    rewards: list[list[float]]
    best_rewards: list[float]


def _prompt_seeds(seed: object, count: int) -> list[int | None]:
    """One validated seed per prompt, from one seed or a sequence of them."""
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != count:
            raise ValueError(f"seed: got {len(seed)} seeds for {count} prompts; pass one seed or one per prompt")
        return [check_seed(s) for s in seed]
    return [check_seed(seed)] * count


def _prompt_deadlines(deadline: object, count: int) -> list[float]:
    """One ``time.monotonic()`` deadline per prompt (inf: none), from one value or a sequence of them."""

    def check(value: object, what: str) -> float:
        if value is None:
            return math.inf
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise ValueError(f"{what} must be a time.monotonic() value in seconds or None, got {value!r}")
        return float(value)

    if isinstance(deadline, Sequence) and not isinstance(deadline, (str, bytes)):
        if len(deadline) != count:
            raise ValueError(
                f"deadline: got {len(deadline)} deadlines for {count} prompts; pass one deadline or one per prompt"
            )
        return [check(value, f"deadline[{j}]") for j, value in enumerate(deadline)]
    return [check(deadline, "deadline")] * count


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy for this generator only; the global RNG is untouched
    else:
        generator.manual_seed(seed)
    return generator


def _decode_rows(
    decoder: Decoder,
    prefixes: Sequence[PromptPrefix],
    row_prompt: torch.Tensor,
    V: torch.Tensor,
    uniforms: torch.Tensor,
    max_rows: int,
    row_constraints: Sequence[tuple[Constraint, int] | None],
    deadline: float,
    decode_fn: DecodeFn | None = None,
) -> tuple[DecodeOutput, int]:
    """Decode in pieces of at most ``max_rows`` rows, halving the piece on out-of-memory.

    ``row_constraints[r]`` is (constraint, sample index) of row r, or None. Returns the output
    and the piece size that worked, which the caller keeps for later iterations (an
    out-of-memory error is not retried at the same size every iteration).
    """
    total = row_prompt.shape[0]
    pieces: list[DecodeOutput] = []
    tried: list[int] = []  # decoding batch sizes that ran out of memory
    start = 0
    while start < total:
        stop = min(total, start + max_rows)
        matchers: list[Matcher | None] = [
            None if rc is None else rc[0].matcher(rc[1]) for rc in row_constraints[start:stop]
        ]
        fn = decode if decode_fn is None else decode_fn  # eager looked up here, so it can be patched in tests
        try:
            piece = fn(
                decoder,
                prefixes,
                row_prompt[start:stop],
                V[start:stop],
                uniforms[start:stop],
                matchers=matchers,
                deadline=deadline,
            )
        except torch.OutOfMemoryError as exc:
            tried.append(stop - start)
            if stop - start == 1:
                longest = max(p.length for p in prefixes)
                raise MemoryError(
                    f"out of memory decoding even a single row (decoding batch sizes tried: "
                    f"{', '.join(map(str, tried))}; max_tokens={decoder.sampling.max_tokens}, longest prompt "
                    f"{longest} tokens, model {decoder.lm.name} on {decoder.lm.device}): lower max_tokens, "
                    "shorten the prompt or use a smaller model"
                ) from exc
            if decoder.lm.device.type == "cuda":
                torch.cuda.empty_cache()
            max_rows = max(1, (stop - start) // 2)
            continue
        pieces.append(piece)
        start = stop
        if piece.timed_out:
            break
    if len(pieces) == 1 and start == total:
        return pieces[0], max_rows
    return DecodeOutput(
        token_ids=[ids for p in pieces for ids in p.token_ids],
        texts=[t for p in pieces for t in p.texts],
        finish_reasons=[r for p in pieces for r in p.finish_reasons],
        lengths=torch.cat([p.lengths for p in pieces]),
        timed_out=any(p.timed_out for p in pieces) or start < total,
    ), max_rows


def context_window_error(what: str, prompt_tokens: int, max_tokens: int, limit: int, model: str) -> str:
    """The message for a prompt that does not fit the context window ``limit`` with ``max_tokens`` new tokens.

    ``what`` names the prompt ("prompt 3", "the conversation"). When the prompt alone leaves no room
    for a single new token, the message says so and by how many tokens it is too long.
    """
    total = prompt_tokens + max_tokens
    if prompt_tokens >= limit:
        return (
            f"{what} is too long: {prompt_tokens} tokens, and the context window of {model} is {limit} tokens, "
            f"so no token is left for the answer; shorten it by at least {prompt_tokens - limit + 1} tokens "
            f"({total - limit} to keep max_tokens={max_tokens}); nothing is truncated"
        )
    return (
        f"{what} has {prompt_tokens} tokens and max_tokens is {max_tokens}: {total} tokens exceed the context "
        f"window of {model} ({limit} tokens) by {total - limit}; lower max_tokens to at most {limit - prompt_tokens} "
        f"or shorten {what} by {total - limit} tokens; nothing is truncated"
    )


def _check_prompts(lm: CausalLM, prompts: Sequence[Sequence[int]], max_tokens: int) -> None:
    """Refuse empty prompts and prompts that do not fit the context window with ``max_tokens`` (never truncate)."""
    limit = lm.max_context
    for j, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {j} is empty (0 tokens); every prompt needs at least one token")
        if limit is not None and len(prompt) + max_tokens > limit:
            raise ValueError(context_window_error(f"prompt {j}", len(prompt), max_tokens, limit, lm.name))


def _check_scores(scores: object, expected: int, name: str) -> list[float]:
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


def _reward_error(
    exc: Exception,
    name: str,
    todo: list[tuple[int, str]],
    keys: list[tuple[int, str]],
    n: int,
    iteration: int,
    partial: list[PromptResult | None],
) -> RewardError:
    """The run's error for a failed ``score`` call over ``todo``: which reward, what, and which prompt and response."""
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
    which = f"prompt {prompts[0]}" if len(prompts) == 1 else f"prompts {prompts}"
    return RewardError(
        f"{what} ({which}, iteration {iteration}, scoring a batch of {len(todo)} responses: an error raised for "
        f"the whole batch names no single response){tail}",
        partial,
        reward=name,
        prompt_index=prompts[0] if len(prompts) == 1 else None,
        iteration=iteration,
    )


def _score_name(score: ScoreFn) -> str:
    return str(getattr(score, "name", None) or getattr(score, "__name__", None) or type(score).__name__)


def control_shape(lm: CausalLM, params: AISPParams, sampling: SamplingParams) -> tuple[int, int]:
    """Shape (steps, d) of one prompt's mean control U: steps = min(tau, max_tokens) for ``control="position"``,
    1 for ``"shared"``; d the model's hidden size."""
    steps = min(params.tau, sampling.max_tokens) if params.control == "position" else 1
    return steps, lm.hidden_size


def _initial_controls(
    initial_U: object, prompts: int, shape: tuple[int, int], params: AISPParams, device: torch.device
) -> torch.Tensor:
    """``initial_U`` checked and broadcast to one starting mean per prompt: (prompts, steps, d), float32."""
    if initial_U is None:
        return torch.zeros(prompts, *shape, device=device)  # (P, steps, d)
    if params.method != "aisp":
        raise ValueError(f"initial_U steers AISP's control and needs method='aisp', got method={params.method!r}")
    if not isinstance(initial_U, torch.Tensor) or not initial_U.is_floating_point():
        raise TypeError(f"initial_U must be a floating-point torch.Tensor, got {type(initial_U).__name__}")
    steps, d = shape
    if tuple(initial_U.shape) not in ((steps, d), (prompts, steps, d)):
        raise ValueError(
            f"initial_U must have shape ({steps}, {d}) (one mean for every prompt) or ({prompts}, {steps}, {d}) "
            f"(one per prompt) for control={params.control!r}, tau={params.tau} and hidden size {d} "
            f"(steps = min(tau, max_tokens) for position control, 1 for shared), got {tuple(initial_U.shape)}"
        )
    if not bool(torch.isfinite(initial_U).all()):
        raise ValueError("initial_U contains NaN or infinite values")
    start = initial_U.detach().to(device=device, dtype=torch.float32)
    return start.expand(prompts, steps, d).clone()  # (P, steps, d)


@dataclass
class _PromptState:
    result: PromptResult
    prefix: PromptPrefix
    U: torch.Tensor  # (steps, d)
    generator: torch.Generator
    mass: torch.Tensor  # (steps,) importance mass per position, summed over iterations
    elite_uniforms: torch.Tensor | None = None  # (T,) token-sampling noise of the best response so far


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

    ``constraints`` (one per prompt, None = free text) constrain every sample of a prompt to
    its grammar.

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
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    if on_reward_error not in ON_REWARD_ERROR:
        raise ValueError(f"on_reward_error must be one of {list(ON_REWARD_ERROR)}, got {on_reward_error!r}")
    if constraints is not None and len(constraints) != len(prompts):
        raise ValueError(f"constraints must have one entry per prompt ({len(prompts)}), got {len(constraints)}")
    deadlines = _prompt_deadlines(deadline, len(prompts))
    seeds = _prompt_seeds(seed, len(prompts))
    _check_prompts(lm, prompts, sampling.max_tokens)
    decoder = Decoder.build(lm, sampling)
    static_fn, path = select_decode(lm, decoding)
    decode_fn = None if path == "eager" else static_fn  # every path takes the constraints and the deadline
    rejection = EarlyRejection.build(lm, params, sampling, decoder, constrained=bool(constraints and any(constraints)))
    single = params.method == "sample"
    n = 1 if single else params.num_samples
    n_out = n if rejection is None else rejection.keep  # finished responses per prompt and iteration
    k = 1 if single else params.num_iterations
    steer = params.method == "aisp"
    sigma = params.sigma * lm.prelogit_rms if steer else 0.0  # absolute, in pre-logit units
    tau = min(params.tau, sampling.max_tokens)
    d = lm.hidden_size
    device = lm.device
    # Which control vector drives each perturbed position: its own (position) or the one shared vector.
    control_index = torch.arange(tau) if params.control == "position" else torch.zeros(tau, dtype=torch.long)  # (tau,)
    steps = int(control_index.max()) + 1  # control vectors per sample
    start_U = _initial_controls(initial_U, len(prompts), (steps, d), params, device)  # (P, steps, d)
    elite_rows = round(params.elite_fraction * n) if steer else 0  # rows reusing the elite's noise
    name = _score_name(score)
    prompts_per_batch = max(1, max_batch_size // n)
    results: list[PromptResult | None] = [None] * len(prompts)
    decode_rows = max_batch_size  # rows per decode call; lowered for the rest of the run after out-of-memory
    seen: dict[tuple[int, str], float] = {}  # identical responses are scored once
    isolate = on_reward_error == "isolate"

    for chunk_start in range(0, len(prompts), prompts_per_batch):
        chunk = list(range(chunk_start, min(len(prompts), chunk_start + prompts_per_batch)))
        now = time.monotonic()
        for j in chunk:  # out of time before it started: not even prefilled
            if now >= deadlines[j]:
                results[j] = PromptResult(index=j, prompt_tokens=len(prompts[j]), timed_out=True)
        chunk = [j for j in chunk if results[j] is None]
        states = [
            _PromptState(
                PromptResult(index=j, prompt_tokens=len(prompts[j]), initial_U_norm=float(start_U[j].norm())),
                prefill(lm, prompts[j]),  # once per prompt, for all n x k samples
                start_U[j],  # (steps, d)
                _generator(seeds[j], device),
                torch.zeros(steps, device=device),  # (steps,)
            )
            for j in chunk
        ]
        live = states  # prompts still running: a failed or dropped prompt's rows leave the batch
        for iteration in range(k):
            now = time.monotonic()
            for state in live:
                if state.result.error is None and now >= deadlines[state.result.index]:
                    state.result.timed_out = True  # its own deadline: it stops with its best so far
                elif keep is not None and not keep(state.result.index):
                    state.result.cancelled = True
            live = [s for s in live if s.result.error is None and not s.result.cancelled and not s.result.timed_out]
            if not live:
                break
            prefixes = [s.prefix for s in live]
            row_prompt = torch.arange(len(live), device=device).repeat_interleave(n)  # (b * n,)
            row_constraints: list[tuple[Constraint, int] | None] = [
                None if constraints is None or constraints[s.result.index] is None else (constraints[s.result.index], i)  # type: ignore[misc]
                for s in live
                for i in range(n)
            ]
            eps = torch.stack(
                [torch.randn(n, steps, d, generator=s.generator, device=device) for s in live]
            )  # (b, n, steps, d)
            uniforms = torch.stack(
                [torch.rand(n, sampling.max_tokens, generator=s.generator, device=device) for s in live]
            )  # (b, n, T)
            if elite_rows and iteration > 0:
                elite = torch.stack([s.elite_uniforms for s in live if s.elite_uniforms is not None])  # (b, T)
                uniforms[:, :elite_rows] = elite[:, None]  # (b, n, T)
            U = torch.stack([s.U for s in live])  # (b, steps, d)
            V = U[:, None] + sigma * eps  # (b, n, steps, d)
            V_pos = V[:, :, control_index.to(device)].reshape(-1, tau, d)  # (b*n, tau, d)
            V_rows = torch.cat([V_pos, V.new_zeros(len(live) * n, 1, d)], dim=1)  # (b*n, tau+1, d)
            deadline_live = max(deadlines[s.result.index] for s in live)  # decoding stops only when all are out of time
            rejected_tokens = [0] * len(live)
            if rejection is None:
                out, decode_rows = _decode_rows(
                    decoder,
                    prefixes,
                    row_prompt,
                    V_rows,
                    uniforms.reshape(-1, sampling.max_tokens),
                    decode_rows,
                    row_constraints,
                    deadline_live,
                    decode_fn,
                )
            else:  # BoN with early rejection: partials scored like responses (same cache, same isolation)
                out, rejected_tokens = rejection.decode(
                    prefixes,
                    uniforms.reshape(-1, sampling.max_tokens),
                    functools.partial(_score_partials, score, name, n, seen, results, live, iteration, isolate),
                    deadline_live,
                    decode_fn,
                )
            if out.timed_out:  # an unfinished iteration is not scored: its responses are cut short
                for state in live:
                    state.result.timed_out = True
                break
            rewards = _score_rows(score, name, n_out, out.texts, seen, results, live, iteration, isolate)
            reached_pos = (torch.arange(tau)[None, :] < out.lengths[:, None]).float()  # (b*n, tau)
            reached = (
                torch.zeros(len(live) * n_out, steps).index_add_(1, control_index, reached_pos) > 0
            )  # (b*n, steps)
            reached = reached.reshape(len(live), n_out, steps)  # (b, n, steps)
            for b_idx, state in enumerate(live):
                if state.result.error is not None:
                    continue  # its reward failed in this iteration: keep what it had
                rows = slice(b_idx * n_out, (b_idx + 1) * n_out)
                r = torch.tensor(rewards[rows], dtype=torch.float64)  # (n,)
                improved = _record(state.result, iteration, out, rows, r)
                state.result.generated_tokens += rejected_tokens[b_idx]  # early rejection's discarded partials
                if improved >= 0:
                    state.elite_uniforms = uniforms[b_idx, improved].clone()  # (T,)
                if steer:
                    mask = reached[b_idx].to(device)  # (n, steps)
                    inner = control_inner(state.U, V[b_idx]).cpu()  # (n,) over all positions: exact ratio
                    lam = params.lambda_ or lambda_for_ess(r, inner, params.alpha, sigma, params.ess_target * n)
                    weights = importance_weights(r, inner, lam, params.alpha, sigma)  # (n,)
                    state.U = update_mean(state.U, V[b_idx].float(), weights.to(device), mask)  # (steps, d)
                    state.mass += weights.to(device, torch.float32) @ mask.float()  # (steps,)
                    if params.token_step > 0:
                        ids = out.token_ids[rows]
                        drift = token_direction(lm.head_weight, ids, weights, tau)  # (d,)
                        state.U = state.U + params.token_step * sigma * drift  # (steps, d)
                else:
                    lam, weights = 0.0, torch.full((n,), 1.0 / n)
                state.result.lambdas.append(lam)
                state.result.weights.append(weights.tolist())
                state.result.ess.append(effective_sample_size(weights))
                state.result.u_norms.append(float(state.U.norm()))
            scored = [s for s in live if s.result.error is None]
            if on_iteration is not None and scored:
                on_iteration(
                    IterationEvent(
                        iteration=iteration,
                        num_iterations=k,
                        prompt_indices=[s.result.index for s in scored],
                        rewards=[s.result.rewards[-1] for s in scored],
                        best_rewards=[s.result.reward for s in scored],
                    )
                )
        for state in states:
            if steer:
                state.result.U = state.U.detach().to("cpu", torch.float32)  # (steps, d)
                state.result.U_mass = state.mass.to("cpu")  # (steps,)
            results[state.result.index] = state.result
    missing = [j for j, r in enumerate(results) if r is not None and r.timed_out and not r.rewards]
    if missing:  # out of time before a single scored sample

        def why(which: str) -> str:
            return (
                f"the deadline passed before any sample of {which} was complete ({n} samples x "
                f"{sampling.max_tokens} max_tokens per iteration); allow more time, or lower num_samples or max_tokens"
            )

        if on_reward_error != "isolate":
            partial = [None if j in missing else r for j, r in enumerate(results)]
            raise RunTimeoutError(
                why(f"prompt(s) {missing}") + ". Results of prompts that finished an iteration are in .partial",
                partial,
            )
        for result in results:
            if result is not None and result.index in missing:
                result.error = RunTimeoutError(why(f"prompt {result.index}"), [None])
    return [r for r in results if r is not None]


def _score_rows(
    score: ScoreFn,
    name: str,
    n: int,
    texts: list[str],
    seen: dict[tuple[int, str], float],
    results: list[PromptResult | None],
    live: list[_PromptState],
    iteration: int,
    isolate: bool,
) -> list[float | None]:
    """Score every row once per distinct (prompt, response); rows of a prompt whose reward failed get None.

    Without ``isolate`` a failure raises :class:`RewardError` with the partial results; with it,
    the prompts of the failed call are scored one by one and each that still fails gets its own
    ``RewardError`` in ``result.error`` (the others go on).
    """
    keys = [(live[row // n].result.index, text) for row, text in enumerate(texts)]
    todo = list(dict.fromkeys(key for key in keys if key not in seen))
    if todo:
        try:
            values = _check_scores(score([j for j, _ in todo], [t for _, t in todo]), len(todo), name)
        except Exception as exc:
            if not isolate:
                partial = list(results)
                for state in live:
                    if state.result.rewards:
                        partial[state.result.index] = state.result
                raise _reward_error(exc, name, todo, keys, n, iteration, partial) from _own_cause(exc)
            _score_each_prompt(score, name, todo, keys, n, iteration, exc, seen, live)
        else:
            seen.update(zip(todo, values, strict=True))
    return [seen.get(key) for key in keys]


def _score_partials(
    score: ScoreFn,
    name: str,
    n: int,
    seen: dict[tuple[int, str], float],
    results: list[PromptResult | None],
    live: list[_PromptState],
    iteration: int,
    isolate: bool,
    texts: list[str],
) -> list[float | None]:
    """:func:`_score_rows` for early rejection's partial responses (the texts come last)."""
    return _score_rows(score, name, n, texts, seen, results, live, iteration, isolate)


def _own_cause(exc: Exception) -> BaseException:
    """The reward's own exception, not the RewardFailure that wrapped it to name the sample."""
    return exc.__cause__ if isinstance(exc, RewardFailure) and exc.__cause__ is not None else exc


def _score_each_prompt(
    score: ScoreFn,
    name: str,
    todo: list[tuple[int, str]],
    keys: list[tuple[int, str]],
    n: int,
    iteration: int,
    first_error: Exception,
    seen: dict[tuple[int, str], float],
    live: list[_PromptState],
) -> None:
    """After a failed joint call: score each prompt's responses alone; record a ``RewardError`` where it fails."""
    by_prompt: dict[int, list[tuple[int, str]]] = {}
    for key in todo:
        by_prompt.setdefault(key[0], []).append(key)
    states = {s.result.index: s for s in live}
    for j, mine in by_prompt.items():
        exc: Exception = first_error
        if len(by_prompt) > 1:  # with one prompt in the call, the culprit is known: no second call
            try:
                values = _check_scores(score([j] * len(mine), [t for _, t in mine]), len(mine), name)
            except Exception as retry_exc:
                exc = retry_exc
            else:
                seen.update(zip(mine, values, strict=True))
                continue
        result = states[j].result
        error = _reward_error(exc, name, mine, keys, n, iteration, [result if result.rewards else None])
        error.__cause__ = _own_cause(exc)
        result.error = error


def _record(result: PromptResult, iteration: int, out: DecodeOutput, rows: slice, rewards: torch.Tensor) -> int:
    """Append one iteration to ``result``; return the row (within ``rows``) of a new best, else -1."""
    texts = out.texts[rows]
    values = rewards.tolist()
    result.rewards.append(values)
    result.texts.append(texts)
    result.sample_token_ids.append(out.token_ids[rows])
    result.samples += len(texts)
    result.generated_tokens += int(out.lengths[rows].sum())
    best = max(range(len(values)), key=values.__getitem__)
    if values[best] > result.reward:
        result.reward = values[best]
        result.text = texts[best]
        result.token_ids = out.token_ids[rows][best]
        result.finish_reason = out.finish_reasons[rows][best]
        result.best_iteration = iteration
        return best
    return -1
