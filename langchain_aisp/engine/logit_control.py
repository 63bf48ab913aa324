"""Logit-space controls (``AISPParams.control="token-bias"`` or ``"temperature"``): AISP's update in logit space.

The paper's control is a pre-logit vector per position; the signal screen (docs/benchmarks.md,
"Signal screen") found that at the scales where it keeps the text intact it explains next to none of
the reward variance: the weights follow token-sampling noise. This control is a vocabulary bias
``u`` (vocab,) added to the logits at every position, perturbed only on the prompt's *support*, the
tokens its samples have used so far: ``v_i = u + sigma * (eps_i * support)`` with ``sigma`` in nats.
The first iteration's support is empty, so it is plain sampling (Best-of-N's first n samples); each
later iteration biases the words the earlier samples used, up or down, and the importance weights
move ``u`` towards the biases of the better responses (``importance.mean_step``, scaled by
``importance.signal_share``): a per-prompt, reward-weighted vocabulary bias. The weights and lambda are
the paper's (``importance``); only the space differs: U has shape (1, vocab) and V (n, 1, vocab).

``"temperature"`` is the same update on one number per sample: the logits are divided by ``exp(v)``,
``v ~ N(u, sigma^2)`` (sigma in log-temperature), so each prompt adapts its own sampling temperature
(its support is its single entry from the start). The screen found this knob explains the largest share
of the reward variance, mostly because high temperatures degrade the text.

Pure torch; the loop calls :func:`control_head` once per run, :meth:`LogitControl.start` once per prompt,
and :meth:`LogitControl.draw` / :meth:`LogitControl.observe` once per prompt and iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from langchain_aisp.engine.lm import CausalLM, HeadFn, head_for

LOGIT_CONTROLS: tuple[str, ...] = ("token-bias", "temperature")


def control_width(lm: CausalLM, control: str) -> int:
    """Entries of one control vector: the vocabulary for ``token-bias``, 1 for ``temperature``."""
    return int(lm.head_weight.shape[0]) if control == "token-bias" else 1


def control_head(lm: CausalLM, control: str) -> HeadFn:
    """``token-bias``: ``head(z, v) = W z + b + v``, v (A, vocab); ``temperature``: ``(W z + b) / exp(v)``, v (A, 1).

    Both in fp32; resolved once per run.
    """
    if control not in LOGIT_CONTROLS:
        raise ValueError(f"logit control must be one of {list(LOGIT_CONTROLS)}, got {control!r}")
    base = head_for(lm)

    def head_token_bias(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return base(z, torch.zeros_like(z)) + v.float()  # (A, vocab)

    def head_temperature(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return base(z, torch.zeros_like(z)) * torch.exp(-v.float())  # (A, vocab) / exp(v)

    return head_token_bias if control == "token-bias" else head_temperature


def tempered_head(lm: CausalLM) -> HeadFn:
    """A pre-logit head whose rows carry their own temperature: ``head(z, v) = (W (z + v[:, :d]) + b) / exp(v[:, d])``,
    v (A, d + 1): the pre-logit control and a log-temperature offset per row (on top of the sampling temperature).
    fp32; resolved once per run (``run(row_temperature=...)``)."""
    base = head_for(lm)
    d = lm.hidden_size

    def head(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return base(z, v[:, :d]) * torch.exp(-v[:, d:].float())  # (A, vocab)

    return head


def grow_support(support: torch.Tensor, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """``support`` (vocab,) bool with every token of ``token_ids`` (the samples' responses) set."""
    ids = [t for row in token_ids for t in row]
    if not ids:
        return support
    index = torch.tensor(ids, dtype=torch.long, device=support.device)  # (N,)
    return support.index_fill(0, index, True)  # (vocab,)


def perturb(U: torch.Tensor, eps: torch.Tensor, support: torch.Tensor, sigma: float) -> torch.Tensor:
    """``V_i = U + sigma * eps_i`` on the support, ``U`` elsewhere: U (1, vocab), eps (n, 1, vocab) -> (n, 1, vocab)."""
    return U[None] + sigma * eps * support.to(eps.dtype)  # (n, 1, vocab)


@dataclass
class LogitControl:
    """One prompt's support, where the noise goes: for ``token-bias`` the tokens its scored samples used
    (empty at first), for ``temperature`` its one entry from the start."""

    support: torch.Tensor
    """(width,) bool."""
    grows: bool
    """``token-bias``: :meth:`observe` adds the sampled tokens."""

    @classmethod
    def start(cls, lm: CausalLM, control: str, device: torch.device) -> LogitControl:
        width = control_width(lm, control)
        grows = control == "token-bias"
        return cls(torch.full((width,), not grows, dtype=torch.bool, device=device), grows)  # (width,)

    def draw(self, U: torch.Tensor, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """This iteration's controls ``V`` (n, 1, width) around the mean ``U`` (1, width)."""
        eps = torch.randn(n, *U.shape, generator=generator, device=U.device)  # (n, 1, width)
        return perturb(U, eps, self.support, sigma)  # (n, 1, width)

    def observe(self, token_ids: Sequence[Sequence[int]]) -> None:
        """``token-bias``: add the tokens of this iteration's samples to the support."""
        if self.grows:
            self.support = grow_support(self.support, token_ids)  # (vocab,)
