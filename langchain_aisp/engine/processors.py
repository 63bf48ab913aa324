"""Per-step logit transforms and the sampler: small, pure, validated pieces.

Each transform maps logits of shape (B, V) to new logits of the same shape and
never edits its input. :func:`build_processors` resolves the list once per run,
so the per-token loop just applies whatever it was given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LogitsTransform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Softcap:
    """``cap * tanh(logits / cap)``, for models trained with final-logit softcapping (-inf, a masked token, stays)."""

    cap: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cap) and self.cap > 0):
            raise ValueError(f"softcap must be a finite number > 0, got {self.cap}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        capped = torch.tanh(logits / self.cap) * self.cap  # (B, V)
        return capped.masked_fill(torch.isneginf(logits), float("-inf"))  # (B, V)


@dataclass(frozen=True)
class Temperature:
    """Divide logits by the temperature."""

    temperature: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature  # (B, V)


@dataclass(frozen=True)
class TopK:
    """Keep the ``k`` largest logits of each row, set the rest to -inf."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"top_k must be an integer >= 1 (0 disables it), got {self.k}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))  # (B, V)


@dataclass(frozen=True)
class TopP:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``p``."""

    p: float

    def __post_init__(self) -> None:
        if not (0.0 < self.p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.p}")

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)  # (B, V)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V)
        drop_sorted = mass_before >= self.p  # (B, V); the top token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # (B, V)
        return logits.masked_fill(drop, float("-inf"))  # (B, V)


def build_processors(temperature: float, top_k: int, top_p: float) -> tuple[LogitsTransform, ...]:
    """Resolve the sampling transforms a run needs, in the order transformers applies them (a model's own
    soft-capping is part of its head: ``engine.lm.HeadTransform``)."""
    steps: list[LogitsTransform] = []
    if temperature != 1.0:
        steps.append(Temperature(temperature))
    if top_k > 0:
        steps.append(TopK(top_k))
    if top_p < 1.0:
        steps.append(TopP(top_p))
    return tuple(steps)


def apply_processors(logits: torch.Tensor, processors: Sequence[LogitsTransform]) -> torch.Tensor:
    for transform in processors:
        logits = transform(logits)
    return logits


# Odd 32-bit multipliers of the counter hash in :func:`sample_tokens` (as signed int32: torch multiplies
# int32 with wrap-around on every device).
_HASH_ID = -1640531535  # 0x9E3779B1
_HASH_KEY = -2048144789  # 0x85EBCA6B
_HASH_MIX = -1028477387  # 0xC2B2AE35
_KEY_BITS = 24
"""A float32 uniform in [0, 1) carries 24 random bits: the sampler's key for one row and step."""


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Gumbel-max sampling from softmax(logits), its noise a hash of (pre-drawn uniform, token id).

    logits (B, V), uniforms (B,) in [0, 1) -> token ids (B,). Each row's uniform is a 24-bit key; the
    Gumbel noise of token v is a counter hash of (key, v), so it depends on nothing else: results do
    not depend on how rows are batched, the same uniforms give the same tokens, and the global RNG is
    never touched. The token is ``argmax_v(logits_v + g_v)``: a token with -inf logit (masked by a
    grammar, top-k or top-p) is never returned.

    Why Gumbel-max rather than the inverse CDF (:func:`inverse_cdf_tokens`): under the same noise a small
    change of the logits changes the argmax only when it reorders the top of ``logits + g``, so steering
    with a small control changes few tokens (the coupling that paired comparisons need). The inverse
    CDF in vocabulary-id order changed about a quarter of the tokens at a control of 1% of the
    pre-logit RMS (docs/benchmarks.md, "Signal screen").
    """
    gumbel = gumbel_noise(uniforms, logits.shape[-1])  # (B, V)
    return torch.argmax(gumbel.add_(logits.float()), dim=-1)  # (B,)


def gumbel_noise(uniforms: torch.Tensor, vocab: int) -> torch.Tensor:
    """The Gumbel noise :func:`sample_tokens` adds: uniforms (B,) in [0, 1) -> (B, vocab) float32, on their device.

    A counter hash of (the uniform's 24-bit key, token id), two xorshift-multiply rounds in int32.
    """
    keys = (uniforms.float() * float(1 << _KEY_BITS)).to(torch.int32) * _HASH_KEY  # (B,)
    ids = torch.arange(vocab, dtype=torch.int32, device=uniforms.device) * _HASH_ID  # (V,)
    x = (ids[None, :] ^ keys[:, None]) * _HASH_MIX  # (B, V) int32, wraps
    x = (x ^ ((x >> 15) & 0x1FFFF)) * _HASH_ID  # (B, V) xorshift-multiply round
    # 23 bits: (2^23 - 0.5) / 2^23 is the largest float32 below 1 (24 bits would round up to 1, so -log(-log u) = inf)
    u = ((x >> 9) & 0x7FFFFF).float().add_(0.5).mul_(1.0 / (1 << 23))  # (B, V) in (0, 1)
    return u.log_().neg_().log_().neg_()  # (B, V): -log(-log u)


def inverse_cdf_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling in vocabulary-id order: the sampler before :func:`sample_tokens`.

    logits (B, V), uniforms (B,) in [0, 1) -> token ids (B,). Kept for the coupling benchmark
    (``langchain-aisp-bench coupling``), which measures how many tokens each sampler changes under
    a small control.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # (B, V)
    cdf = torch.cumsum(probs, dim=-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1)
    # u * total can round up to total itself; keep the target below it so that a token with zero
    # probability (masked by a grammar, or by top-k/top-p) is never returned.
    below_total = torch.nextafter(total, torch.zeros_like(total))  # (B, 1)
    targets = torch.minimum(uniforms.to(cdf.dtype).unsqueeze(-1) * total, below_total)  # (B, 1)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(-1)  # (B,)
    return tokens.clamp_(max=logits.shape[-1] - 1)
