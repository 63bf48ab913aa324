"""A control memory: a starting mean for AISP's control U, learned across calls.

Every AISP call starts from U = 0 and spends its rounds rediscovering a direction that, for
many rewards (tone, sentiment, a house style), is the same for every prompt. A
:class:`ControlMemory` keeps, per (model, reward name, control shape), what earlier calls
taught it and hands the next call a warm start (``aisp.run(..., initial_U=...)``).

Two learning signals (``signal=``), both computed from a call's scored samples:

* ``"tokens"`` (default): for every prompt and iteration, the reward advantage of each sample
  (``r_i - mean(r)``) times the frequency of the tokens it generated in the steered window,
  summed into a vocabulary-space vector ``b`` and mapped to pre-logit space through the LM head:
  ``g = W^T b`` (d,), the direction whose logit shift ``W g`` raises the tokens that better
  answers used. The LM head's top principal direction (``frequency_axes=1``) is removed from ``g``
  first: in SmolLM2 it is the mean row of ``W`` (eigenvalue of ``W^T W`` 28x the next one), a
  "common vs rare token" axis on which a tiny component of ``g`` makes a huge logit shift that has
  nothing to do with the reward (measured: 96-99% of the logit effect of an unprojected ``g``,
  boosting " the", " a", " and"). ``g`` is averaged over prompts; the warm start is
  ``strength * g / max(W g)`` on every steered position: no token's logit is raised by more than
  ``strength`` nats. (Scaling by the RMS shift over the vocabulary instead was measured unsafe:
  at the same RMS, one learned direction raised " great" by 4.4 nats and another by 8.5, and the
  second collapsed into "great great great".)
* ``"control"``: the paper's importance-sampling result itself: the final mean ``U`` of each
  prompt (``PromptResult.U``), averaged over prompts and calls with the importance mass behind
  each position (``PromptResult.U_mass``) as weights; the warm start is ``strength * mean``.

Both ramp up linearly over the first ``warmup_prompts`` prompts (a direction learned from one
prompt is mostly that prompt's noise), and both are bounded: the warm start's RMS per coordinate
never exceeds ``max_rms`` x the model's pre-logit RMS, and ``window`` (optional) forgets old
prompts exponentially. ``shrink=True`` (tokens) further scales the start by ``rho``, the estimated
share of the learned direction that is shared across prompts rather than per-prompt noise (an
unbiased estimate from the spread of the per-prompt directions; conservative: it stays near 0
until many prompts agree). Why "tokens" is the
default, and what the "control" signal gave, is measured in docs/benchmarks.md (control memory).

The memory is thread-safe (one lock; the statistics of a call are computed outside it and
folded in atomically, so concurrent calls never lose an update), deterministic for the same
sequence of calls, and saved / loaded as safetensors with a JSON header (model, reward, shape,
signal, number of updates). Plain torch, no LangChain.
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

from langchain_aisp.engine.aisp import IterationEvent, PromptResult, ScoreFn, control_shape, run
from langchain_aisp.engine.config import DEFAULT_MAX_BATCH_SIZE, AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM

Signal = Literal["tokens", "control"]
SIGNALS: tuple[str, ...] = ("tokens", "control")
FORMAT = 1
METADATA_KEY = "langchain_aisp.control_memory"

DEFAULT_SIGNAL: Signal = "tokens"
DEFAULT_STRENGTH = {"tokens": 5.0, "control": 1.0}
"""Per signal: tokens, the largest logit boost (nats) of the warm start; control, a multiplier on the mean."""
DEFAULT_MAX_RMS = 0.25
"""Cap on the warm start's RMS per coordinate, as a fraction of the model's pre-logit RMS."""
DEFAULT_WARMUP_PROMPTS = 8
"""The warm start reaches full strength after this many prompts (linear ramp from 0)."""


@dataclass(frozen=True)
class MemoryKey:
    """What a learned mean is valid for: the model, the reward and the control shape (steps, d)."""

    model: str
    reward: str
    shape: tuple[int, int]


def memory_key(lm: CausalLM, reward: str, params: AISPParams, sampling: SamplingParams) -> MemoryKey:
    """The key of a call: ``lm.name``, the reward's name, :func:`langchain_aisp.engine.aisp.control_shape`."""
    return MemoryKey(str(lm.name), str(reward), control_shape(lm, params, sampling))


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in ({low}, {high}], got {value!r}")
    if not low < value <= high:
        raise ValueError(f"{name} must be a number in ({low}, {high}], got {value}")
    return float(value)


