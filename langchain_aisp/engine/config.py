"""Validated engine parameters and the one place where the defaults live.

Every check says which value was bad and what is allowed, so the same messages
surface through the LangChain model's pydantic fields.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

Method = Literal["aisp", "bon", "sample"]
METHODS: tuple[str, ...] = ("aisp", "bon", "sample")
Control = Literal["position", "shared", "token-bias", "temperature"]
CONTROLS: tuple[str, ...] = ("position", "shared", "token-bias", "temperature")
Decoding = Literal["auto", "static", "compiled", "eager"]
DECODINGS: tuple[str, ...] = ("auto", "static", "compiled", "eager")

# --- Defaults (the benchmark in docs/benchmarks.md is what justifies them) ---
DEFAULT_METHOD: Method = "bon"
"""Best-of-N in one batch: on every reward measured (docs/benchmarks.md, "Sample efficiency against Best-of-N")
the AISP update ties Best-of-N at equal samples within noise, and AISP's k sequential rounds cost wall-clock."""
DEFAULT_SPLITS: dict[str, tuple[int, int]] = {"bon": (32, 1), "aisp": (8, 4), "sample": (1, 1)}
"""(num_samples, num_iterations) when left None, per method: the same 32 responses either way (Best-of-N in one
batch; AISP in the paper's 8 x 4); plain sampling draws one."""
DEFAULT_SIGMA = 0.02
"""Noise scale relative to the RMS of the model's pre-logits (0.05 = 5% of it)."""
DEFAULT_LAMBDA: float | None = None
"""None: lambda is chosen each iteration so the effective sample size hits ``ess_target``."""
DEFAULT_ESS_TARGET = 0.5
DEFAULT_ALPHA = 0.999
DEFAULT_TAU = 32
DEFAULT_CONTROL: Control = "position"
DEFAULT_ELITE_FRACTION = 0.0
DEFAULT_TOKEN_STEP = 0.0
DEFAULT_REJECT_AT = 0
"""0: no early rejection (every Best-of-N sample is decoded to the end)."""
DEFAULT_KEEP_FRACTION = 0.25
DEFAULT_MAX_TOKENS = 128
DEFAULT_TEMPERATURE = 1.0
"""The engine samples the model's own distribution unless told otherwise (the benchmarks' reference)."""
DEFAULT_CHAT_TEMPERATURE = 0.7
"""AISPChatModel's (and so the server's) default: Best-of-32 at 0.7 matches Best-of-80+ at 1.0 on the relevance and
reference-answer rewards and ties it on sentiment (docs/benchmarks.md, "Sample efficiency against Best-of-N")."""
DEFAULT_TOP_P = 1.0
DEFAULT_TOP_K = 0
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_DECODING: Decoding = "auto"
"""``"auto"``: the static-shape path (preallocated KV cache, CUDA graphs) on CUDA, the eager one elsewhere;
``"compiled"``: the static path with its step compiled by ``torch.compile`` first (slow first call)."""

MAX_SAMPLES = 4096
MAX_ITERATIONS = 1024
MAX_TAU = 65536
MAX_NEW_TOKENS = 1 << 20
MAX_SEED = (1 << 64) - 1
"""Largest seed a ``torch.Generator`` accepts."""


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")


def check_seed(seed: object) -> int | None:
    """Validate a seed: None (fresh entropy) or an integer in [0, 2**64 - 1]; returns it as an int."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}] or None, got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer in [0, {MAX_SEED}] or None, got {seed}")
    return int(seed)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def _check_range(name: str, value: object, low: float, high: float, low_open: bool, high_open: bool) -> None:
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    allowed = f"{left}{low}, {high}{right}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above:
        raise ValueError(f"{name} must be a number in {allowed}, got {value}")


@dataclass(frozen=True)
class SamplingParams:
    """How each token is sampled and when a response ends."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = DEFAULT_TOP_K
    """0 disables top-k."""
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1, MAX_NEW_TOKENS)
        _check_positive("temperature", self.temperature)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_open=True, high_open=False)
        _check_int("top_k", self.top_k, 0, 1 << 24)
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings, got {self.stop!r}")
        if "" in self.stop:
            raise ValueError(
                f"stop strings must be non-empty strings, got {list(self.stop)!r} "
                f"(an empty string at position {list(self.stop).index('')})"
            )


