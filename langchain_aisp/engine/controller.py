"""One prompt's AISP controller: its mean control U, its generator, its best answer (plain torch).

In the style of an MPPI controller: :meth:`Controller.sample` draws this iteration's perturbations
``V_i = U + sigma * eps_i`` and token-sampling uniforms from the prompt's own generator;
:meth:`Controller.update` records the scored samples and moves ``U`` to the importance-weighted mean
of the ``V_i``. Best-of-N and plain sampling are the same controller with ``sigma = 0`` and no update,
so every method decodes the same shapes and draws the same random numbers for a given seed. A prompt's
answer depends only on its own controller, never on which prompts share its decode batch.

:class:`Plan` holds what every controller of a run shares, resolved once at construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.constraints import Constraint
from langchain_aisp.engine.decode.eager import DecodeOutput, PromptPrefix
from langchain_aisp.engine.importance import (
    control_inner,
    effective_sample_size,
    importance_weights,
    lambda_for_ess,
    mean_step,
    signal_share,
    step_null,
    token_direction,
)
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.logit_control import LOGIT_CONTROLS, LogitControl, control_width
from langchain_aisp.errors import RewardError, RunTimeoutError


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
    signal_shares: list[float] = field(default_factory=list)
    """Per iteration, the share of the update's step that was signal rather than noise, by which the step was
    scaled (:func:`~langchain_aisp.engine.importance.signal_share`; 0 for Best-of-N and sampling)."""
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
    memory: dict[str, float] | None = None
    """How a call with a :class:`~langchain_aisp.engine.memory.ControlMemory` sampled (``run_with_memory``): its
    ``own_rows`` (from the model's proposal, first), the self-check's ``level``, the learned rows' ``strength``
    (largest logit boost, nats; 0: not steered) and the estimated per-token ``kl``. None without a memory."""
    batch_prompts: int = 0
    """The most prompts that shared a decode batch with this one (itself included), over its iterations."""
    decoding: str = ""
    """The decode path of its last decoded iteration (``DecodeOutput.path``: "eager", "static" or "compiled")."""


@dataclass(frozen=True)
class IterationEvent:
    """Reported after every iteration of a group of prompts (for progress bars, callbacks)."""

    iteration: int
    num_iterations: int
    prompt_indices: list[int]
    rewards: list[list[float]]
    best_rewards: list[float]


@dataclass(frozen=True)
class Plan:
    """What every controller of a run shares, resolved once from the settings (no per-token branching)."""

    params: AISPParams
    num_samples: int
    """n: samples per prompt and iteration (1 for plain sampling)."""
    num_iterations: int
    """k: iterations per prompt (1 for plain sampling)."""
    steer: bool
    """Method "aisp": V is perturbed and U updated (Best-of-N and sampling decode V = 0)."""
    sigma: float
    """Perturbation scale in pre-logit units (``params.sigma`` times the model's pre-logit RMS; 0 unless steering)."""
    tau: int
    """Perturbed positions: min(tau, max_tokens)."""
    steps: int
    """Control vectors per sample: tau for position control, 1 for shared."""
    hidden_size: int
    max_tokens: int
    control_index: torch.Tensor
    """(tau,) which control vector drives each perturbed position, on the model's device."""
    elite_rows: int
    """Rows per iteration reusing the token-sampling noise of the prompt's best response so far."""
    device: torch.device
    head_weight: torch.Tensor = field(repr=False)
    """(vocab, d) the LM head, for ``token_step``."""
    logit_control: bool = False
    """``control`` is a logit-space control (``engine/logit_control.py``): U (1, width), ``sigma`` in its own units."""
    row_temperature: bool = False
    """Each sample row carries a log-temperature offset: its V rows get one more column
    (``logit_control.tempered_head``)."""

    @classmethod
    def build(cls, lm: CausalLM, params: AISPParams, sampling: SamplingParams, row_temperature: bool = False) -> Plan:
        single = params.method == "sample"
        steer = params.method == "aisp"
        n = 1 if single else params.num_samples
        tau = min(params.tau, sampling.max_tokens)
        logit_control = steer and params.control in LOGIT_CONTROLS
        if row_temperature and logit_control:
            raise ValueError(
                f"row_temperature scales the rows of a pre-logit control; control={params.control!r} is a logit "
                "control: use control='position' or 'shared' with it"
            )
        if params.control == "position":
            control_index = torch.arange(tau)  # (tau,)
        else:
            control_index = torch.zeros(tau, dtype=torch.long)  # (tau,)
        return cls(
            params=params,
            num_samples=n,
            num_iterations=1 if single else params.num_iterations,
            steer=steer,
            sigma=(params.sigma if logit_control else params.sigma * lm.prelogit_rms) if steer else 0.0,
            tau=tau,
            steps=int(control_index.max()) + 1,
            hidden_size=control_width(lm, params.control) if logit_control else lm.hidden_size,
            max_tokens=sampling.max_tokens,
            control_index=control_index.to(lm.device),
            elite_rows=round(params.elite_fraction * n) if steer else 0,
            device=lm.device,
            head_weight=lm.head_weight,
            logit_control=logit_control,
            row_temperature=row_temperature,
        )


@dataclass(frozen=True)
class Sample:
    """One iteration's draws for one prompt."""

    V: torch.Tensor
    """(n, steps, d) the perturbed controls."""
    V_rows: torch.Tensor
    """(n, tau + 1, d) the control added at each decoding position (zero past tau)."""
    uniforms: torch.Tensor
    """(n, T) token-sampling uniforms."""


@dataclass
class Controller:
    """One prompt's state across iterations: U, its generator, its best answer, its deadline and grammar."""

    plan: Plan
    result: PromptResult
    prefix: PromptPrefix
    U: torch.Tensor  # (steps, d)
    generator: torch.Generator
    """Draws the token-sampling uniforms."""
    noise: torch.Generator
    """Draws the control noise: its own generator, so every method run with one seed samples with the same
    uniforms in every iteration whatever its control's shape (Best-of-N and AISP are paired sample by sample)."""
    deadline: float = math.inf
    """``time.monotonic()`` value after which it starts no new iteration."""
    constraint: Constraint | None = None
    owner: Any = None
    """Who submitted it: the :class:`~langchain_aisp.engine.loop.Request` its scores, events and errors go to."""
    number: int = 0
    """Its index among its owner's prompts (what ``score``, ``keep`` and events call it)."""
    iteration: int = 0
    """Iterations decoded so far."""
    mass: torch.Tensor = field(init=False)  # (steps,) importance mass per position, summed over iterations
    start: torch.Tensor = field(init=False)  # (steps, d) the starting mean U_0
    evidence: torch.Tensor = field(init=False)  # (steps, d) S_k, the sum of the update's steps so far
    null: float = 0.0
    """The expected ||S_k||^2 were the weights independent of the noise (``importance.step_null``, summed)."""
    elite_uniforms: torch.Tensor | None = None  # (T,) token-sampling noise of the best response so far
    seen: dict[str, float] = field(default_factory=dict)
    """Rewards of the responses scored so far: an identical response is scored once."""
    logit: LogitControl | None = None
    """A logit-space control's support (where its noise goes); None for the pre-logit controls."""
    shift: torch.Tensor | None = None
    """(n, width) a fixed shift of each sample row's control at every decoded position (a learned proposal:
    ``run(row_shift=...)``); it moves the rows' base, not U: the weights and the update never see it."""
    temperature: torch.Tensor | None = None
    """(n,) each sample row's log-temperature offset (``run(row_temperature=...)``), with ``plan.row_temperature``."""

    def __post_init__(self) -> None:
        self.mass = torch.zeros(self.plan.steps, device=self.plan.device)  # (steps,)
        self.start = self.U  # (steps, d)
        self.evidence = torch.zeros_like(self.U)  # (steps, d)
        self.result.initial_U_norm = float(self.U.norm())

    @property
    def stopped(self) -> bool:
        result = self.result
        return result.error is not None or result.cancelled or result.timed_out

    @property
    def done(self) -> bool:
        return self.stopped or self.iteration >= self.plan.num_iterations

    def sample(self) -> Sample:
        """Draw this iteration's eps and uniforms from the prompt's generator; build its V rows."""
        plan = self.plan
        n, d = plan.num_samples, plan.hidden_size
        uniforms = torch.rand(n, plan.max_tokens, generator=self.generator, device=plan.device)  # (n, T)
        if plan.elite_rows and self.elite_uniforms is not None:
            uniforms[: plan.elite_rows] = self.elite_uniforms  # (n, T)
        if self.logit is not None:  # applied at every position: V_rows (n, 1, width)
            V = self.logit.draw(self.U, n, plan.sigma, self.noise)  # (n, 1, width)
            return Sample(V, V if self.shift is None else V + self.shift[:, None], uniforms)
        eps = torch.randn(n, plan.steps, d, generator=self.noise, device=plan.device)  # (n, steps, d)
        V = self.U[None] + plan.sigma * eps  # (n, steps, d)
        V_pos = V[:, plan.control_index]  # (n, tau, d)
        V_rows = torch.cat([V_pos, V.new_zeros(n, 1, d)], dim=1)  # (n, tau + 1, d)
        if self.shift is not None:  # at every position, the slice past tau included
            V_rows = V_rows + self.shift[:, None]  # (n, tau + 1, d)
        if self.temperature is not None:  # one more column: the row's log-temperature offset
            column = self.temperature[:, None, None].expand(n, V_rows.shape[1], 1)  # (n, tau + 1, 1)
            V_rows = torch.cat([V_rows, column.to(V_rows)], dim=2)  # (n, tau + 1, d + 1)
        return Sample(V, V_rows, uniforms)

    def update(self, sample: Sample, out: DecodeOutput, rows: slice, rewards: list[float]) -> None:
        """Record this iteration's scored rows ``rows`` of ``out``; weights, lambda and the mean update of U."""
        plan, result = self.plan, self.result
        r = torch.tensor(rewards, dtype=torch.float64)  # (n,)
        improved = _record(result, self.iteration, out, rows, r)
        if improved >= 0:
            self.elite_uniforms = sample.uniforms[improved].clone()  # (T,)
        if plan.steer:
            mask = self._reached(out.lengths[rows])  # (n, steps)
            inner = control_inner(self.U, sample.V).cpu()  # (n,) over all positions: exact ratio
            params = plan.params
            n = plan.num_samples
            lam = params.lambda_ or lambda_for_ess(r, inner, params.alpha, plan.sigma, params.ess_target * n)
            weights = importance_weights(r, inner, lam, params.alpha, plan.sigma)  # (n,)
            V, w = sample.V.float(), weights.to(plan.device)
            self.evidence = self.evidence + mean_step(self.U, V, w, mask)  # (steps, d) sum of the steps so far
            self.null += step_null(self.U, V, w, mask)
            share = signal_share(self.evidence, self.null)  # ~0 while the weights carry no signal about V
            self.U = self.start + share * self.evidence  # (steps, d)
            self.mass += weights.to(plan.device, torch.float32) @ mask.float()  # (steps,)
            if params.token_step > 0:
                drift = token_direction(plan.head_weight, out.token_ids[rows], weights, plan.tau)  # (d,)
                self.start = self.start + params.token_step * plan.sigma * drift  # (steps, d) not shrunk
                self.U = self.U + params.token_step * plan.sigma * drift  # (steps, d)
        else:
            lam, weights = 0.0, torch.full((len(rewards),), 1.0 / len(rewards))  # (n,) uniform over its responses
            share = 0.0
        result.lambdas.append(lam)
        result.signal_shares.append(share)
        result.weights.append(weights.tolist())
        result.ess.append(effective_sample_size(weights))
        result.u_norms.append(float(self.U.norm()))
        if self.logit is not None:
            self.logit.observe(out.token_ids[rows])  # token-bias: the support grows by the sampled tokens

    def _reached(self, lengths: torch.Tensor) -> torch.Tensor:
        """(n, steps) True where a sample reached the control vector (its response is long enough)."""
        plan = self.plan
        reached_pos = (torch.arange(plan.tau)[None, :] < lengths[:, None]).float()  # (n, tau)
        index = plan.control_index.cpu()  # (tau,)
        reached = torch.zeros(lengths.shape[0], plan.steps).index_add_(1, index, reached_pos) > 0  # (n, steps)
        return reached.to(plan.device)

    def finish(self) -> PromptResult:
        """Its result, with the final U and its mass (method "aisp")."""
        if self.plan.steer:
            self.result.U = self.U.detach().to("cpu", torch.float32)  # (steps, d)
            self.result.U_mass = self.mass.to("cpu")  # (steps,)
        return self.result


def _record(result: PromptResult, iteration: int, out: DecodeOutput, rows: slice, rewards: torch.Tensor) -> int:
    """Append one iteration to ``result``; return the row (within ``rows``) of a new best, else -1."""
    texts = out.texts[rows]
    values = rewards.tolist()
    result.rewards.append(values)
    result.texts.append(texts)
    result.sample_token_ids.append(out.token_ids[rows])
    result.decoding = out.path
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
