"""Per-step logit transforms and the inverse-CDF sampler."""

from __future__ import annotations

import pytest
import torch

from langchain_aisp.engine.processors import (
    Softcap,
    Temperature,
    TopK,
    TopP,
    build_processors,
    inverse_cdf_tokens,
    sample_tokens,
)


def test_temperature_divides_and_does_not_edit_input():
    logits = torch.tensor([[1.0, 2.0, 4.0]])
    out = Temperature(2.0)(logits)
    assert out.tolist() == [[0.5, 1.0, 2.0]]
    assert logits.tolist() == [[1.0, 2.0, 4.0]]


def test_top_k_keeps_k_largest():
    out = TopK(2)(torch.tensor([[1.0, 5.0, 3.0, 2.0]]))
    assert torch.isinf(out[0, [0, 3]]).all()
    assert out[0, 1] == 5.0 and out[0, 2] == 3.0


def test_top_p_keeps_the_nucleus_and_always_the_top_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = ~torch.isinf(TopP(0.75)(logits))
    assert kept.tolist() == [[True, True, False, False]]
    assert (~torch.isinf(TopP(1e-9)(logits))).tolist() == [[True, False, False, False]]


def test_softcap_bounds_logits():
    out = Softcap(5.0)(torch.tensor([[100.0, -100.0, 0.0]]))
    assert out.abs().max() <= 5.0 and out[0, 2] == 0.0


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        (lambda: Temperature(0.0), "temperature must be a finite number > 0, got 0.0"),
        (lambda: TopK(0), "top_k must be an integer >= 1"),
        (lambda: TopP(1.5), "top_p must be in (0, 1], got 1.5"),
        (lambda: Softcap(float("inf")), "softcap must be a finite number > 0"),
    ],
)
def test_transforms_validate(factory, fragment):
    with pytest.raises(ValueError, match=None) as info:
        factory()
    assert fragment in str(info.value)


def test_build_processors_skips_identity_steps():
    assert build_processors(1.0, 0, 1.0) == ()
    steps = build_processors(0.7, 50, 0.9)
    assert [type(s).__name__ for s in steps] == ["Temperature", "TopK", "TopP"]


def test_sampler_follows_the_distribution_and_never_picks_masked_tokens():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).repeat(4000, 1)  # (B, V)
    uniforms = torch.rand(4000, generator=torch.Generator().manual_seed(1))
    tokens = sample_tokens(logits, uniforms)
    counts = torch.bincount(tokens, minlength=4)
    assert counts[1] == 0 and counts[3] == 0
    assert abs(int(counts[0]) - 2000) < 150


def test_sampler_is_a_deterministic_function_of_the_uniforms():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    u = torch.tensor([0.0, 0.5, 0.999999])
    assert torch.equal(sample_tokens(logits, u), sample_tokens(logits, u))
    # batch independence: a row's token depends on its logits and uniform only
    alone = torch.cat([sample_tokens(logits[i : i + 1], u[i : i + 1]) for i in range(3)])
    assert torch.equal(alone, sample_tokens(logits, u))
    assert torch.equal(sample_tokens(logits.flip(0), u.flip(0)), alone.flip(0))


def test_sampler_matches_the_distribution_over_a_large_vocabulary():
    g = torch.Generator().manual_seed(3)
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    logits = torch.full((1, 5000), float("-inf"))
    logits[0, [17, 4000, 123, 2, 4999]] = probs.log()
    uniforms = torch.rand(20000, generator=g)
    tokens = torch.cat([sample_tokens(logits.expand(2000, -1), chunk) for chunk in uniforms.split(2000)])
    counts = torch.bincount(tokens, minlength=5000)[[17, 4000, 123, 2, 4999]].double()
    expected = 20000 * probs.double()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.sum() == 20000  # never a masked token
    assert chi2 < 18.5  # chi-square with 4 degrees of freedom, p = 0.001


def test_a_small_logit_change_keeps_the_token_unlike_the_inverse_cdf():
    """The coupling: under the same uniforms a small change of the logits changes few tokens."""
    g = torch.Generator().manual_seed(4)
    logits = 2.0 * torch.randn(400, 1000, generator=g)
    nudged = logits + 0.05 * torch.randn(400, 1000, generator=g)
    u = torch.rand(400, generator=g)
    gumbel = (sample_tokens(logits, u) != sample_tokens(nudged, u)).double().mean()
    inverse = (inverse_cdf_tokens(logits, u) != inverse_cdf_tokens(nudged, u)).double().mean()
    assert gumbel < 0.1 and inverse > 2 * gumbel


def test_samplers_never_return_a_masked_token_with_top_k_and_top_p():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(256, 300, generator=g)
    for transform in (TopK(3), TopP(0.5)):
        masked = transform(logits)
        for fn in (sample_tokens, inverse_cdf_tokens):
            tokens = fn(masked, torch.rand(256, generator=g))
            assert torch.isfinite(masked.gather(1, tokens[:, None])).all()
