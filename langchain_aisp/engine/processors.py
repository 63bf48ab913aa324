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


def build_processors(
    temperature: float, top_k: int, top_p: float, softcap: float | None
) -> tuple[LogitsTransform, ...]:
    """Resolve the transforms a run needs, in the order transformers applies them."""
    steps: list[LogitsTransform] = []
    if softcap is not None:
        steps.append(Softcap(softcap))
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


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling from softmax(logits) with pre-drawn uniforms.

    logits (B, V), uniforms (B,) in [0, 1) -> token ids (B,). Using uniforms drawn
    per prompt from its own generator keeps results independent of how rows are
    batched, and never touches the global RNG.
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