@dataclass(frozen=True)
class AISPParams:
    """The alignment method and its hyperparameters, in the paper's names."""

    method: Method = DEFAULT_METHOD
    num_samples: int = None  # type: ignore[assignment]  # None: resolved per method (DEFAULT_SPLITS)
    """n: samples per iteration (BoN draws num_samples * num_iterations in total); None (the default): the
    method's own, ``DEFAULT_SPLITS`` (32 for "bon", 8 for "aisp", 1 for "sample"). Always an int after init."""
    num_iterations: int = None  # type: ignore[assignment]  # None: resolved per method (DEFAULT_SPLITS)
    """k: importance-sampling iterations; None (the default): the method's own (1 for "bon", 4 for "aisp")."""
    sigma: float = DEFAULT_SIGMA
    """Std of the control noise, relative to the RMS of the model's pre-logits; in nats (logit units) for
    ``control="token-bias"`` and in log-temperature for ``"temperature"`` (docs/benchmarks.md, "Signal screen")."""
    lambda_: float | None = DEFAULT_LAMBDA
    """Temperature of the reward; None chooses it per iteration from ``ess_target``."""
    ess_target: float = DEFAULT_ESS_TARGET
    """Target effective sample size, as a fraction of n, when ``lambda_`` is None."""
    alpha: float = DEFAULT_ALPHA
    """MPPI coefficient on the control-cost term: weight uses (1 - alpha) / sigma^2."""
    tau: int = DEFAULT_TAU
    """Number of leading generated tokens that are perturbed."""
    control: Control = DEFAULT_CONTROL
    """``"position"``: one control vector per position t < tau (the paper's U, shape (tau, d));
    ``"shared"``: one vector added at every position t < tau (U of shape (1, d));
    ``"token-bias"``: a logit bias over the vocabulary added at every position, perturbed on the tokens the
    prompt's samples used so far (U of shape (1, vocab)); ``"temperature"``: the logits divided by ``exp(v)``,
    one number per sample (U of shape (1, 1)); both in :mod:`langchain_aisp.engine.logit_control`."""
    elite_fraction: float = DEFAULT_ELITE_FRACTION
    """Share of the samples of iterations 2..k that reuse the token-sampling noise of the best
    response so far (a local search around it through V alone); 0 draws fresh noise for all."""
    token_step: float = DEFAULT_TOKEN_STEP
    """Size, in units of sigma, of an extra drift of U along the reward-weighted mean embedding
    (LM-head rows) of the sampled tokens: sum_i (w_i - 1/n) mean_t W[y_i,t]. 0 is the paper's update."""
    reject_at: int = DEFAULT_REJECT_AT
    """Early rejection (Speculative Rejection; method ``"bon"`` only): decode every sample to this many
    tokens, score the partial responses and finish only the best ``keep_fraction`` of them; 0 disables.
    See :mod:`langchain_aisp.engine.early_rejection`."""
    keep_fraction: float = DEFAULT_KEEP_FRACTION
    """Share of each iteration's samples finished after the early-rejection checkpoint, in (0, 1]."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        split = DEFAULT_SPLITS[self.method]
        if self.num_samples is None:
            object.__setattr__(self, "num_samples", split[0])  # frozen: resolved once, here
        if self.num_iterations is None:
            object.__setattr__(self, "num_iterations", split[1])
        _check_int("num_samples", self.num_samples, 1, MAX_SAMPLES)
        _check_int("num_iterations", self.num_iterations, 1, MAX_ITERATIONS)
        _check_positive("sigma", self.sigma)
        if self.lambda_ is not None:
            _check_positive("lambda_", self.lambda_)
        _check_range("ess_target", self.ess_target, 0.0, 1.0, low_open=True, high_open=False)
        _check_range("alpha", self.alpha, 0.0, 1.0, low_open=False, high_open=False)
        _check_int("tau", self.tau, 1, MAX_TAU)
        _check_range("token_step", self.token_step, 0.0, 1e3, low_open=False, high_open=False)
        _check_range("elite_fraction", self.elite_fraction, 0.0, 1.0, low_open=False, high_open=False)
        if self.control not in CONTROLS:
            raise ValueError(f"control must be one of {list(CONTROLS)}, got {self.control!r}")
        _check_int("reject_at", self.reject_at, 0, MAX_NEW_TOKENS)
        _check_range("keep_fraction", self.keep_fraction, 0.0, 1.0, low_open=True, high_open=False)
        if self.reject_at and self.method != "bon":
            raise ValueError(
                f"reject_at (early rejection) applies to method='bon' only, got method={self.method!r} "
                f"with reject_at={self.reject_at}; use reject_at=0 with {self.method!r}"
            )
        if not self.reject_at and self.keep_fraction != DEFAULT_KEEP_FRACTION:
            raise ValueError(
                f"keep_fraction={self.keep_fraction} has no effect without early rejection (reject_at=0); "
                "set reject_at to a token count in [1, max_tokens - 1] or leave keep_fraction at its default"
            )
        if self.control in ("token-bias", "temperature") and self.token_step > 0:
            raise ValueError(
                f"token_step must be 0 with control={self.control!r} (it drifts a pre-logit control), "
                f"got {self.token_step}"
            )

    @property
    def budget(self) -> int:
        """Responses generated per prompt."""
        return 1 if self.method == "sample" else self.num_samples * self.num_iterations
