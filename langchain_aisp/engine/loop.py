"""The iteration loop shared by :func:`~langchain_aisp.engine.aisp.run` and the continuous scheduler.

A :class:`Request` is one caller's prompts (one ``run`` call, or one scheduler submission): its reward,
callbacks, seeds, deadlines and results. A :class:`DecodeGroup` runs the controllers of every request
with the same settings in shared decode batches (Batched AISP); at every iteration boundary
(:meth:`DecodeGroup.admit`) waiting prompts join, up to ``max_batch_size // n`` prompts at once, and
:meth:`DecodeGroup.iterate` does one iteration: sample, decode, score (one ``score`` call per request),
update, report. A failure is its request's alone (a decode failure is every request's in that batch):
the request keeps its scored iterations in the error's ``.partial``.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import torch

from langchain_aisp.engine.config import AISPParams, SamplingParams, check_seed
from langchain_aisp.engine.constraints import Constraint, Matcher
from langchain_aisp.engine.controller import Controller, IterationEvent, Plan, PromptResult, Sample
from langchain_aisp.engine.decode.eager import DecodeOutput, Decoder, PromptPrefix, decode, prefill
from langchain_aisp.engine.decode.select import DecodeFn
from langchain_aisp.engine.early_rejection import EarlyRejection
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.logit_control import LOGIT_CONTROLS, LogitControl, control_head, control_width, tempered_head
from langchain_aisp.engine.scoring import ScoreFn, score_name, score_rows
from langchain_aisp.errors import RunError, RunFailedError, RunTimeoutError

OnRewardError = Literal["raise", "isolate"]
ON_REWARD_ERROR: tuple[str, ...] = ("raise", "isolate")


# --- validation (at construction, in the caller's thread) -------------------------------------------


def prompt_seeds(seed: object, count: int) -> list[int | None]:
    """One validated seed per prompt, from one seed or a sequence of them."""
    if isinstance(seed, Sequence) and not isinstance(seed, (str, bytes)):
        if len(seed) != count:
            raise ValueError(f"seed: got {len(seed)} seeds for {count} prompts; pass one seed or one per prompt")
        return [check_seed(s) for s in seed]
    return [check_seed(seed)] * count


def prompt_deadlines(deadline: object, count: int) -> list[float]:
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


def check_prompts(lm: CausalLM, prompts: Sequence[Sequence[int]], max_tokens: int) -> None:
    """Refuse empty prompts and prompts that do not fit the context window with ``max_tokens`` (never truncate)."""
    limit = lm.max_context
    for j, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {j} is empty (0 tokens); every prompt needs at least one token")
        if limit is not None and len(prompt) + max_tokens > limit:
            raise ValueError(context_window_error(f"prompt {j}", len(prompt), max_tokens, limit, lm.name))


def control_shape(lm: CausalLM, params: AISPParams, sampling: SamplingParams) -> tuple[int, int]:
    """Shape (steps, d) of one prompt's mean control U: steps = min(tau, max_tokens) for ``control="position"``,
    1 otherwise; d the model's hidden size, the vocabulary for ``"token-bias"``, 1 for ``"temperature"``."""
    steps = min(params.tau, sampling.max_tokens) if params.control == "position" else 1
    return steps, control_width(lm, params.control) if params.control in LOGIT_CONTROLS else lm.hidden_size


def initial_controls(
    initial_U: object, prompts: int, shape: tuple[int, int], params: AISPParams, device: torch.device
) -> torch.Tensor:
    """``initial_U`` checked and broadcast to one starting mean per prompt: (prompts, steps, d), float32."""
    if initial_U is None:
        return torch.zeros(prompts, *shape, device=device)  # (P, steps, d)
    if params.method != "aisp":
        raise ValueError(f"initial_U steers AISP's control and needs method='aisp', got method={params.method!r}")
    why = (
        f"for control={params.control!r}, tau={params.tau} and hidden size {shape[1]} (steps = min(tau, max_tokens) "
        "for position control, 1 for shared)"
    )
    return per_prompt("initial_U", initial_U, shape, prompts, device, each="one mean for every prompt", why=why)


def row_shifts(row_shift: object, prompts: int, rows: int, width: int, device: torch.device) -> torch.Tensor | None:
    """``row_shift`` checked and broadcast to one shift per prompt and sample row: (prompts, n, width), float32.

    ``row_shift`` is (n, width) (the same for every prompt) or (prompts, n, width); width is the control's
    (the hidden size for the pre-logit controls). None stays None.
    """
    if row_shift is None:
        return None
    each = "one shift per sample row, the same for every prompt"
    return per_prompt("row_shift", row_shift, (rows, width), prompts, device, each=each, why="rows = num_samples")


