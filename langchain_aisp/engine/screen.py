"""The signal screen: does a control design move the reward more than token sampling does?

For one prompt, draw K controls from a design and M sets of token-sampling uniforms, decode all
K x M pairs, score them, and split the reward variance two ways (two-way ANOVA without
replication): the control's main effect, the sampling's main effect and the rest (their
interaction). The F statistic of the control factor says whether the control's share is
distinguishable from zero. A design whose control share stays near zero cannot make an
importance-sampling update beat Best-of-N, whatever its schedule: the weights would follow
sampling noise (issue 17).

A design maps a scale to K control tensors and the LM head that applies them
(``head(z, v) -> logits``, the hook of :class:`~langchain_aisp.engine.decode.eager.Decoder`):

* ``position``: the paper's control, one pre-logit vector per position t < tau, ``v ~ N(0, (scale * rms)^2 I)``;
* ``shared``: one pre-logit vector added at every position t < tau;
* ``first``: per-position pre-logit noise on the first :data:`FIRST_POSITIONS` positions only;
* ``token-bias``: a logit-space control, a bias of ``scale`` nats std on each token the zero-control
  samples used (the pilot), added at every position;
* ``temperature``: the logits divided by ``exp(v)``, ``v ~ N(0, scale^2)``, at every position;
* ``eos``: ``v ~ N(0, scale^2)`` nats added to the EOS logits at every position (a length knob).

Pure torch: the rewards come in as callables ``texts -> floats``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.engine.decode.eager import Decoder, PromptPrefix, decode, prefill
from langchain_aisp.engine.lm import CausalLM, HeadFn, head_for

DESIGNS: tuple[str, ...] = ("position", "shared", "first", "token-bias", "temperature", "eos")
FIRST_POSITIONS = 4
"""Positions perturbed by the ``first`` design."""
PRELOGIT_DESIGNS: tuple[str, ...] = ("position", "shared", "first")
"""Designs whose scale is relative to the pre-logit RMS (like ``AISPParams.sigma``); the others are in nats
(``token-bias``, ``eos``) or in log-temperature (``temperature``)."""
MAX_SCALE = 1e3
ROUNDING = 1e-12
"""Relative size below which a sum of squares counts as zero in :func:`variance_split`."""

TextScore = Callable[[Sequence[str]], Sequence[float]]
"""``score(responses) -> rewards`` for the responses to one prompt."""


@dataclass(frozen=True)
class Design:
    """One control family at one scale."""

    name: str
    scale: float

    def __post_init__(self) -> None:
        if self.name not in DESIGNS:
            raise ValueError(f"design must be one of {list(DESIGNS)}, got {self.name!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise ValueError(f"design {self.name} scale must be a number in [0, {MAX_SCALE}], got {self.scale!r}")
        if not (math.isfinite(self.scale) and 0.0 <= self.scale <= MAX_SCALE):
            raise ValueError(f"design {self.name} scale must be a number in [0, {MAX_SCALE}], got {self.scale}")

    @property
    def label(self) -> str:
        return f"{self.name}@{self.scale:g}"

    @property
    def needs_pilot(self) -> bool:
        """``token-bias`` perturbs the tokens the zero-control samples used: it needs them first."""
        return self.name == "token-bias"


def parse_design(text: str, default_scale: float) -> Design:
    """``"name@scale"`` or ``"name"`` (then ``default_scale``) -> :class:`Design`."""
    name, sep, scale = text.strip().partition("@")
    if not sep:
        return Design(name, default_scale)
    try:
        value = float(scale)
    except ValueError as exc:
        raise ValueError(f"design {text!r}: the scale after '@' must be a number, got {scale!r}") from exc
    return Design(name, value)


@dataclass(frozen=True)
class VarianceSplit:
    """Two-way split of a (K controls x M sampling sets) reward matrix; shares sum to one."""

    control: float
    """Share of the total sum of squares explained by the control's main effect."""
    sampling: float
    """Share explained by the token-sampling uniforms' main effect."""
    residual: float
    """The rest: control x sampling interaction (no replication, so also the error term)."""
    f_control: float
    """F statistic of the control factor: MS_control / MS_residual (inf when the residual is zero)."""
    ss_total: float
    ss_control: float
    ss_residual: float
    df_control: int
    df_residual: int


