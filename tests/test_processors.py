"""Per-step logit transforms and the inverse-CDF sampler."""

from __future__ import annotations

import pytest
import torch

from langchain_aisp.engine.processors import Softcap, Temperature, TopK, TopP, build_processors, sample_tokens


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
    assert build_processors(1.0, 0, 1.0, None) == ()
    steps = build_processors(0.7, 50, 0.9, 30.0)
    assert [type(s).__name__ for s in steps] == ["Softcap", "Temperature", "TopK", "TopP"]


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
    # u = 0 picks the first token with positive probability; u -> 1 the last.
    assert int(sample_tokens(logits, u)[0]) == 0
    assert int(sample_tokens(logits, u)[2]) == 49