def row_temperatures(
    row_temperature: object, prompts: int, rows: int, device: torch.device, enabled: bool
) -> torch.Tensor | None:
    """``row_temperature`` checked and broadcast to (prompts, n) log-temperature offsets, float32; zeros when the
    group scales rows (``enabled``) but the call gave none, None when it does not (then a given one is refused)."""
    if row_temperature is None:
        return torch.zeros(prompts, rows, device=device) if enabled else None
    if not enabled:
        raise ValueError("row_temperature needs a decode group built for it (run(..., row_temperature=...))")
    each = "one log-temperature offset per sample row"
    offsets = per_prompt(
        "row_temperature", row_temperature, (rows,), prompts, device, each=each, why="rows = num_samples"
    )
    if float(offsets.abs().max()) > 5.0:
        raise ValueError("row_temperature must hold finite log-temperature offsets in [-5, 5] (a factor of e^5)")
    return offsets  # (P, n)


def per_prompt(
    name: str, value: object, shape: tuple[int, ...], prompts: int, device: torch.device, *, each: str, why: str
) -> torch.Tensor:
    """A per-call tensor argument checked and broadcast to one copy per prompt: (prompts, *shape), float32.

    ``value`` is ``shape`` (``each``: the same for every prompt) or ``(prompts, *shape)``; ``why`` says where the
    shape comes from. The messages name the argument, the shapes allowed and the shape given."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(value).__name__}")
    batched = (prompts, *shape)
    if tuple(value.shape) not in (shape, batched):
        raise ValueError(
            f"{name} must have shape {shape} ({each}) or {batched} (one per prompt), {why}, got {tuple(value.shape)}"
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return value.detach().to(device=device, dtype=torch.float32).expand(batched).clone()  # (P, *shape)


def check_max_batch_size(max_batch_size: object) -> int:
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
    return max_batch_size


NOISE_SEED_SALT = 0x70B1A5
"""XOR-ed into a prompt's seed for its control-noise generator."""


