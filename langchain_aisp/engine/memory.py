"""Steering learned across calls: a proposal that learns the reward's shared direction and checks itself.

Best-of-N and AISP forget everything a call taught them. In a deployment the reward stays the same for
thousands of calls, and for many rewards (a tone, a style, a length) the better answers of every prompt
share a direction. A :class:`ControlMemory` learns it from every call's scored samples and shifts the
proposal of later calls along it, as a fixed pre-logit shift of the sample rows
(``aisp.run(..., row_shift=...)``): one mechanism for Best-of-N (the default method; its samples teach the
memory too) and for AISP, on every decode path.

**What it learns** (the ``"tokens"`` signal, chosen by the screen of issue 27, docs/results/memory/screen-27.md):
for every prompt and iteration, the reward advantage of each sample (``r_i - mean(r)``) times the frequency
of the tokens it generated, summed into a vocabulary vector ``b`` and mapped to pre-logit space through the
LM head, ``g = W^T b``: the direction whose logit shift ``W g`` raises the tokens that better answers used.
The head's top principal direction (the common-vs-rare token axis) is removed from ``g`` first, and ``g`` is
averaged over prompts (``window`` forgets old prompts exponentially). At unit strength the shift raises no
token's logit by more than 1 nat; ``strength`` (nats) scales it.

**A memory that checks itself** (:mod:`langchain_aisp.engine.selfcheck`): the first ``own`` rows of every
call (a quarter, at least one) sample the model's own proposal, the others the learned one. Each prompt
gives a paired estimate of whether the learned rows win (their expected best of ``own`` against the own
rows' best); the memory steers at ``level * strength`` and moves the level up only while that estimate is
significantly positive, and down as soon as it turns negative, so it backs off by itself when the reward or
the traffic changes. A cold memory (nothing learned yet) leaves every row at the model's proposal.

**A trust region**: the per-token KL divergence of the shifted proposal from the model's own (at the call's
temperature T) is estimated from the tokens the own rows sampled, ``0.5 Var_own(W shift / T)`` (second order,
exact in the limit of small shifts; the law of total variance makes the pooled variance an upper bound on
the mean conditional one), and the strength is capped so that it stays under ``kl_budget`` nats per token.

The memory is thread-safe (one lock; the statistics of a call are computed outside it and folded in
atomically), deterministic for the same sequence of calls, bound to one (model, reward name, hidden size)
and saved / loaded as safetensors with a JSON header. Plain torch, no LangChain.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from langchain_aisp.engine.aisp import IterationEvent, PromptResult, ScoreFn, run
from langchain_aisp.engine.config import DEFAULT_MAX_BATCH_SIZE, AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.selfcheck import (
    DEFAULT_FLOOR,
    DEFAULT_PROBE,
    DEFAULT_TEMPERATURE_LIMIT,
    DEFAULT_WINDOW,
    SelfCheck,
    TemperatureCheck,
    paired_gain,
    split_gain,
)

Signal = Literal["tokens"]
SIGNALS: tuple[str, ...] = ("tokens",)
FORMAT = 2
METADATA_KEY = "langchain_aisp.control_memory"

DEFAULT_SIGNAL: Signal = "tokens"
DEFAULT_STRENGTH = 4.0
"""The largest logit boost (nats) of the learned shift at full level."""
DEFAULT_OWN_SHARE = 0.25
"""Share of each call's sample rows drawn from the model's own proposal (2 of 8)."""
DEFAULT_KL_BUDGET = 0.5
"""Cap (nats per token) on the estimated KL divergence of the learned rows' shift from the model's proposal. The
estimate is an upper bound: in the screen of issue 27 it was 4.0-4.8x the KL measured along the learned rows'
own answers, so this budget holds their actual KL to about 0.1 nats per token."""
DEFAULT_WARMUP_PROMPTS = 8
"""The shift grows linearly with the prompts learned, reaching full strength at this many."""
DEFAULT_DIRECTION_WINDOW = 256
"""Effective number of prompts the direction averages over (older ones are forgotten exponentially)."""


@dataclass(frozen=True)
class MemoryKey:
    """What a memory is valid for: the model, the reward and the width of its shift (the hidden size)."""

    model: str
    reward: str
    width: int


def memory_key(lm: CausalLM, reward: str) -> MemoryKey:
    return MemoryKey(str(lm.name), str(reward), int(lm.hidden_size))


@dataclass(frozen=True)
class Proposal:
    """How one call samples: ``own`` rows from the model's proposal first, then the learned ones, shifted by
    ``row_shift`` (n, d) at ``strength`` nats (largest boost) and sampled at the call's temperature times
    ``exp(row_temperature)`` (n,) (alternately hotter and cooler). None: no such change."""

    row_shift: torch.Tensor | None
    own: int
    level: float
    strength: float
    kl: float
    """The estimated per-token KL (nats) of the learned rows' shift (at the call's temperature)."""
    row_temperature: torch.Tensor | None = None
    temperature_offset: float = 0.0
    """The learned rows' log-temperature offset around which they explore (``row_temperature`` +- the probe)."""

    @property
    def steered(self) -> bool:
        return self.row_shift is not None or self.row_temperature is not None

    def run_kwargs(self) -> dict[str, torch.Tensor]:
        """``aisp.run`` keyword arguments for this proposal."""
        kwargs = {"row_shift": self.row_shift, "row_temperature": self.row_temperature}
        return {k: v for k, v in kwargs.items() if v is not None}