class ControlMemory:
    """A starting mean for AISP's control, learned from earlier calls (see the module docstring).

    Args:
        signal: ``"tokens"`` (reward-weighted token statistics mapped through the LM head) or
            ``"control"`` (the importance-weighted final U of each call, the paper's own update).
        strength: size of the warm start. tokens: the largest logit boost it gives any token, in nats
            (default 5); control: a multiplier on the mean (default 1, the importance-weighted mean itself).
        max_rms: hard bound on the warm start's RMS per coordinate, as a fraction of the pre-logit RMS.
        warmup_prompts: the start grows linearly with the prompts learned, reaching ``strength`` at this many.
        shrink: tokens only: also scale the start by the estimated signal share ``rho`` (conservative).
        frequency_axes: tokens only: how many top principal directions of the LM head are removed from the
            learned direction (0 keeps them).
        window: None averages over every prompt seen; an integer forgets exponentially with an
            effective memory of that many prompts (for rewards or traffic that change over time).
        learning: False freezes the memory: it still warm-starts calls but no longer updates.
        model, reward, shape: pin the key up front; otherwise the first update fixes it. A call for
            another key is refused with an error naming both.
    """

    def __init__(
        self,
        *,
        signal: Signal = DEFAULT_SIGNAL,
        strength: float | None = None,
        max_rms: float = DEFAULT_MAX_RMS,
        warmup_prompts: int = DEFAULT_WARMUP_PROMPTS,
        shrink: bool = False,
        frequency_axes: int = 1,
        window: int | None = None,
        learning: bool = True,
        model: str | None = None,
        reward: str | None = None,
        shape: tuple[int, int] | None = None,
    ) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {list(SIGNALS)}, got {signal!r}")
        self.signal: Signal = signal
        self.strength = _check_number("strength", DEFAULT_STRENGTH[signal] if strength is None else strength, 0.0, 1e3)
        self.max_rms = _check_number("max_rms", max_rms, 0.0, 10.0)
        if isinstance(warmup_prompts, bool) or not isinstance(warmup_prompts, int) or warmup_prompts < 1:
            raise ValueError(f"warmup_prompts must be an integer >= 1, got {warmup_prompts!r}")
        self.warmup_prompts = warmup_prompts
        self.shrink = bool(shrink)
        if isinstance(frequency_axes, bool) or not isinstance(frequency_axes, int) or not 0 <= frequency_axes <= 64:
            raise ValueError(f"frequency_axes must be an integer in [0, 64], got {frequency_axes!r}")
        self.frequency_axes = frequency_axes
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be None or an integer >= 1 (prompts), got {window!r}")
        self.window = window
        self.learning = bool(learning)
        if shape is not None:
            shape = _check_shape(shape)
        self._model = model
        self._reward = reward
        self._shape = shape
        self._lock = threading.Lock()
        self._updates = 0
        self._prompts = 0
        self._prelogit_rms = 0.0
        self._count = 0.0  # effective number of prompts (decayed with a window)
        self._sum: torch.Tensor | None = None  # tokens: (d,) sum of g_p; control: (steps, d) mass-weighted sum of U
        self._square = 0.0  # tokens: sum of ||g_p||^2
        self._mass: torch.Tensor | None = None  # control: (steps,) importance mass per position
        self._logit_max = 0.0  # tokens: max over the vocabulary of W g, g the mean direction
        self._axes: torch.Tensor | None = None  # tokens: (d, frequency_axes) directions removed from g

    # --- identity ------------------------------------------------------------------------

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def reward(self) -> str | None:
        return self._reward

    @property
    def shape(self) -> tuple[int, int] | None:
        return self._shape

    @property
    def updates(self) -> int:
        """Calls folded in so far."""
        return self._updates

    @property
    def prompts(self) -> int:
        """Prompts folded in so far (a batch call counts all its prompts)."""
        return self._prompts

    def __repr__(self) -> str:
        return (
            f"ControlMemory(signal={self.signal!r}, strength={self.strength}, model={self._model!r}, "
            f"reward={self._reward!r}, shape={self._shape}, updates={self._updates}, prompts={self._prompts})"
        )

    def _check_key(self, key: MemoryKey) -> None:
        for name, mine, theirs in (("model", self._model, key.model), ("reward", self._reward, key.reward)):
            if mine is not None and mine != theirs:
                raise ValueError(
                    f"this ControlMemory was learned for {name} {mine!r} but the call uses {name} {theirs!r}; "
                    "use a memory made for it (ControlMemory.load(path) of a matching profile) or a new ControlMemory()"
                )
        if self._shape is not None and self._shape != key.shape:
            raise ValueError(
                f"this ControlMemory holds controls of shape {self._shape} (steps, hidden size) but the call needs "
                f"{key.shape}: steps = min(tau, max_tokens) for control='position', 1 for 'shared'; keep tau, "
                "max_tokens and control as they were when the memory learned, or use another ControlMemory"
            )

    def _bind(self, key: MemoryKey, prelogit_rms: float) -> None:
        self._check_key(key)
        self._model, self._reward, self._shape = key.model, key.reward, key.shape
        if not self._prelogit_rms:
            self._prelogit_rms = float(prelogit_rms)

    # --- the warm start --------------------------------------------------------------------

    def signal_share(self) -> float:
        """rho in [0, 1]: the estimated share of the learned direction that is signal (tokens; 1 for control)."""
        with self._lock:
            return self._signal_share()

    def _signal_share(self) -> float:
        if self.signal == "control":
            return 1.0 if self._count > 0 else 0.0
        if self._sum is None or self._count <= 1.0:
            return 0.0
        mean = self._sum / self._count  # (d,)
        norm2 = float(mean.pow(2).sum())
        if not norm2 > 0:
            return 0.0
        spread = max(0.0, self._square / self._count - norm2)  # mean ||g_p - mean||^2
        noise2 = spread / (self._count - 1.0)  # variance of the mean
        return math.sqrt(max(0.0, norm2 - noise2) / norm2)

    def _start(self) -> torch.Tensor | None:
        """The warm start (steps, d) in pre-logit units, float32 on CPU; None when nothing is known yet."""
        if self._sum is None or self._shape is None or self._count <= 0:
            return None
        steps, d = self._shape
        scale = self.strength * min(1.0, self._count / self.warmup_prompts)
        if self.signal == "tokens":
            if self.shrink:
                scale *= self._signal_share()
            if scale <= 0 or not self._logit_max > 0:
                return None
            mean = self._sum / self._count  # (d,)
            U = (scale / self._logit_max * mean).expand(steps, d)  # (steps, d)
        else:
            assert self._mass is not None
            U = scale * self._sum / self._mass.clamp_min(1e-12)[:, None]  # (steps, d)
            U = torch.where(self._mass[:, None] > 0, U, torch.zeros_like(U))  # (steps, d)
        rms = float(U.pow(2).mean().sqrt())
        if not rms > 0:
            return None
        limit = self.max_rms * self._prelogit_rms
        if rms > limit:
            U = U * (limit / rms)  # (steps, d)
        return U.to(torch.float32).contiguous()  # (steps, d)

    def start(self, key: MemoryKey) -> torch.Tensor | None:
        """The starting mean for a call with this key (steps, d), or None when the memory is cold for it."""
        with self._lock:
            self._check_key(key)
            return self._start()

    def initial_U(  # noqa: N802 - the paper's U
        self, lm: CausalLM, reward: str, params: AISPParams, sampling: SamplingParams
    ) -> torch.Tensor | None:
        """:meth:`start` for a call of ``aisp.run`` with these settings (None for methods other than AISP).

        The key is checked for every method, so a call the memory could not learn from fails before it runs.
        """
        start = self.start(memory_key(lm, reward, params, sampling))
        if params.method != "aisp" or start is None:
            return None
        return start.to(lm.device)

    def boosted_tokens(self, lm: CausalLM, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` tokens whose logits the current warm start raises most, with the boost in nats
        (first steered position): what the profile steers towards. Empty while the memory is cold."""
        with self._lock:
            start = self._start()
        if start is None:
            return []
        shift = lm.head_weight.detach() @ start[0].to(lm.head_weight)  # (vocab,)
        top = torch.topk(shift.float(), min(k, shift.shape[0]))
        pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
        return [(lm.tokenizer.decode([i]), float(v)) for i, v in pairs]

    def stats(self) -> dict[str, Any]:
        """Key, counts and the size of the current warm start (JSON-ready)."""
        with self._lock:
            start = self._start()
            rms = float(start.pow(2).mean().sqrt()) if start is not None else 0.0
            return {
                "model": self._model,
                "reward": self._reward,
                "shape": list(self._shape) if self._shape else None,
                "signal": self.signal,
                "updates": self._updates,
                "prompts": self._prompts,
                "effective_prompts": self._count,
                "signal_share": self._signal_share(),
                "start_norm": float(start.norm()) if start is not None else 0.0,
                "start_rms": rms,
                "start_rms_over_prelogit_rms": rms / self._prelogit_rms if self._prelogit_rms else 0.0,
                "prelogit_rms": self._prelogit_rms,
            }

    # --- learning ----------------------------------------------------------------------------

    def update(
        self,
        lm: CausalLM,
        reward: str,
        params: AISPParams,
        sampling: SamplingParams,
        results: Sequence[PromptResult],
    ) -> bool:
        """Fold one call's results in (all its prompts at once); returns whether the memory changed.

        Results of ``method="sample"`` carry no comparison and are skipped; with ``signal="control"``
        only AISP results (which have a final ``U``) count.
        """
        if not self.learning:
            return False
        key = memory_key(lm, reward, params, sampling)
        with self._lock:
            self._check_key(key)  # refuse before computing anything
        if self.signal == "tokens":
            with self._lock:
                axes = self._axes
            if axes is None:
                axes = head_principal_directions(lm.head_weight, self.frequency_axes)  # (d, k)
            stats = _token_statistics(lm.head_weight, results, key.shape[0], axes)
        else:
            stats = _control_statistics(results, key.shape)
        if stats is None:
            return False
        with self._lock:
            self._bind(key, lm.prelogit_rms)
            if self.signal == "tokens" and self._axes is None:
                self._axes = axes
            self._fold(stats, lm.head_weight)
            self._updates += 1
        return True

    def _fold(self, stats: _CallStatistics, head_weight: torch.Tensor) -> None:
        prompts = stats.prompts
        if self.window is not None and self._sum is not None:
            keep = (1.0 - 1.0 / self.window) ** prompts if self.window > 1 else 0.0
            self._sum = self._sum * keep
            self._square *= keep
            self._count *= keep
            if self._mass is not None:
                self._mass = self._mass * keep
        self._sum = stats.total if self._sum is None else self._sum + stats.total
        self._square += stats.square
        self._count += prompts
        if stats.mass is not None:
            self._mass = stats.mass if self._mass is None else self._mass + stats.mass
        self._prompts += prompts
        if self.signal == "tokens":
            mean = (self._sum / self._count).to(device=head_weight.device, dtype=head_weight.dtype)  # (d,)
            self._logit_max = float((head_weight @ mean).float().max())  # the largest boost W g gives a token

    def copy(self) -> ControlMemory:
        """An independent copy (same settings, key and learned state): a snapshot to freeze or to branch from."""
        with self._lock:
            other = ControlMemory(
                signal=self.signal,
                strength=self.strength,
                max_rms=self.max_rms,
                warmup_prompts=self.warmup_prompts,
                shrink=self.shrink,
                frequency_axes=self.frequency_axes,
                window=self.window,
                learning=self.learning,
                model=self._model,
                reward=self._reward,
                shape=self._shape,
            )
            other._updates, other._prompts, other._prelogit_rms = self._updates, self._prompts, self._prelogit_rms
            other._count, other._square, other._logit_max = self._count, self._square, self._logit_max
            other._sum = None if self._sum is None else self._sum.clone()
            other._mass = None if self._mass is None else self._mass.clone()
            other._axes = None if self._axes is None else self._axes.clone()
            return other

    def reset(self) -> None:
        """Forget everything learned (the pinned key stays)."""
        with self._lock:
            self._updates = self._prompts = 0
            self._count = self._square = self._logit_max = 0.0
            self._sum = self._mass = None

    # --- persistence ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile to ``path`` (safetensors; a JSON header names model, reward, shape, updates)."""
        from safetensors.torch import save_file

        with self._lock:
            if self._sum is None or self._shape is None:
                raise ValueError("this ControlMemory has learned nothing yet: there is no profile to save")
            tensors = {"sum": self._sum.detach().cpu().contiguous()}
            if self._mass is not None:
                tensors["mass"] = self._mass.detach().cpu().contiguous()
            if self._axes is not None:
                tensors["axes"] = self._axes.detach().cpu().contiguous()
            header = {
                "format": FORMAT,
                "library": "langchain-aisp",
                "model": self._model,
                "reward": self._reward,
                "shape": list(self._shape),
                "signal": self.signal,
                "updates": self._updates,
                "prompts": self._prompts,
                "count": self._count,
                "square": self._square,
                "logit_max": self._logit_max,
                "prelogit_rms": self._prelogit_rms,
                "strength": self.strength,
                "max_rms": self.max_rms,
                "warmup_prompts": self.warmup_prompts,
                "shrink": self.shrink,
                "frequency_axes": self.frequency_axes,
                "window": self.window,
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
        shape: tuple[int, int] | None = None,
        learning: bool = True,
    ) -> ControlMemory:
        """Read a profile written by :meth:`save`; ``model``, ``reward`` and ``shape``, when given, must match it."""
        from safetensors import safe_open

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no control-memory profile at {str(file)!r}")
        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as exc:
            raise ValueError(f"{file}: not a readable safetensors control-memory profile ({exc})") from exc
        header = _parse_header(file, metadata)
        saved_shape = (int(header["shape"][0]), int(header["shape"][1]))
        for name, wanted, found in (
            ("model", model, header["model"]),
            ("reward", reward, header["reward"]),
            ("shape", None if shape is None else tuple(shape), saved_shape),
        ):
            if wanted is not None and wanted != found:
                raise ValueError(
                    f"{file} is a profile for {name} {found!r}, not {wanted!r} (model {header['model']!r}, "
                    f"reward {header['reward']!r}, shape {saved_shape}, {header['updates']} updates)"
                )
        memory = cls(
            signal=header["signal"],
            strength=header["strength"],
            max_rms=header["max_rms"],
            warmup_prompts=header["warmup_prompts"],
            shrink=header["shrink"],
            frequency_axes=header["frequency_axes"],
            window=header["window"],
            learning=learning,
            model=header["model"],
            reward=header["reward"],
            shape=saved_shape,
        )
        _check_tensors(file, header, tensors, saved_shape)
        memory._sum = tensors["sum"].to(torch.float64)
        memory._mass = tensors["mass"].to(torch.float64) if "mass" in tensors else None
        memory._axes = tensors["axes"].to(torch.float64) if "axes" in tensors else None
        memory._updates, memory._prompts = int(header["updates"]), int(header["prompts"])
        memory._count, memory._square = float(header["count"]), float(header["square"])
        memory._logit_max, memory._prelogit_rms = float(header["logit_max"]), float(header["prelogit_rms"])
        return memory


def _check_shape(shape: object) -> tuple[int, int]:
    if (
        not isinstance(shape, (tuple, list))
        or len(shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise ValueError(f"shape must be (steps, hidden size), two integers >= 1, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _parse_header(file: Path, metadata: dict[str, str]) -> dict[str, Any]:
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{file}: a safetensors file but not a control-memory profile (no {METADATA_KEY!r} header)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: the control-memory header is not valid JSON ({exc.msg})") from exc
    required = ("format", "model", "reward", "shape", "signal", "updates", "prompts", "count", "square")
    settings: tuple[str, ...] = ("logit_max", "prelogit_rms", "strength", "max_rms", "warmup_prompts", "shrink")
    settings = (*settings, "frequency_axes", "window")
    missing = [k for k in (*required, *settings) if k not in header]
    if not isinstance(header, dict) or missing:
        raise ValueError(f"{file}: the control-memory header lacks {missing}")
    if header["format"] != FORMAT:
        raise ValueError(f"{file}: control-memory format {header['format']!r} is not supported (expected {FORMAT})")
    if header["signal"] not in SIGNALS:
        raise ValueError(f"{file}: unknown signal {header['signal']!r} (expected one of {list(SIGNALS)})")
    _check_shape(header["shape"])
    return header


def _check_tensors(
    file: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor], shape: tuple[int, int]
) -> None:
    steps, d = shape
    expected: dict[str, tuple[int, ...]] = {"sum": (steps, d), "mass": (steps,)}
    if header["signal"] == "tokens":
        expected = {"sum": (d,)}
        if "axes" in tensors:
            expected["axes"] = (d, int(header["frequency_axes"]))
    for name, want in expected.items():
        found = tensors.get(name)
        if found is None or tuple(found.shape) != want:
            got = None if found is None else tuple(found.shape)
            raise ValueError(f"{file}: tensor {name!r} should have shape {want} for shape {shape}, got {got}")
        if not bool(torch.isfinite(found).all()):
            raise ValueError(f"{file}: tensor {name!r} holds NaN or infinite values")


# --- per-call statistics (pure functions of the results) -----------------------------------------


@dataclass
class _CallStatistics:
    total: torch.Tensor  # tokens: (d,) sum over prompts of g_p; control: (steps, d) mass-weighted sum of U
    square: float  # tokens: sum over prompts of ||g_p||^2
    prompts: int
    mass: torch.Tensor | None = None  # control: (steps,)


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
    return _CallStatistics(G.sum(dim=0), float(G.pow(2).sum()), len(biases))


def _control_statistics(results: Sequence[PromptResult], shape: tuple[int, int]) -> _CallStatistics | None:
    used = [r for r in results if r.U is not None and r.U_mass is not None and r.rewards]
    if not used:
        return None
    for r in used:
        assert r.U is not None
        if tuple(r.U.shape) != shape:
            raise ValueError(f"result {r.index} has a control of shape {tuple(r.U.shape)}, expected {shape}")
    masses = [r.U_mass.to(torch.float64) / max(1, len(r.rewards)) for r in used if r.U_mass is not None]  # (steps,)
    total = sum(m[:, None] * r.U.to(torch.float64) for m, r in zip(masses, used, strict=True) if r.U is not None)
    assert isinstance(total, torch.Tensor)
    return _CallStatistics(total, 0.0, len(used), mass=torch.stack(masses).sum(dim=0))


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
    """``aisp.run`` warm-started from ``memory`` (AISP only), then one memory update with all prompts' results.

    Each result's ``initial_U_norm`` says whether (> 0) and how strongly it was warm-started. A
    failing run (``RewardError``, cancellation) leaves the memory unchanged, and so do the prompts of
    a run whose reward failed (``PromptResult.error``) or that were dropped (``.cancelled``). ``run_kwargs`` go to
    ``aisp.run`` as they are (``runner`` stands in for ``aisp.run``, e.g. a wrapper); ``memory=None``
    is a plain ``aisp.run``.
    """
    if memory is not None and params.method == "aisp" and params.control in ("token-bias", "temperature"):
        raise ValueError("a control memory learns pre-logit controls: use control='position' or 'shared' with it, got "
                         f"control={params.control!r}")  # fmt: skip
    initial = memory.initial_U(lm, reward, params, sampling) if memory is not None else None
    if initial is not None:
        run_kwargs["initial_U"] = initial
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
    if memory is not None and params.method != "sample":
        complete = [r for r in results if r.error is None and not r.cancelled]
        if complete:
            memory.update(lm, reward, params, sampling, complete)
    return results