def _generator(seed: int | None, device: torch.device, salt: int = 0) -> torch.Generator:
    """A generator of its own: ``seed ^ salt``, or fresh entropy for a None seed (the global RNG is untouched).

    Each prompt has two: the main one draws the token-sampling uniforms, the ``NOISE_SEED_SALT`` one the
    control noise (:class:`~langchain_aisp.engine.controller.Controller`).
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed ^ salt)
    return generator


# --- one caller's prompts -----------------------------------------------------------------------------


class Request:
    """One caller's prompts with their reward, callbacks, seeds, deadlines and grammars; validated here."""

    def __init__(
        self,
        lm: CausalLM,
        plan: Plan,
        prompts: Sequence[Sequence[int]],
        score: ScoreFn,
        *,
        seed: int | Sequence[int | None] | None = None,
        on_iteration: Callable[[IterationEvent], None] | None = None,
        on_reward_error: OnRewardError = "raise",
        keep: Callable[[int], bool] | None = None,
        initial_U: torch.Tensor | None = None,
        constraints: Sequence[Constraint | None] | None = None,
        deadline: float | Sequence[float | None] | None = None,
        row_shift: torch.Tensor | None = None,
        row_temperature: torch.Tensor | None = None,
    ) -> None:
        if on_reward_error not in ON_REWARD_ERROR:
            raise ValueError(f"on_reward_error must be one of {list(ON_REWARD_ERROR)}, got {on_reward_error!r}")
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"constraints must have one entry per prompt ({len(prompts)}), got {len(constraints)}")
        self.deadlines = prompt_deadlines(deadline, len(prompts))
        self.seeds = prompt_seeds(seed, len(prompts))
        check_prompts(lm, prompts, plan.max_tokens)
        self.start_U = initial_controls(
            initial_U, len(prompts), (plan.steps, plan.hidden_size), plan.params, plan.device
        )  # (P, steps, d)
        if (row_shift is not None or row_temperature is not None) and plan.params.reject_at:
            raise ValueError(  # early rejection decodes its partials without the rows' controls
                "row_shift / row_temperature cannot be combined with early rejection (reject_at > 0); use reject_at=0"
            )
        self.row_shift = row_shifts(row_shift, len(prompts), plan.num_samples, plan.hidden_size, plan.device)
        self.row_temperature = row_temperatures(
            row_temperature, len(prompts), plan.num_samples, plan.device, plan.row_temperature
        )  # (P, n) or None
        self.lm, self.plan, self.prompts, self.score = lm, plan, prompts, score
        self.name = score_name(score)
        self.isolate = on_reward_error == "isolate"
        self.on_iteration, self.keep, self.constraints = on_iteration, keep, constraints
        self.results: list[PromptResult | None] = [None] * len(prompts)
        self.waiting = list(range(len(prompts)))  # not admitted yet, in order
        self.running = 0  # admitted controllers not done yet
        self.admitted: float | None = None
        """``time.monotonic()`` when its first prompt was admitted (None: still waiting)."""
        self.error: BaseException | None = None
        """Set when the request failed: its :class:`RunError` (with ``.partial``) or, with nothing scored, the cause."""

    @property
    def finished(self) -> bool:
        return self.error is not None or (not self.waiting and self.running == 0)

    def admit(self, count: int, now: float) -> list[Controller]:
        """Controllers for up to ``count`` waiting prompts (prefilled now); a prompt already out of time is not."""
        if self.admitted is None:
            self.admitted = now
        admitted: list[Controller] = []
        while self.waiting and len(admitted) < count:
            j = self.waiting.pop(0)
            result = PromptResult(index=j, prompt_tokens=len(self.prompts[j]))
            self.results[j] = result
            if now >= self.deadlines[j]:  # out of time before it started: not even prefilled
                result.timed_out = True
                continue
            admitted.append(self._controller(j, result))
        self.running += len(admitted)
        return admitted

    def _controller(self, j: int, result: PromptResult) -> Controller:
        return Controller(
            plan=self.plan,
            result=result,
            prefix=prefill(self.lm, self.prompts[j]),  # once per prompt, for all n x k samples
            U=self.start_U[j],  # (steps, d)
            shift=None if self.row_shift is None else self.row_shift[j],  # (n, width)
            temperature=None if self.row_temperature is None else self.row_temperature[j],  # (n,)
            generator=_generator(self.seeds[j], self.plan.device),
            noise=_generator(self.seeds[j], self.plan.device, NOISE_SEED_SALT),
            deadline=self.deadlines[j],
            constraint=None if self.constraints is None else self.constraints[j],
            owner=self,
            number=j,
            logit=LogitControl.start(self.lm, self.plan.params.control, self.plan.device)
            if self.plan.logit_control
            else None,
        )

    def check(self, controller: Controller, now: float) -> None:
        """Before an iteration: stop the prompt if its deadline passed or ``keep`` dropped it."""
        if now >= controller.deadline:
            controller.result.timed_out = True  # its own deadline: it stops with its best so far
        elif self.keep is not None and not self.keep(controller.number):
            controller.result.cancelled = True

    def retire(self, controller: Controller) -> None:
        """A controller of this request is done: its result takes the final U."""
        controller.finish()
        self.running -= 1

    def partial(self) -> list[PromptResult | None]:
        """Per prompt, its result if it has a scored iteration, else None."""
        return [r if r is not None and r.rewards else None for r in self.results]

    def fail(self, exc: Exception) -> None:
        """Stop the request: a :class:`RunError` gets this request's partial results; any other error becomes a
        :class:`RunFailedError` carrying them (raised ``from`` it), unless nothing was scored (then it stays as is)."""
        partial = self.partial()
        if isinstance(exc, RunError):
            exc.partial = partial
            self.error = exc
        elif any(r is not None for r in partial):
            done = max(len(r.rewards) for r in partial if r is not None)
            error = RunFailedError(
                f"the run failed after {done} scored iteration(s): {type(exc).__name__}: {exc}. "
                "The best answers found before the failure are in .partial",
                partial,
            )
            error.__cause__ = exc  # as `raise error from exc`
            self.error = error
        else:
            self.error = exc

    def report(self, members: list[Controller]) -> None:
        """The progress callback, once per iteration counter among ``members`` (prompts scored in this iteration)."""
        scored = [c for c in members if c.result.error is None]
        if self.on_iteration is None or not scored:
            return
        for iteration in sorted({c.iteration for c in scored}):
            now = [c for c in scored if c.iteration == iteration]
            self.on_iteration(
                IterationEvent(
                    iteration=iteration,
                    num_iterations=self.plan.num_iterations,
                    prompt_indices=[c.number for c in now],
                    rewards=[c.result.rewards[-1] for c in now],
                    best_rewards=[c.result.reward for c in now],
                )
            )

    def outcome(self) -> list[PromptResult]:
        """The results in order; raises the request's error, or :class:`RunTimeoutError` for prompts out of time
        with nothing scored (unless isolated: then that error is on their result)."""
        if self.error is not None:
            raise self.error
        results = [r for r in self.results if r is not None]
        missing = [r.index for r in results if r.timed_out and not r.rewards]
        if not missing:
            return results

        def why(which: str) -> str:
            return (
                f"the deadline passed before any sample of {which} was complete ({self.plan.num_samples} samples x "
                f"{self.plan.max_tokens} max_tokens per iteration); allow more time, or lower num_samples or max_tokens"
            )

        if not self.isolate:
            partial = [None if r.index in missing else r for r in results]
            raise RunTimeoutError(
                why(f"prompt(s) {missing}") + ". Results of prompts that finished an iteration are in .partial",
                partial,
            )
        for result in results:
            if result.index in missing:
                result.error = RunTimeoutError(why(f"prompt {result.index}"), [None])
        return results


