"""The AISP math on tiny synthetic tensors: weights, ESS, lambda, the masked update."""

from __future__ import annotations

import math

import pytest
import torch

from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.importance import (
    control_inner,
    effective_sample_size,
    importance_weights,
    lambda_for_ess,
    mean_step,
    signal_share,
    step_null,
)


@pytest.mark.parametrize(
    "rewards",
    [
        [1e6, -1e6, 3.0, 0.0],
        [-1e6, -1e6 + 1, -1e6 + 2, -1e6 + 3],
        [5.0, 5.0, 5.0, 5.0],
        [0.1, 0.2, 0.3, 0.4],
    ],
)
@pytest.mark.parametrize("lambda_", [1e-6, 0.1, 1.0, 1e6])
def test_weights_sum_to_one_and_are_finite(rewards, lambda_):
    r = torch.tensor(rewards, dtype=torch.float64)
    inner = torch.tensor([0.5, -0.5, 2.0, 0.0])
    w = importance_weights(r, inner, lambda_, alpha=0.9, sigma=0.3)
    assert torch.isfinite(w).all()
    assert (w >= 0).all()
    assert math.isclose(float(w.sum()), 1.0, rel_tol=0, abs_tol=1e-12)


def test_equal_rewards_and_zero_control_give_uniform_weights():
    w = importance_weights(torch.full((5,), 3.0), torch.zeros(5), 0.1, alpha=0.999, sigma=0.5)
    assert torch.allclose(w, torch.full((5,), 0.2, dtype=torch.float64))
    assert effective_sample_size(w) == pytest.approx(5.0)


def test_small_lambda_picks_the_argmax_sample_like_best_of_n():
    r = torch.tensor([0.3, 0.9, 0.1, 0.85])
    w = importance_weights(r, torch.zeros(4), 1e-4, alpha=0.999, sigma=0.1)
    assert int(w.argmax()) == 1
    assert float(w[1]) == pytest.approx(1.0)
    assert effective_sample_size(w) == pytest.approx(1.0)


def test_large_lambda_flattens_the_weights():
    r = torch.tensor([0.3, 0.9, 0.1, 0.85])
    w = importance_weights(r, torch.zeros(4), 1e6, alpha=0.999, sigma=0.1)
    assert effective_sample_size(w) == pytest.approx(4.0, rel=1e-5)


def test_control_cost_term_penalises_samples_along_u():
    # Equal rewards: only -(1 - alpha) / sigma^2 * <u, v> differs; larger inner -> smaller weight.
    w = importance_weights(torch.zeros(3), torch.tensor([0.0, 1.0, 2.0]), 1.0, alpha=0.0, sigma=1.0)
    assert w[0] > w[1] > w[2]
    assert float(w[0] / w[1]) == pytest.approx(math.e)
    # alpha = 1 switches the term off.
    w1 = importance_weights(torch.zeros(3), torch.tensor([0.0, 1.0, 2.0]), 1.0, alpha=1.0, sigma=1.0)
    assert torch.allclose(w1, torch.full((3,), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_lambda_for_ess_hits_the_target_and_is_scale_free(scale):
    r = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.4, 0.7, 0.3, 0.8], dtype=torch.float64) * scale
    inner = torch.zeros(8)
    lam = lambda_for_ess(r, inner, alpha=0.999, sigma=0.1, target=4.0)
    w = importance_weights(r, inner, lam, alpha=0.999, sigma=0.1)
    assert effective_sample_size(w) == pytest.approx(4.0, rel=1e-3)
    lam_unit = lambda_for_ess(r / scale, inner, alpha=0.999, sigma=0.1, target=4.0)
    assert lam / scale == pytest.approx(lam_unit, rel=1e-3)


def test_lambda_for_ess_with_equal_rewards_is_harmless():
    assert lambda_for_ess(torch.ones(4), torch.zeros(4), 0.999, 0.1, 2.0) == 1.0


def test_control_inner_sums_every_position():
    U = torch.ones(3, 2)  # (tau, d)
    V = torch.stack([torch.ones(3, 2), 2 * torch.ones(3, 2)])  # (n, tau, d)
    assert control_inner(U, V).tolist() == [6.0, 12.0]