def variance_split(rewards: torch.Tensor) -> VarianceSplit:
    """Two-way ANOVA without replication of rewards (K, M): rows are controls, columns sampling sets."""
    if rewards.dim() != 2 or rewards.shape[0] < 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must have shape (K >= 2, M >= 2), got {tuple(rewards.shape)}")
    r = rewards.double()  # (K, M)
    k, m = r.shape
    grand = r.mean()
    rows, cols = r.mean(dim=1, keepdim=True), r.mean(dim=0, keepdim=True)  # (K, 1), (1, M)
    ss_total = float((r - grand).pow(2).sum())
    floor = ROUNDING * ss_total  # sums of squares below it are rounding error (identical rows: exactly zero)
    ss_control, ss_sampling, ss_residual = (
        v if v > floor else 0.0
        for v in (
            float(m * (rows - grand).pow(2).sum()),
            float(k * (cols - grand).pow(2).sum()),
            float((r - rows - cols + grand).pow(2).sum()),
        )
    )
    df_control, df_residual = k - 1, (k - 1) * (m - 1)
    if ss_residual > 0:
        f_control = (ss_control / df_control) / (ss_residual / df_residual)
    else:
        f_control = math.inf if ss_control > 0 else 0.0
    if ss_total > 0:  # the three add up to ss_total (up to rounding)
        shares = (ss_control / ss_total, ss_sampling / ss_total, ss_residual / ss_total)
    else:
        shares = (0.0, 0.0, 0.0)
    return VarianceSplit(*shares, f_control, ss_total, ss_control, ss_residual, df_control, df_residual)