# --- the decode batches of compatible requests ----------------------------------------------------------


class DecodeGroup:
    """Runs the controllers of every request with the same model and settings in shared decode batches."""

    def __init__(
        self,
        lm: CausalLM,
        params: AISPParams,
        sampling: SamplingParams,
        *,
        max_batch_size: int,
        decode_fn: DecodeFn,
        max_prompts: int | None = None,
        row_temperature: bool = False,
    ) -> None:
        self.lm = lm
        self.plan = Plan.build(lm, params, sampling, row_temperature=row_temperature)
        self.decoder = Decoder.build(lm, sampling)
        self.decode_fn = decode
        if self.plan.logit_control:  # its head adds a logit-space control: the eager path (the static one captures
            self.decoder = replace(self.decoder, head=control_head(lm, params.control))  # a pre-logit head)
        elif row_temperature:  # each row's logits scaled by its own temperature: the eager path too
            self.decoder = replace(self.decoder, head=tempered_head(lm))
        else:
            self.decode_fn = decode_fn
        self.capacity = max(1, check_max_batch_size(max_batch_size) // self.plan.num_samples)  # prompts at once
        self.rejection = EarlyRejection.build(lm, params, sampling, self.decoder)  # None unless params.reject_at
        self.rows_out = self.plan.num_samples if self.rejection is None else self.rejection.keep  # per prompt
        if max_prompts is not None:
            self.capacity = max(1, min(self.capacity, max_prompts))
        self.decode_rows = max_batch_size  # rows per decode call; lowered for good after an out-of-memory
        self.requests: list[Request] = []  # with prompts waiting to be admitted, in arrival order
        self.live: list[Controller] = []

    def request(self, prompts: Sequence[Sequence[int]], score: ScoreFn, **kwargs: Any) -> Request:
        """A validated request for this group's settings (``kwargs``: :class:`Request`'s); not queued yet."""
        return Request(self.lm, self.plan, prompts, score, **kwargs)

    def add(self, request: Request) -> None:
        self.requests.append(request)

    def admit(self) -> None:
        """At an iteration boundary: waiting prompts join while there is room (in arrival order)."""
        waiting = [r for r in self.requests if r.waiting and r.error is None]
        if len(self.live) < self.capacity and waiting:
            now = time.monotonic()
            for request in waiting:
                self.live += request.admit(self.capacity - len(self.live), now)
                if len(self.live) >= self.capacity:
                    break

    def collect(self) -> list[Request]:
        """The requests finished (all their prompts done, or failed) since the last call; they leave the group."""
        done = [r for r in self.requests if r.finished]
        self.requests = [r for r in self.requests if not r.finished]
        return done

    def iterate(self) -> None:
        """One iteration of every live prompt: sample, decode, score, update, report."""
        self._retire([c for c in self.live if c.done])
        if not self.live:
            return
        now = time.monotonic()
        for controller in self.live:
            controller.owner.check(controller, now)
        self._retire([c for c in self.live if c.stopped])
        live = self.live
        if not live:
            return
        samples = [c.sample() for c in live]
        try:
            out = self._decode(live, samples)
        except Exception as exc:  # out of memory on one row, a grammar matcher: every request in the batch
            for request in dict.fromkeys(c.owner for c in live):
                request.fail(exc)
            self._retire(list(live))
            return
        if out.timed_out:  # an unfinished iteration is not scored: its responses are cut short
            for controller in live:
                controller.result.timed_out = True
            self._retire(list(live))
            return
        for controller in live:
            controller.result.batch_prompts = max(controller.result.batch_prompts, len(live))
        for request in dict.fromkeys(c.owner for c in live):
            members = [b for b, c in enumerate(live) if c.owner is request]
            self._score_and_update(request, [live[b] for b in members], [samples[b] for b in members], out, members)
        for controller in live:
            controller.iteration += 1
        self._retire([c for c in self.live if c.done or c.owner.error is not None])

    def _score_and_update(
        self, request: Request, members: list[Controller], samples: list[Sample], out: DecodeOutput, rows: list[int]
    ) -> None:
        """Score one request's rows (one ``score`` call), update its controllers, report; a failure is its own."""
        n = self.rows_out  # finished responses per prompt in ``out``
        texts = [text for b in rows for text in out.texts[b * n : (b + 1) * n]]
        try:
            rewards = score_rows(request.score, request.name, members, texts, request.isolate)
            for m, (controller, sample) in enumerate(zip(members, samples, strict=True)):
                if controller.result.error is not None:
                    continue  # its reward failed in this iteration: keep what it had
                mine = [r for r in rewards[m * n : (m + 1) * n] if r is not None]  # all n: its reward did not fail
                b = rows[m]
                controller.update(sample, out, slice(b * n, (b + 1) * n), mine)
            request.report(members)
        except Exception as exc:
            request.fail(exc)

    def _decode(self, live: list[Controller], samples: list[Sample]) -> DecodeOutput:
        plan = self.plan
        row_prompt = torch.arange(len(live), device=plan.device).repeat_interleave(plan.num_samples)  # (b * n,)
        V_rows = torch.cat([s.V_rows for s in samples])  # (b * n, tau + 1, d)
        uniforms = torch.cat([s.uniforms for s in samples])  # (b * n, T)
        row_constraints = [
            None if c.constraint is None else (c.constraint, i) for c in live for i in range(plan.num_samples)
        ]
        if self.rejection is not None:  # Best-of-N with early rejection: engine/early_rejection.py
            if any(row_constraints):
                self.rejection.refuse_constraints()
            return self._decode_early(self.rejection, live, uniforms)
        out, self.decode_rows = decode_rows(
            self.decoder,
            [c.prefix for c in live],
            row_prompt,
            V_rows,
            uniforms,
            self.decode_rows,
            row_constraints,
            max(c.deadline for c in live),  # decoding stops only when every live prompt is out of time
            self.decode_fn,
        )
        return out

    def _decode_early(self, rejection: EarlyRejection, live: list[Controller], uniforms: torch.Tensor) -> DecodeOutput:
        """Decode partials, score them per request (like responses: same cache, same isolation), finish the best."""
        n = self.plan.num_samples

        def score_partials(texts: list[str]) -> list[float | None]:
            scores: list[float | None] = [None] * len(texts)
            for request in dict.fromkeys(c.owner for c in live):
                members = [b for b, c in enumerate(live) if c.owner is request]
                mine = [t for b in members for t in texts[b * n : (b + 1) * n]]
                try:
                    values = score_rows(request.score, request.name, [live[b] for b in members], mine, request.isolate)
                except Exception as exc:
                    request.fail(exc)
                    continue
                for m, b in enumerate(members):
                    scores[b * n : (b + 1) * n] = values[m * n : (m + 1) * n]
            return scores

        out, rejected = rejection.decode(
            [c.prefix for c in live], uniforms, score_partials, max(c.deadline for c in live), self.decode_fn
        )
        for controller, tokens in zip(live, rejected, strict=True):
            controller.result.generated_tokens += tokens  # the rejected partials were decoded too
        return out

    def _retire(self, leaving: list[Controller]) -> None:
        for controller in leaving:
            controller.owner.retire(controller)
        gone = {id(c) for c in leaving}
        self.live = [c for c in self.live if id(c) not in gone]


def decode_rows(
    decoder: Decoder,
    prefixes: Sequence[PromptPrefix],
    row_prompt: torch.Tensor,
    V: torch.Tensor,
    uniforms: torch.Tensor,
    max_rows: int,
    row_constraints: Sequence[tuple[Constraint, int] | None],
    deadline: float,
    decode_fn: DecodeFn = decode,
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
        try:
            piece = decode_fn(
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
        path=pieces[0].path,
    ), max_rows