@pytest.mark.parametrize("sigma", [0.038, 0.3])
def test_with_equal_rewards_the_weights_do_not_follow_sample_length(sigma):
    """Issue 17: the prior term summed over reached positions only gave short samples ~0.7 ||u_t||^2
    nats each. With equal rewards the exact ratio leaves weights uncorrelated with length."""
    generator = torch.Generator().manual_seed(0)
    n, tau, d = 512, 32, 16
    U = 0.5 * torch.randn(tau, d, generator=generator)  # (tau, d) a U after a few rounds
    V = U + sigma * torch.randn(n, tau, d, generator=generator)  # (n, tau, d)
    lengths = torch.randint(1, tau + 1, (n,), generator=generator).double()  # (n,) where each sample stopped
    w = importance_weights(torch.zeros(n), control_inner(U, V), 1.0, alpha=0.999, sigma=sigma)  # (n,)
    corr = torch.corrcoef(torch.stack([w.log(), lengths]))[0, 1]
    assert abs(float(corr)) < 0.15  # 512 samples: |r| of independent draws < 0.15 at ~3.4 SE
    # the removed form (reached positions only) does correlate: the check can fail
    reached = (torch.arange(tau)[None, :] < lengths[:, None]).double()  # (n, tau)
    masked = (torch.einsum("td,ntd->nt", U.double(), V.double()) * reached).sum(dim=1)  # (n,)
    w_masked = importance_weights(torch.zeros(n), masked, 1.0, alpha=0.999, sigma=sigma)  # (n,)
    assert float(torch.corrcoef(torch.stack([w_masked.log(), lengths]))[0, 1]) < -0.5


def test_step_is_the_weighted_move_and_a_straggler_moves_its_position_by_its_weight():
    U = torch.full((3, 2), 7.0)  # (tau, d)
    V = torch.tensor(
        [
            [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]],
            [[3.0, 3.0], [4.0, 4.0], [5.0, 5.0]],
        ]
    )  # (n=2, tau=3, d=2)
    weights = torch.tensor([0.25, 0.75])
    reached = torch.tensor([[True, True, False], [True, False, False]])  # (n, tau)
    step = mean_step(U, V, weights, reached)
    assert torch.allclose(U + step[0], torch.tensor([2.5, 2.5]))  # reached by all: 0.25*1 + 0.75*3
    # only sample 0 (weight 0.25) reached t=1: a quarter of the way to its V, not all the way (the
    # per-position renormalisation this replaces set U_1 = 2.0, the straggler's V)
    assert torch.allclose(U + step[1], torch.tensor([7.0 + 0.25 * (2.0 - 7.0)] * 2))
    assert torch.allclose(step[2], torch.zeros(2))  # nobody reached t=2: U_t unchanged
    assert torch.equal(U, torch.full((3, 2), 7.0))  # the input is not modified


def _share_of(n, tau, d, signal, seed, rounds=1):
    """The signal share after ``rounds`` rounds of the update, the reward independent of V or following it."""
    generator = torch.Generator().manual_seed(seed)
    sigma = 0.1
    start = U = torch.zeros(tau, d)
    evidence, null = torch.zeros(tau, d), 0.0
    reached = torch.ones(n, tau, dtype=torch.bool)
    for _ in range(rounds):
        V = U + sigma * torch.randn(n, tau, d, generator=generator)  # (n, tau, d)
        if signal:
            r = V[:, :, 0].sum(dim=1).double()  # (n,) the reward follows one coordinate of V
        else:
            r = torch.rand(n, generator=generator, dtype=torch.float64)  # (n,) independent of V
        inner = control_inner(U, V)
        weights = importance_weights(r, inner, lambda_for_ess(r, inner, 0.999, sigma, n / 2), 0.999, sigma)
        evidence = evidence + mean_step(U, V, weights, reached)
        null += step_null(U, V, weights, reached)
        share = signal_share(evidence, null)
        U = start + share * evidence
    return share


def test_signal_share_is_near_zero_for_a_reward_independent_of_v_and_large_with_signal():
    nulls = [_share_of(8, 16, 32, False, seed) for seed in range(20)]
    assert max(nulls) < 0.1 and sum(nulls) / len(nulls) < 0.03  # D = 512: spread ~ sqrt(2 / 512)
    strong = [_share_of(64, 4, 2, True, seed) for seed in range(5)]
    assert min(strong) > 0.5  # the reward follows V: most of the step is signal


def test_evidence_accumulates_over_rounds():
    # a direction every round agrees on grows ||S||^2 quadratically, the noise linearly: the share climbs
    weak = [_share_of(16, 8, 8, True, seed, rounds=1) for seed in range(6)]
    later = [_share_of(16, 8, 8, True, seed, rounds=8) for seed in range(6)]
    assert sum(later) / 6 > sum(weak) / 6 + 0.2
    assert max(_share_of(16, 8, 8, False, seed, rounds=8) for seed in range(6)) < 0.25