@dataclass(frozen=True)
class PooledSplit:
    """Shares over prompts (mean and standard error) and the pooled F of the control factor."""

    prompts: int
    control: float
    control_se: float
    sampling: float
    sampling_se: float
    residual: float
    f_pooled: float
    """(sum of SS_control / sum of df_control) / (sum of SS_residual / sum of df_residual) over prompts."""
    f_min: float
    f_max: float


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)  # (P,)
    se = float(t.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(t.mean()), se


def pool_splits(splits: Sequence[VarianceSplit]) -> PooledSplit:
    """Pool per-prompt splits: mean ± SE of each share, and the F of the summed sums of squares."""
    if not splits:
        raise ValueError("pool_splits needs at least one split, got none")
    control, control_se = _mean_se([s.control for s in splits])
    sampling, sampling_se = _mean_se([s.sampling for s in splits])
    residual, _ = _mean_se([s.residual for s in splits])
    ms_control = sum(s.ss_control for s in splits) / sum(s.df_control for s in splits)
    ms_residual = sum(s.ss_residual for s in splits) / sum(s.df_residual for s in splits)
    f_pooled = ms_control / ms_residual if ms_residual > 0 else (math.inf if ms_control > 0 else 0.0)
    fs = [s.f_control for s in splits]
    return PooledSplit(len(splits), control, control_se, sampling, sampling_se, residual, f_pooled, min(fs), max(fs))


def _plain_logits(base: HeadFn, z: torch.Tensor) -> torch.Tensor:
    return base(z, torch.zeros_like(z))  # (A, vocab) fp32


def design_controls(
    design: Design,
    lm: CausalLM,
    num_controls: int,
    tau: int,
    generator: torch.Generator,
    pilot_tokens: Sequence[int] = (),
) -> tuple[torch.Tensor, HeadFn]:
    """Draw ``num_controls`` controls of ``design`` and the head that applies them.

    Returns V (K, steps + 1, dv), the decoder's layout (slice ``min(t, steps)`` drives position t; a
    control applied at every position has steps = 0), and ``head(z, v) -> logits`` in fp32.
    """
    base = head_for(lm)
    d, k, s = lm.hidden_size, num_controls, design.scale
    device = lm.device
    if design.name in PRELOGIT_DESIGNS:
        sigma = s * lm.prelogit_rms  # absolute, in pre-logit units
        rows = 1 if design.name == "shared" else tau
        eps = torch.randn(k, rows, d, generator=generator, device=device)  # (K, rows, d)
        V = torch.zeros(k, tau + 1, d, device=device)  # (K, tau + 1, d); slice tau stays zero
        if design.name == "first":
            first = min(FIRST_POSITIONS, tau)
            V[:, :first] = sigma * eps[:, :first]  # (K, first, d)
        else:
            V[:, :tau] = sigma * eps  # (K, tau, d), broadcast over positions for "shared"
        return V, base
    if design.name == "token-bias":
        vocab = lm.head_weight.shape[0]
        ids = torch.tensor(sorted(set(pilot_tokens)), dtype=torch.long, device=device)  # (S,)
        eps = torch.randn(k, len(ids), generator=generator, device=device)  # (K, S)
        bias = torch.zeros(k, 1, vocab, device=device).index_copy_(2, ids, s * eps[:, None])  # (K, 1, vocab)

        def head_bias(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return _plain_logits(base, z) + v.float()  # (A, vocab)

        return bias, head_bias
    knob = s * torch.randn(k, 1, 1, generator=generator, device=device)  # (K, 1, 1)
    if design.name == "temperature":

        def head_temperature(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return _plain_logits(base, z) * torch.exp(-v.float())  # (A, vocab) / exp(v)

        return knob, head_temperature
    eos = torch.tensor(lm.eos_token_ids, dtype=torch.long, device=device)  # (E,)

    def head_eos(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        logits = _plain_logits(base, z)  # (A, vocab)
        return logits.index_add_(1, eos, v.float().expand(-1, len(eos)))  # (A, vocab)

    return knob, head_eos


@dataclass(frozen=True)
class ScreenCell:
    """One design on one prompt: the reward matrix and its split, per reward."""

    design: str
    rewards: dict[str, list[list[float]]]
    """Per reward name, the (K, M) matrix: row k = control k, column m = sampling set m."""
    splits: dict[str, VarianceSplit]
    mean_length: float
    """Mean generated tokens over the K x M responses."""


def _score_all(rewards: Mapping[str, TextScore], texts: Sequence[str], k: int, m: int) -> dict[str, torch.Tensor]:
    """Score each distinct response once (identical responses get identical rewards) -> (K, M) per reward."""
    distinct = list(dict.fromkeys(texts))
    out: dict[str, torch.Tensor] = {}
    for name, score in rewards.items():
        values = [float(x) for x in score(distinct)]
        if len(values) != len(distinct):
            raise ValueError(f"reward {name} returned {len(values)} scores for {len(distinct)} responses")
        by_text = dict(zip(distinct, values, strict=True))
        out[name] = torch.tensor([by_text[t] for t in texts], dtype=torch.float64).reshape(k, m)  # (K, M)
    return out


def screen_prompt(
    lm: CausalLM,
    prompt: Sequence[int],
    rewards: Mapping[str, TextScore],
    designs: Sequence[Design],
    sampling: SamplingParams,
    *,
    num_controls: int = 8,
    num_sampling: int = 4,
    tau: int = 32,
    seed: int = 0,
) -> list[ScreenCell]:
    """Screen every design on one prompt (token ids): K = ``num_controls`` x M = ``num_sampling`` responses each.

    All designs share the same M sampling uniform sets (drawn from ``seed``); the controls of a design
    family come from a generator of their own (seed and family), so two scales of one family use the
    same standard-normal draws scaled differently. ``token-bias`` first decodes M responses at zero
    control with the same uniforms (the pilot) and perturbs the tokens they used.
    """
    for name, value, low in (("num_controls", num_controls, 2), ("num_sampling", num_sampling, 2), ("tau", tau, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    k, m = num_controls, num_sampling
    tau = min(tau, sampling.max_tokens)
    device = lm.device
    decoder = Decoder.build(lm, sampling)
    prefix: PromptPrefix = prefill(lm, prompt)
    uniforms = torch.rand(m, sampling.max_tokens, generator=torch.Generator().manual_seed(seed))  # (M, T)
    pilot_tokens: list[int] = []
    if any(d.needs_pilot for d in designs):
        zero = torch.zeros(m, 1, lm.hidden_size, device=device)  # (M, 1, d)
        pilot = decode(decoder, [prefix], torch.zeros(m, dtype=torch.long), zero, uniforms)
        pilot_tokens = [t for ids in pilot.token_ids for t in ids]
    cells = []
    for design in designs:
        generator = torch.Generator(device=device).manual_seed(seed * len(DESIGNS) + DESIGNS.index(design.name))
        V, head = design_controls(design, lm, k, tau, generator, pilot_tokens)  # (K, steps + 1, dv)
        V_rows = V.repeat_interleave(m, dim=0)  # (K*M, steps + 1, dv): row k*M + j = control k
        u_rows = uniforms.repeat(k, 1)  # (K*M, T): row k*M + j = sampling set j
        out = decode(replace(decoder, head=head), [prefix], torch.zeros(k * m, dtype=torch.long), V_rows, u_rows)
        matrices = _score_all(rewards, out.texts, k, m)
        cells.append(
            ScreenCell(
                design=design.label,
                rewards={name: mat.tolist() for name, mat in matrices.items()},
                splits={name: variance_split(mat) for name, mat in matrices.items()},
                mean_length=float(out.lengths.float().mean()),
            )
        )
    return cells
