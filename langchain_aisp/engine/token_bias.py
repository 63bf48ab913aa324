"""The token-bias control (``AISPParams.control="token-bias"``): AISP's update in logit space.

The paper's control is a pre-logit vector per position; the signal screen (docs/benchmarks.md,
"Signal screen") found that at the scales where it keeps the text intact it explains next to none of
the reward variance: the weights follow token-sampling noise. This control is a vocabulary bias
``u`` (vocab,) added to the logits at every position, perturbed only on the prompt's *support*, the
tokens its samples have used so far: ``v_i = u + sigma * (eps_i * support)`` with ``sigma`` in nats.
The first iteration's support is empty, so it is plain sampling (Best-of-N's first n samples); each
later iteration biases the words the earlier samples used, up or down, and the importance weights
move ``u`` towards the biases of the better responses (``importance.update_mean``): a per-prompt,
reward-weighted vocabulary bias. The weights and lambda are the paper's (``importance``); only the
space differs: U has shape (1, vocab) and V (n, 1, vocab).

Pure torch; the loop calls :func:`bias_head` once per run, :meth:`TokenBias.start` once per prompt, and
:meth:`TokenBias.draw` / :meth:`TokenBias.observe` once per prompt and iteration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from langchain_aisp.engine.decode.eager import HeadFn, head_for
from langchain_aisp.engine.lm import CausalLM


def bias_head(lm: CausalLM) -> HeadFn:
    """``head(z, v) = W z + b + v``: v (A, vocab) a logit bias per row, added in fp32."""
    base = head_for(lm)

    def head_token_bias(z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return base(z, torch.zeros_like(z)) + v.float()  # (A, vocab)

    return head_token_bias


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
class TokenBias:
    """One prompt's token-bias support: the tokens its scored samples used, where the noise goes."""

    support: torch.Tensor
    """(vocab,) bool."""

    @classmethod
    def start(cls, vocab: int, device: torch.device) -> TokenBias:
        return cls(torch.zeros(vocab, dtype=torch.bool, device=device))  # (vocab,)

    def draw(self, U: torch.Tensor, n: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """This iteration's controls ``V`` (n, 1, vocab) around the mean ``U`` (1, vocab)."""
        eps = torch.randn(n, *U.shape, generator=generator, device=U.device)  # (n, 1, vocab)
        return perturb(U, eps, self.support, sigma)  # (n, 1, vocab)

    def observe(self, token_ids: Sequence[Sequence[int]]) -> None:
        """Add the tokens of this iteration's samples to the support."""
        self.support = grow_support(self.support, token_ids)  # (vocab,)
