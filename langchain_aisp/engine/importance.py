"""The importance-sampling math of AISP: small pure functions (MPPI's names, shapes in the docstrings).

Weights ``w_i = softmax_i(r_i / lambda - ((1 - alpha) / sigma^2) <U, V_i>)`` (arXiv 2510.26219, eq. for
``q*(V) / q(V | U)``), lambda chosen for a target effective sample size, and the new mean
``U_k = U_0 + c_k * S_k``: ``S_k`` the sum of the steps ``sum_i w_i (V_i - U)`` of iterations 1..k and ``c_k``
the share of it that is signal rather than the noise of the draws (:func:`signal_share`; issue 27: the
lambda rule alone moved U by about one full noise draw in 4 rounds when the reward carried no signal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def importance_weights(
    rewards: torch.Tensor, inner: torch.Tensor, lambda_: float, alpha: float, sigma: float
) -> torch.Tensor:
    """``softmax_i(r_i / lambda - ((1 - alpha) / sigma^2) * inner_i)``, computed stably.

    rewards (n,), inner (n,) = sum_t <u_t, v_i,t> -> weights (n,) summing to one.
    """
    if not lambda_ > 0:
        raise ValueError(f"lambda_ must be > 0, got {lambda_}")
    logits = rewards.double() / lambda_  # (n,)
    if sigma > 0:
        logits = logits - ((1.0 - alpha) / sigma**2) * inner.double()  # (n,)
    return torch.softmax(logits - logits.max(), dim=0)  # (n,)


def effective_sample_size(weights: torch.Tensor) -> float:
    """``1 / sum_i w_i^2``: n for uniform weights, 1 when one sample takes all."""
    return float(1.0 / weights.double().pow(2).sum())


def lambda_for_ess(rewards: torch.Tensor, inner: torch.Tensor, alpha: float, sigma: float, target: float) -> float:
    """The lambda whose weights have effective sample size ``target`` (bisection in log space).

    Scale-free: multiplying every reward by c multiplies the returned lambda by c.
    With all rewards equal any lambda gives the same weights, and 1.0 is returned.
    The 60 bisection steps run on Python floats (n values each): the same float64 arithmetic as
    :func:`importance_weights` without a tensor round trip per step (it was ~2 ms per prompt and
    iteration, a visible share of Batched AISP's time on a GPU).
    """
    r = rewards.double().tolist()
    spread = max(r) - min(r)
    if not spread > 0:
        return 1.0
    cost = [((1.0 - alpha) / sigma**2) * c for c in inner.double().tolist()] if sigma > 0 else [0.0] * len(r)

    def ess(lam: float) -> float:
        logits = [ri / lam - ci for ri, ci in zip(r, cost, strict=True)]
        top = max(logits)
        w = [math.exp(x - top) for x in logits]
        total = sum(w)
        return total * total / sum(x * x for x in w)

    lo, hi = math.log(spread * 1e-6), math.log(spread * 1e6)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if ess(math.exp(mid)) < target:
            lo = mid  # too peaked: raise lambda
        else:
            hi = mid
    return math.exp(hi)


def control_inner(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``sum_t <u_t, v_i,t>`` over every control position: U (tau, d), V (n, tau, d) -> (n,).

    The sum runs over all positions, reached or not: every sample's noise was drawn for all of
    them, and only then does the ``||u_t||^2`` part of ``<u_t, v_i,t>`` (``v = u + sigma eps``) cancel
    between samples in :func:`importance_weights`. Summing over the positions a sample reached
    left ``(1 - alpha) / sigma^2 ||u_t||^2`` nats per reached position in its log-weight: short
    samples were favoured whatever their reward (issue 17).
    """
    return torch.einsum("td,ntd->n", U.float(), V.float())  # (n,)


def mean_step(U: torch.Tensor, V: torch.Tensor, weights: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
    """The importance-weighted step ``sum_i w_i m_i,t (V_i,t - U_t)``, not renormalised per position.

    U (tau, d), V (n, tau, d), weights (n,) summing to one, reached (n, tau) -> step (tau, d). A sample
    that did not reach position t contributes no move there (its noise at t was never used), so a
    position reached only by samples of total weight m moves m times as far as the weighted mean of
    their V would take it: a straggler of small weight cannot set a position on its own (the per-position
    renormalisation this replaces moved such a position all the way to the straggler's V). With every
    position reached it is the paper's ``sum_i w_i V_i - U``.
    """
    w = weights.to(V.dtype)[:, None] * reached.to(V.dtype)  # (n, tau)
    return torch.einsum("nt,ntd->td", w, V - U[None])  # (tau, d)


def step_null(U: torch.Tensor, V: torch.Tensor, weights: torch.Tensor, reached: torch.Tensor) -> float:
    """``sum_i w_i^2 ||m_i * (V_i - U)||^2``: what ``||mean_step(...)||^2`` would be, in expectation, if the
    weights carried no information about the noise the samples used (an unbiased estimate of it).

    U (tau, d), V (n, tau, d), weights (n,), reached (n, tau). With x_i = m_i * (V_i - U) independent and
    zero-mean given the weights, E||sum_i w_i x_i||^2 = sum_i w_i^2 E||x_i||^2.
    """
    x = (V - U[None]) * reached.to(V.dtype)[:, :, None]  # (n, tau, d)
    return float((weights.double().pow(2) * x.double().pow(2).sum(dim=(1, 2))).sum())


def signal_share(evidence: torch.Tensor, null: float) -> float:
    """A positive-part James-Stein factor ``max(0, 1 - null / ||evidence||^2)`` in [0, 1].

    ``evidence`` is a sum of steps (:func:`mean_step`, any shape) and ``null`` the sum of their
    :func:`step_null`: the expected ``||evidence||^2`` if no step carried signal. A reward independent of
    the samples gives a factor near 0 (its spread is O(sqrt(2 / D)) in D dimensions); a direction the
    steps agree on grows ``||evidence||^2`` like the square of their number while the noise grows
    linearly, so the factor climbs to 1 as the evidence accumulates.
    """
    total = float(evidence.double().pow(2).sum())
    if not total > 0:
        return 0.0
    return max(0.0, 1.0 - null / total)


def token_direction(
    head_weight: torch.Tensor, token_ids: Sequence[Sequence[int]], weights: torch.Tensor, tau: int
) -> torch.Tensor:
    """``sum_i (w_i - 1/n) mean_{t<tau} W[y_i,t]``, scaled to unit RMS per coordinate (zeros if flat).

    head_weight (V, d), weights (n,) -> (d,). The pre-logit direction that raises the logits of
    the tokens the better-weighted responses used, relative to the average response.
    """
    n, d = len(token_ids), head_weight.shape[1]
    means = torch.zeros(n, d, device=head_weight.device)  # (n, d)
    for i, ids in enumerate(token_ids):
        if ids[:tau]:
            rows = torch.tensor(ids[:tau], device=head_weight.device)  # (t,)
            means[i] = head_weight.index_select(0, rows).float().mean(dim=0)  # (d,)
    advantage = weights.to(means) - 1.0 / n  # (n,)
    direction = advantage @ means  # (d,)
    rms = direction.pow(2).mean().sqrt()
    return direction / rms if rms > 0 else direction  # (d,)