def test_signal_share_of_no_evidence_is_zero():
    assert signal_share(torch.zeros(2, 3), 0.0) == 0.0
    assert signal_share(torch.ones(2, 3), 6.0) == 0.0  # exactly what noise alone would give
    assert signal_share(torch.ones(2, 3), 1.5) == pytest.approx(0.75)
    U = torch.ones(2, 3)
    V = torch.tensor([[[2.0] * 3, [1.0] * 3], [[1.0] * 3, [1.0] * 3]])  # (n=2, tau=2, d=3)
    weights = torch.tensor([0.5, 0.5])
    # x_0 = (1,1,1 | 0,0,0) at weight 1/2: null = 1/4 * 3; reached (1, 0) for sample 1 changes nothing
    assert step_null(U, V, weights, torch.ones(2, 2, dtype=torch.bool)) == pytest.approx(0.75)


def test_importance_sampling_loop_moves_u_to_the_known_optimum():
    # r(V) = -||mean_t V_t - target||^2 has its optimum at U = target; the MPPI loop must get there.
    generator = torch.Generator().manual_seed(0)
    tau, d, n, sigma = 4, 3, 64, 0.5
    target = torch.tensor([1.0, -2.0, 0.5])
    start = U = torch.zeros(tau, d)
    evidence, null = torch.zeros(tau, d), 0.0
    reached = torch.ones(n, tau, dtype=torch.bool)
    best = -math.inf
    best_trace = []
    for _ in range(30):
        V = U + sigma * torch.randn(n, tau, d, generator=generator)  # (n, tau, d)
        r = -((V.mean(dim=1) - target) ** 2).sum(dim=1).double()  # (n,)
        inner = control_inner(U, V)
        lam = lambda_for_ess(r, inner, alpha=0.999, sigma=sigma, target=n / 4)
        weights = importance_weights(r, inner, lam, 0.999, sigma)
        evidence = evidence + mean_step(U, V, weights, reached)
        null += step_null(U, V, weights, reached)
        U = start + signal_share(evidence, null) * evidence
        best = max(best, float(r.max()))
        best_trace.append(best)
    assert torch.allclose(U.mean(dim=0), target, atol=0.25)
    assert best_trace == sorted(best_trace)
    assert best_trace[-1] > -0.05


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_samples": 0}, "num_samples must be an integer in [1, 4096], got 0"),
        ({"num_iterations": 2.5}, "num_iterations must be an integer"),
        ({"sigma": 0.0}, "sigma must be a finite number > 0, got 0.0"),
        ({"sigma": float("nan")}, "sigma must be a finite number > 0, got nan"),
        ({"lambda_": -1.0}, "lambda_ must be a finite number > 0, got -1.0"),
        ({"lambda_": float("inf")}, "lambda_ must be a finite number > 0, got inf"),
        ({"alpha": 1.5}, "alpha must be a number in [0.0, 1.0], got 1.5"),
        ({"tau": 0}, "tau must be an integer in [1, 65536], got 0"),
        ({"ess_target": 0.0}, "ess_target must be a number in (0.0, 1.0], got 0.0"),
        ({"method": "greedy"}, "method must be one of ['aisp', 'bon', 'sample'], got 'greedy'"),
    ],
)
def test_aisp_params_reject_bad_values_with_the_allowed_range(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        AISPParams(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_tokens": 0}, "max_tokens must be an integer in [1,"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
        ({"top_p": 0.0}, "top_p must be a number in (0.0, 1.0], got 0.0"),
        ({"top_p": 1.5}, "top_p must be a number in (0.0, 1.0], got 1.5"),
        ({"top_k": -1}, "top_k must be an integer in [0,"),
        ({"stop": ("",)}, "stop strings must be non-empty"),
        ({"stop": "abc"}, "stop must be a sequence of non-empty strings"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        SamplingParams(**kwargs)
    assert fragment in str(info.value)


def test_budget_counts_responses_per_prompt():
    assert AISPParams(method="aisp", num_samples=8, num_iterations=4).budget == 32
    assert AISPParams(method="bon", num_samples=8, num_iterations=4).budget == 32
    assert AISPParams(method="sample").budget == 1


def test_default_is_best_of_32_in_one_batch_and_each_method_resolves_its_own_split():
    default = AISPParams()
    assert (default.method, default.num_samples, default.num_iterations) == ("bon", 32, 1)
    aisp = AISPParams(method="aisp")  # the paper's split, not BoN's 32 x 1 (one AISP round would learn nothing)
    assert (aisp.num_samples, aisp.num_iterations, aisp.budget) == (8, 4, 32)
    sample = AISPParams(method="sample")
    assert (sample.num_samples, sample.num_iterations) == (1, 1)
    explicit = AISPParams(method="aisp", num_samples=4)  # a value given is kept; only None is resolved
    assert (explicit.num_samples, explicit.num_iterations) == (4, 4)
    with pytest.raises(ValueError, match=r"num_iterations must be an integer in \[1, 1024\], got 0"):
        AISPParams(num_iterations=0)


def test_token_direction_points_to_the_tokens_of_better_weighted_samples():
    from langchain_aisp.engine.importance import token_direction

    W = torch.eye(4)  # (V=4, d=4): token j's head row is axis j
    weights = torch.tensor([0.7, 0.1, 0.1, 0.1])
    direction = token_direction(W, [[0, 0], [1, 2], [3], [2]], weights, tau=8)
    assert int(direction.argmax()) == 0  # sample 0 used token 0 only and has the largest weight
    assert direction.pow(2).mean().sqrt() == pytest.approx(1.0)
    # tau limits the tokens considered; uniform weights give no direction at all.
    assert torch.equal(token_direction(W, [[0, 1], [1, 0]], torch.full((2,), 0.5), tau=1), torch.zeros(4))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"control": "diagonal"},
            "control must be one of ['position', 'shared', 'token-bias', 'temperature'], got 'diagonal'",
        ),
        ({"elite_fraction": 1.5}, "elite_fraction must be a number in [0.0, 1.0], got 1.5"),
        ({"token_step": -1.0}, "token_step must be a number in [0.0, 1000.0], got -1.0"),
    ],
)
def test_method_options_are_validated(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        AISPParams(**kwargs)
    assert fragment in str(info.value)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_control_survives_half_precision(dtype):
    """Issue 17: in bf16, ``z + v`` rounds a control of sigma ~ 0.04 away where |z| is large. The head
    adds ``W v`` to ``W z`` in fp32 instead; its logit shift matches the fp32 reference."""
    from types import SimpleNamespace

    from langchain_aisp.engine.lm import HeadTransform, head_for

    generator = torch.Generator().manual_seed(0)
    vocab, d = 256, 64
    W = torch.randn(vocab, d, generator=generator) / d**0.5  # (vocab, d)
    z = 2.0 * torch.randn(4, d, generator=generator)  # (A, d)
    z[:, :4] = 20.0  # outlier coordinates, as real pre-logits have
    v = 0.038 * torch.randn(4, d, generator=generator)  # (A, d)
    reference = v @ W.T  # (A, vocab) the fp32 logit shift W v
    lm = SimpleNamespace(head_weight=W.to(dtype), head_bias=None, head_transform=HeadTransform())
    head = head_for(lm)  # type: ignore[arg-type]
    shift = head(z.to(dtype), v.to(dtype)) - head(z.to(dtype), torch.zeros_like(v, dtype=dtype))  # (A, vocab)
    assert shift.dtype == torch.float32
    error = (shift - reference).norm() / reference.norm()
    assert error < 0.02, f"relative error of the logit shift {float(error):.3f}"
    # adding v to z in half precision first loses part of the shift (most of it in bf16): the check can fail
    naive = (z.to(dtype) + v.to(dtype)).float() @ W.to(dtype).float().T - z.to(dtype).float() @ W.to(dtype).float().T
    naive_error = (naive - reference).norm() / reference.norm()
    assert naive_error > (0.1 if dtype == torch.bfloat16 else 0.01) and naive_error > 3 * error


def test_the_fp32_head_adds_the_control_before_the_head():
    from types import SimpleNamespace

    from langchain_aisp.engine.lm import HeadTransform, head_for

    W, b = torch.randn(8, 4), torch.randn(8)
    z, v = torch.randn(3, 4), torch.randn(3, 4)
    head = head_for(SimpleNamespace(head_weight=W, head_bias=b, head_transform=HeadTransform()))  # type: ignore[arg-type]
    assert torch.allclose(head(z, v), (z + v) @ W.T + b, atol=1e-5)