def own_rows(num_samples: int, share: float) -> int:
    """Rows from the model's own proposal in a call of ``num_samples``: ``round(share * n)``, at least 1 and
    leaving at least one learned row; ``n`` for a single sample (nothing to compare: no steering)."""
    if num_samples < 2:
        return num_samples
    return min(num_samples - 1, max(1, round(share * num_samples)))


def _check_number(name: str, value: object, low: float, high: float, low_open: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    if not ((low < value) if low_open else (low <= value)) or value > high:
        raise ValueError(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class ControlMemory:
    """A proposal learned across calls that checks itself (see the module docstring).

    Args:
        strength: the largest logit boost (nats) of the learned shift at full level.
        own_share: share of every call's sample rows drawn from the model's own proposal, in (0, 1).
        kl_budget: cap on the estimated per-token KL divergence (nats) of the learned proposal from the model's.
        warmup_prompts: the shift grows linearly with the prompts learned, reaching full size at this many.
        window: effective number of prompts the direction averages over (exponential forgetting).
        check_window: effective number of calls the self-check's estimates average over.
        floor: the self-check's lowest level (the learned rows' probe strength is ``floor * strength``).
        temperature_probe: half-width (log-temperature) of the learned rows' temperature exploration; 0 keeps the
            learned rows at the call's temperature (no temperature is learned).
        temperature_limit: the largest log-temperature offset the learned rows may reach.
        frequency_axes: top principal directions of the LM head removed from the learned direction.
        learning: False freezes the memory: it still steers calls but neither learns nor moves its level.
        model, reward: pin the key up front; otherwise the first call fixes it. A call for another key is
            refused with an error naming both.
    """

    def __init__(
        self,
        *,
        signal: Signal = DEFAULT_SIGNAL,
        strength: float = DEFAULT_STRENGTH,
        own_share: float = DEFAULT_OWN_SHARE,
        kl_budget: float = DEFAULT_KL_BUDGET,
        warmup_prompts: int = DEFAULT_WARMUP_PROMPTS,
        window: int = DEFAULT_DIRECTION_WINDOW,
        check_window: int = DEFAULT_WINDOW,
        floor: float = DEFAULT_FLOOR,
        temperature_probe: float = DEFAULT_PROBE,
        temperature_limit: float = DEFAULT_TEMPERATURE_LIMIT,
        frequency_axes: int = 1,
        learning: bool = True,
        model: str | None = None,
        reward: str | None = None,
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {list(SIGNALS)}, got {signal!r}")
        self.signal: Signal = signal
        self.strength = _check_number("strength", strength, 0.0, 100.0)
        self.own_share = _check_number("own_share", own_share, 0.0, 0.99)
        self.kl_budget = _check_number("kl_budget", kl_budget, 0.0, 10.0)
        self.warmup_prompts = _check_int("warmup_prompts", warmup_prompts, 1)
        self.window = _check_int("window", window, 1)
        if isinstance(frequency_axes, bool) or not isinstance(frequency_axes, int) or not 0 <= frequency_axes <= 64:
            raise ValueError(f"frequency_axes must be an integer in [0, 64], got {frequency_axes!r}")
        self.frequency_axes = frequency_axes
        self.learning = bool(learning)
        window_calls = _check_int("check_window", check_window, 2)
        self._check = SelfCheck(window=window_calls, floor=floor, level=floor)
        self._temperature = TemperatureCheck(
            window=window_calls, probe=temperature_probe, step=temperature_probe / 2, limit=temperature_limit
        )
        self._model, self._reward = model, reward
        self._width: int | None = None
        self._lock = threading.Lock()
        self._updates = 0
        self._prompts = 0
        self._count = 0.0  # effective number of prompts behind the direction (decayed)
        self._sum: torch.Tensor | None = None  # (d,) sum over prompts of g_p, float64
        self._unit: torch.Tensor | None = None  # (d,) the mean direction scaled to a largest logit boost of 1
        self._delta: torch.Tensor | None = None  # (vocab,) its logit shift W unit (largest entry 1)
        self._stale = False  # _sum changed since _unit and _delta were derived
        self._tokens: torch.Tensor | None = None  # (vocab,) counts of the tokens the own rows sampled (decayed)
        self._axes: torch.Tensor | None = None  # (d, frequency_axes) directions removed from g

    # --- identity ------------------------------------------------------------------------

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def reward(self) -> str | None:
        return self._reward

    @property
    def updates(self) -> int:
        """Calls folded in so far."""
        return self._updates

    @property
    def prompts(self) -> int:
        """Prompts folded in so far (a batch call counts all its prompts)."""
        return self._prompts

    @property
    def level(self) -> float:
        """The self-check's current level in [floor, 1]."""
        return self._check.level

    def __repr__(self) -> str:
        return (
            f"ControlMemory(strength={self.strength}, level={self._check.level:.3f}, model={self._model!r}, "
            f"reward={self._reward!r}, updates={self._updates}, prompts={self._prompts})"
        )

    def _check_key(self, key: MemoryKey) -> None:
        for name, mine, theirs in (("model", self._model, key.model), ("reward", self._reward, key.reward)):
            if mine is not None and mine != theirs:
                raise ValueError(
                    f"this ControlMemory was learned for {name} {mine!r} but the call uses {name} {theirs!r}; "
                    "use a memory made for it (ControlMemory.load(path) of a matching profile) or a new ControlMemory()"
                )
        if self._width is not None and self._width != key.width:
            raise ValueError(
                f"this ControlMemory holds shifts of width {self._width} (the hidden size it learned on) but the "
                f"call's model has hidden size {key.width}; use a memory learned on this model"
            )

    def _bind(self, key: MemoryKey) -> None:
        self._check_key(key)
        self._model, self._reward, self._width = key.model, key.reward, key.width

    # --- the proposal ----------------------------------------------------------------------

    def proposal(self, lm: CausalLM, reward: str, params: AISPParams, sampling: SamplingParams) -> Proposal:
        """How a call with these settings samples (the key is checked first, so a call the memory could not
        learn from fails before it runs). Pre-logit controls only: a logit-space AISP control is refused."""
        if params.method == "aisp" and params.control in ("token-bias", "temperature"):
            raise ValueError(
                "a control memory shifts the pre-logits: use control='position' or 'shared' with it, got "
                f"control={params.control!r}"
            )
        n = 1 if params.method == "sample" else params.num_samples
        own = own_rows(n, self.own_share)
        with self._lock:
            self._check_key(memory_key(lm, reward))
            self._derive(lm.head_weight, lm.head_transform.scale)
            level = self._check.level
            unit, ramp = self._unit, min(1.0, self._count / self.warmup_prompts)
            kl_unit = self._kl_unit(sampling.temperature)
            offsets = self._temperature.rows(n - own)
            offset = self._temperature.offset
        if own >= n:
            return Proposal(None, own, level, 0.0, 0.0)
        temperature = None
        if any(o != 0.0 for o in offsets):
            temperature = torch.tensor([0.0] * own + offsets, dtype=torch.float32, device=lm.device)  # (n,)
        if unit is None or not ramp > 0:
            return Proposal(None, own, level, 0.0, 0.0, temperature, offset)
        strength = level * self.strength * ramp
        if kl_unit > 0:
            strength = min(strength, math.sqrt(self.kl_budget / kl_unit))
        shift = torch.zeros(n, unit.shape[0], dtype=torch.float32)  # (n, d)
        shift[own:] = (strength * unit).to(torch.float32)  # (n - own, d)
        return Proposal(shift.to(lm.device), own, level, strength, kl_unit * strength**2, temperature, offset)

    def _derive(self, head_weight: torch.Tensor, scale: float) -> None:
        """The unit shift and its logit shift from the summed direction, once per change (under the lock).
        ``scale`` is the model's head scale (Granite, Cohere): a shift ``g`` of the pre-logits moves the logits
        by ``scale * W g`` (a soft cap only shrinks that)."""
        if not self._stale or self._sum is None:
            return
        self._stale = False
        mean = (self._sum / self._count).to(device=head_weight.device, dtype=head_weight.dtype)  # (d,)
        delta = (
            scale * (head_weight.detach() @ mean).float().cpu().double()
        )  # (vocab,) the mean direction's logit shift
        top = float(delta.max())
        if not top > 0:
            self._unit = self._delta = None
            return
        self._unit = (self._sum / self._count / top).to(torch.float64)  # (d,) largest logit boost 1
        self._delta = delta / top  # (vocab,)

    def _kl_unit(self, temperature: float) -> float:
        """The estimated per-token KL at strength 1: 0.5 Var_own(W unit / T) over the own rows' tokens (0 while
        no own token was seen: the first calls are bounded by ``warmup_prompts`` instead)."""
        if self._delta is None or self._tokens is None or not float(self._tokens.sum()) > 0:
            return 0.0
        p = self._tokens / self._tokens.sum()  # (vocab,)
        mean = float(p @ self._delta)
        variance = float(p @ (self._delta - mean).pow(2))
        return 0.5 * variance / temperature**2

    def unit_shift(self, lm: CausalLM) -> torch.Tensor | None:
        """The learned direction (d,) scaled so that its largest logit boost is 1 nat, float32 on the model's
        device; None while the memory is cold. ``strength * unit_shift`` is a learned row's full shift."""
        with self._lock:
            self._derive(lm.head_weight, lm.head_transform.scale)
            unit = self._unit
        return None if unit is None else unit.to(device=lm.device, dtype=torch.float32)

    def boosted_tokens(self, lm: CausalLM, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` tokens whose logits the learned shift at full strength raises most, with the boost in nats:
        what the memory steers towards. Empty while it is cold."""
        with self._lock:
            self._derive(lm.head_weight, lm.head_transform.scale)
            unit = self._unit
        if unit is None:
            return []
        scaled = (self.strength * unit).to(device=lm.head_weight.device, dtype=torch.float32)  # (d,)
        shift = lm.head_transform.scale * (lm.head_weight.detach().float() @ scaled)  # (vocab,)
        top = torch.topk(shift, min(k, shift.shape[0]))
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        return [(lm.tokenizer.decode([i]), float(v)) for i, v in pairs]

    def stats(self) -> dict[str, Any]:
        """Key, counts, the self-check's state and the size of the shift (JSON-ready)."""
        with self._lock:
            return {
                "model": self._model,
                "reward": self._reward,
                "width": self._width,
                "signal": self.signal,
                "updates": self._updates,
                "prompts": self._prompts,
                "effective_prompts": self._count,
                "strength": self.strength,
                "kl_budget": self.kl_budget,
                "check": self._check.to_json(),
                "check_se": self._check.se if math.isfinite(self._check.se) else None,
                "temperature": self._temperature.to_json(),
            }

    # --- learning ----------------------------------------------------------------------------

    def update(
        self, lm: CausalLM, reward: str, results: Sequence[PromptResult], proposal: Proposal, max_tokens: int
    ) -> bool:
        """Fold one call's results in (all its prompts at once) under the ``proposal`` it ran with; returns
        whether the memory changed. The direction learns from every row; the self-check from the paired rows of
        a steered call; the trust region from the own rows' tokens."""
        if not self.learning:
            return False
        key = memory_key(lm, reward)
        with self._lock:
            self._check_key(key)  # refuse before computing anything
            axes = self._axes
        if axes is None:
            axes = head_principal_directions(lm.head_weight, self.frequency_axes)  # (d, k)
        stats = _token_statistics(lm.head_weight, results, max_tokens, axes)
        own_tokens = _own_token_counts(results, proposal.own, lm.head_weight.shape[0])  # (vocab,)
        gains = _paired_gains(results, proposal.own) if proposal.steered else []
        splits = _split_gains(results, proposal.own) if proposal.row_temperature is not None else []
        if stats is None and own_tokens is None and not gains:
            return False
        with self._lock:
            self._bind(key)
            self._axes = axes
            self._fold(stats, own_tokens)
            self._check.observe(gains)
            self._temperature.observe(splits)
            self._updates += 1
        return True

    def _fold(self, stats: _CallStatistics | None, own_tokens: torch.Tensor | None) -> None:
        decay = 1.0 - 1.0 / self.window
        if stats is not None:
            keep = decay**stats.prompts
            self._sum = stats.total if self._sum is None else self._sum * keep + stats.total
            self._count = self._count * keep + stats.prompts
            self._prompts += stats.prompts
            self._stale = True
        if own_tokens is not None:
            self._tokens = own_tokens if self._tokens is None else self._tokens * decay + own_tokens

    def copy(self) -> ControlMemory:
        """An independent copy (same settings, key and learned state): a snapshot to freeze or to branch from."""
        with self._lock:
            other = ControlMemory(**self._settings(), learning=self.learning, model=self._model, reward=self._reward)
            other._width, other._updates, other._prompts, other._count, other._stale = (
                self._width, self._updates, self._prompts, self._count, self._stale,
            )  # fmt: skip
            for name in ("_sum", "_unit", "_tokens", "_axes", "_delta"):
                value = getattr(self, name)
                setattr(other, name, None if value is None else value.clone())
            other._check = SelfCheck.from_json(self._check.to_json())
            other._temperature = TemperatureCheck.from_json(self._temperature.to_json())
            return other

    def reset(self) -> None:
        """Forget everything learned (the pinned key stays)."""
        with self._lock:
            self._updates = self._prompts = 0
            self._count = 0.0
            self._sum = self._unit = self._tokens = self._delta = None
            self._stale = False
            self._check = SelfCheck(window=self._check.window, floor=self._check.floor, level=self._check.floor)
            t = self._temperature
            self._temperature = TemperatureCheck(window=t.window, probe=t.probe, step=t.step, limit=t.limit)

    def _settings(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "strength": self.strength,
            "own_share": self.own_share,
            "kl_budget": self.kl_budget,
            "warmup_prompts": self.warmup_prompts,
            "window": self.window,
            "check_window": self._check.window,
            "floor": self._check.floor,
            "temperature_probe": self._temperature.probe,
            "temperature_limit": self._temperature.limit,
            "frequency_axes": self.frequency_axes,
        }

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile to ``path`` (safetensors; a JSON header names model, reward, width, settings)."""
        from safetensors.torch import save_file

        with self._lock:
            if self._sum is None or self._width is None:
                raise ValueError("this ControlMemory has learned nothing yet: there is no profile to save")
            tensors = {
                name: value.detach().cpu().contiguous()
                for name, value in (("sum", self._sum), ("tokens", self._tokens), ("axes", self._axes))
                if value is not None
            }
            header = {
                "format": FORMAT,
                "library": "langchain-aisp",
                "model": self._model,
                "reward": self._reward,
                "width": self._width,
                "updates": self._updates,
                "prompts": self._prompts,
                "count": self._count,
                "check": self._check.to_json(),
                "temperature": self._temperature.to_json(),
                **self._settings(),
            }
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(header)})
        os.replace(tmp, target)
        return target

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: str | None = None,
        reward: str | None = None,
        learning: bool = True,
    ) -> ControlMemory:
        """Read a profile written by :meth:`save`; ``model`` and ``reward``, when given, must match it."""
        from safetensors import safe_open

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no control-memory profile at {str(file)!r}")
        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:
            raise ValueError(f"{file} is not a readable safetensors control-memory profile ({exc})") from exc
        header = _parse_header(file, metadata)
        for name, wanted in (("model", model), ("reward", reward)):
            if wanted is not None and wanted != header[name]:
                raise ValueError(
                    f"{file} is a profile for {name} {header[name]!r}, not {wanted!r} (model {header['model']!r}, "
                    f"reward {header['reward']!r}, {header['updates']} updates)"
                )
        settings = {k: header[k] for k in _SETTINGS}
        memory = cls(**settings, learning=learning, model=header["model"], reward=header["reward"])
        width = int(header["width"])
        _check_tensors(file, tensors, width, int(header["frequency_axes"]))
        memory._width = width
        memory._sum = tensors["sum"].to(torch.float64)
        memory._tokens = tensors["tokens"].to(torch.float64) if "tokens" in tensors else None
        memory._axes = tensors["axes"].to(torch.float64) if "axes" in tensors else None
        memory._updates, memory._prompts = int(header["updates"]), int(header["prompts"])
        memory._count = float(header["count"])
        memory._check = SelfCheck.from_json(header["check"])
        memory._temperature = TemperatureCheck.from_json(header["temperature"])
        memory._stale = True  # the unit shift is derived from the model's head at the first call
        return memory


_SETTINGS = ("signal", "strength", "own_share", "kl_budget", "warmup_prompts", "window", "check_window", "floor",
             "temperature_probe", "temperature_limit", "frequency_axes")  # fmt: skip


def _parse_header(file: Path, metadata: dict[str, str]) -> dict[str, Any]:
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{file}: a safetensors file but not a control-memory profile (no {METADATA_KEY!r} header)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: the control-memory header is not valid JSON ({exc.msg})") from exc
    required = ("format", "model", "reward", "width", "updates", "prompts", "count", "check", "temperature", *_SETTINGS)
    missing = [k for k in required if k not in header] if isinstance(header, dict) else list(required)
    if missing:
        raise ValueError(f"{file}: the control-memory header lacks {missing}")
    if header["format"] != FORMAT:
        raise ValueError(f"{file}: control-memory format {header['format']!r} is not supported (expected {FORMAT})")
    if header["signal"] not in SIGNALS:
        raise ValueError(f"{file}: unknown signal {header['signal']!r} (expected one of {list(SIGNALS)})")
    return header


def _check_tensors(file: Path, tensors: dict[str, torch.Tensor], width: int, axes: int) -> None:
    expected: dict[str, tuple[int, ...]] = {"sum": (width,)}
    if "axes" in tensors:
        expected["axes"] = (width, axes)
    for name, want in expected.items():
        found = tensors.get(name)
        if found is None or tuple(found.shape) != want:
            got = None if found is None else tuple(found.shape)
            raise ValueError(f"{file}: tensor {name!r} should have shape {want} for width {width}, got {got}")
    for name, value in tensors.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{file}: tensor {name!r} holds NaN or infinite values")


# --- per-call statistics (pure functions of the results) -----------------------------------------


@dataclass
class _CallStatistics:
    total: torch.Tensor  # (d,) sum over prompts of g_p
    prompts: int


def token_bias(result: PromptResult, steps: int, vocab: int) -> torch.Tensor | None:
    """The vocabulary-space signal of one prompt: b (vocab,) sums, over iterations and samples,
    ``(r_i - mean r) / n`` times the frequency of each token among the sample's first ``steps`` tokens,
    divided by the number of iterations that had a reward spread. float64 on CPU; None when no
    iteration had two samples with different rewards (nothing to compare)."""
    b = torch.zeros(vocab, dtype=torch.float64)  # (vocab,)
    used = 0
    for rewards, samples in zip(result.rewards, result.sample_token_ids, strict=False):
        if len(rewards) < 2 or max(rewards) == min(rewards):
            continue
        r = torch.tensor(rewards, dtype=torch.float64)  # (n,)
        advantage = (r - r.mean()) / len(rewards)  # (n,)
        for a, ids in zip(advantage.tolist(), samples, strict=True):
            window = [t for t in ids[:steps] if 0 <= t < vocab]
            if window:
                b.index_add_(0, torch.tensor(window), torch.full((len(window),), a / len(window), dtype=torch.float64))
        used += 1
    return b / used if used else None


def head_principal_directions(head_weight: torch.Tensor, k: int, iterations: int = 30) -> torch.Tensor:
    """The top-k eigenvectors of ``W^T W`` (d, k), float64 on CPU, by orthogonal iteration.

    Deterministic (no random start: the mean row of ``W`` and coordinate axes) and cheap: a few
    products with ``W`` and ``W^T``, never the (d, d) matrix. The first one is, in practice, the
    mean row of the head: the common-vs-rare token axis.
    """
    d = head_weight.shape[1]
    if k == 0:
        return torch.zeros(d, 0, dtype=torch.float64)
    W = head_weight.detach()
    start = [W.float().mean(dim=0).cpu()] + [torch.eye(d)[i] for i in range(k - 1)]  # k x (d,)
    X = torch.stack(start, dim=1).to(device=W.device, dtype=torch.float32)  # (d, k)
    for _ in range(iterations):
        X = (W.T @ (W @ X.to(W.dtype))).float()  # (d, k)
        X, _ = torch.linalg.qr(X)  # (d, k)
    return X.to("cpu", torch.float64)  # (d, k)


def _token_statistics(
    head_weight: torch.Tensor, results: Sequence[PromptResult], steps: int, axes: torch.Tensor
) -> _CallStatistics | None:
    """g_p = W^T b_p per prompt (the pre-logit direction whose logit shift W g_p follows b_p), with the
    ``axes`` (d, k) removed, summed over prompts."""
    vocab = head_weight.shape[0]
    biases = [b for r in results if (b := token_bias(r, steps, vocab)) is not None]
    if not biases:
        return None
    B = torch.stack(biases).to(device=head_weight.device, dtype=head_weight.dtype)  # (P, vocab)
    G = (B @ head_weight).to("cpu", torch.float64)  # (P, d)
    G = G - (G @ axes) @ axes.T  # (P, d): without the head's frequency axes
    return _CallStatistics(G.sum(dim=0), len(biases))


def _own_token_counts(results: Sequence[PromptResult], own: int, vocab: int) -> torch.Tensor | None:
    """How often each token was sampled by the own rows (the model's proposal) of every prompt and iteration."""
    ids = [t for r in results for rows in r.sample_token_ids for row in rows[:own] for t in row if 0 <= t < vocab]
    if not ids:
        return None
    return torch.bincount(torch.tensor(ids), minlength=vocab).to(torch.float64)  # (vocab,)


def _split_gains(results: Sequence[PromptResult], own: int) -> list[float]:
    """:func:`~langchain_aisp.engine.selfcheck.split_gain` of the learned rows' hot (even) and cool (odd) halves."""
    gains = []
    for result in results:
        for rewards in result.rewards:
            learned = rewards[own:]
            gain = split_gain(learned[0::2], learned[1::2], rewards)
            if gain is not None:
                gains.append(gain)
    return gains


def _paired_gains(results: Sequence[PromptResult], own: int) -> list[float]:
    """:func:`~langchain_aisp.engine.selfcheck.paired_gain` of every prompt and iteration (own rows first)."""
    gains = []
    for result in results:
        for rewards in result.rewards:
            gain = paired_gain(rewards[:own], rewards[own:])
            if gain is not None:
                gains.append(gain)
    return gains


# --- one engine call with a memory ---------------------------------------------------------------


def run_with_memory(
    memory: ControlMemory | None,
    lm: CausalLM,
    prompts: Sequence[Sequence[int]],
    score: ScoreFn,
    params: AISPParams,
    sampling: SamplingParams,
    *,
    reward: str,
    seed: int | Sequence[int | None] | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    on_iteration: Callable[[IterationEvent], None] | None = None,
    runner: Callable[..., list[PromptResult]] = run,
    **run_kwargs: Any,
) -> list[PromptResult]:
    """``aisp.run`` with the memory's proposal (its row shifts and temperatures), then one memory update with all
    prompts' results.

    A failing run (``RewardError``, cancellation) leaves the memory unchanged, and so does a call of one sample
    (nothing to compare it with) and the prompts of a run whose reward failed (``PromptResult.error``) or that
    were dropped (``.cancelled``). ``run_kwargs`` go to ``aisp.run`` as they are (``runner`` stands in for
    ``aisp.run``, e.g. the scheduler's); ``memory=None`` is a plain ``aisp.run``. Each result's ``memory`` field
    says how its call sampled.
    """
    proposal = memory.proposal(lm, reward, params, sampling) if memory is not None else None
    if proposal is not None:
        run_kwargs.update(proposal.run_kwargs())
    results = runner(
        lm,
        prompts,
        score,
        params,
        sampling,
        seed=seed,
        max_batch_size=max_batch_size,
        on_iteration=on_iteration,
        **run_kwargs,
    )
    if memory is not None and proposal is not None:
        info = {
            "own_rows": proposal.own,
            "level": proposal.level,
            "strength": proposal.strength,
            "kl": proposal.kl,
            "temperature_offset": proposal.temperature_offset,
        }
        for result in results:
            result.memory = info
        complete = [r for r in results if r.error is None and not r.cancelled]
        samples = 1 if params.method == "sample" else params.num_samples
        if complete and proposal.own < samples:  # one sample has nothing to compare with: it teaches nothing
            memory.update(lm, reward, complete, proposal, sampling.max_tokens)
    return results
