"""The signal screen (issue 17): the two-way variance split and the per-prompt screen on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.engine.screen import (
    DESIGNS,
    Design,
    design_controls,
    parse_design,
    pool_splits,
    screen_prompt,
    variance_split,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_split_sums_to_the_total_and_matches_a_direct_anova():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(8, 5, generator=g, dtype=torch.float64) + torch.linspace(0, 1, 8, dtype=torch.float64)[:, None]
    split = variance_split(r)
    assert split.control + split.sampling + split.residual == pytest.approx(1.0)
    grand = r.mean()
    ss_rows = 5 * ((r.mean(1) - grand) ** 2).sum()
    ss_cols = 8 * ((r.mean(0) - grand) ** 2).sum()
    resid = r - r.mean(1, keepdim=True) - r.mean(0, keepdim=True) + grand
    assert split.ss_residual == pytest.approx(float((resid**2).sum()))
    assert split.ss_control == pytest.approx(float(ss_rows))
    assert split.sampling * split.ss_total == pytest.approx(float(ss_cols))
    assert split.f_control == pytest.approx(float(ss_rows / 7) / float((resid**2).sum() / 28))
    assert (split.df_control, split.df_residual) == (7, 28)


def test_a_reward_that_depends_only_on_the_control_gets_a_large_f_and_pure_noise_does_not():
    g = torch.Generator().manual_seed(1)
    control_only = torch.arange(8, dtype=torch.float64)[:, None] + 0.01 * torch.randn(8, 4, generator=g)
    split = variance_split(control_only)
    assert split.control > 0.99 and split.f_control > 1000
    noise = [variance_split(torch.randn(8, 4, generator=g, dtype=torch.float64)) for _ in range(200)]
    pooled = pool_splits(noise)
    assert 0.5 < pooled.f_pooled < 2.0  # F(7, 21) under the null has mean ~1.1
    assert pooled.control == pytest.approx(7 / 31, abs=0.05)  # expected share df_control / df_total


def test_split_edge_cases_and_validation():
    flat = variance_split(torch.ones(3, 4))
    assert (flat.control, flat.sampling, flat.residual, flat.f_control) == (0.0, 0.0, 0.0, 0.0)
    rows_only = variance_split(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    assert rows_only.control == 1.0 and math.isinf(rows_only.f_control)
    with pytest.raises(ValueError, match=r"shape \(K >= 2, M >= 2\), got \(1, 4\)"):
        variance_split(torch.zeros(1, 4))


def test_designs_parse_and_validate():
    assert parse_design("eos@2", 0.02) == Design("eos", 2.0)
    assert parse_design("position", 0.02) == Design("position", 0.02)
    assert Design("shared", 0.5).label == "shared@0.5"
    with pytest.raises(ValueError, match=r"design must be one of .*got 'banana'"):
        parse_design("banana@1", 0.02)
    with pytest.raises(ValueError, match=r"scale must be a number in \[0, 1000.0\], got -1.0"):
        Design("eos", -1.0)
    with pytest.raises(ValueError, match=r"the scale after '@' must be a number, got 'x'"):
        parse_design("eos@x", 0.02)


@pytest.mark.parametrize("name", DESIGNS)
def test_design_controls_have_the_decoder_layout_and_scale(tiny_lm, name):
    g = torch.Generator().manual_seed(0)
    V, head = design_controls(Design(name, 0.5), tiny_lm, 6, 5, g, pilot_tokens=[3, 7, 7])
    assert V.shape[0] == 6
    z = torch.randn(6, tiny_lm.hidden_size)
    logits = head(z, V[:, 0])
    assert logits.shape == (6, tiny_lm.head_weight.shape[0]) and logits.dtype == torch.float32
    if name in ("position", "first"):
        assert V.shape[1:] == (6, tiny_lm.hidden_size) and torch.equal(V[:, -1], torch.zeros_like(V[:, -1]))
    if name == "first":
        assert V[:, 4:].abs().sum() == 0 and V[:, :4].abs().sum() > 0
    if name == "token-bias":  # only the pilot's tokens are perturbed
        assert V.shape == (6, 1, tiny_lm.head_weight.shape[0])
        assert V[0, 0].nonzero().squeeze(-1).tolist() == [3, 7]
    zero, zero_head = design_controls(Design(name, 0.0), tiny_lm, 6, 5, g, pilot_tokens=[3, 7])
    plain = zero_head(z, zero[:, 0])
    assert torch.allclose(plain, z @ tiny_lm.head_weight.T, atol=1e-5)  # scale 0 is the plain model


def test_screen_on_the_tiny_model(tiny_lm, encode):
    sampling = SamplingParams(max_tokens=8)
    designs = [Design("position", 0.0), Design("position", 3.0), Design("token-bias", 3.0), Design("eos", 0.0)]
    lengths: list[int] = []

    def by_length(texts):
        lengths.append(len(texts))
        return [float(len(t)) for t in texts]

    cells = screen_prompt(
        tiny_lm, encode("Hi"), {"length": by_length}, designs, sampling, num_controls=4, num_sampling=3, seed=5
    )
    assert [c.design for c in cells] == ["position@0", "position@3", "token-bias@3", "eos@0"]
    assert len(lengths) == 4 and all(n <= 12 for n in lengths)  # one call per design, distinct responses only
    assert lengths[0] <= 3  # scale 0: the K rows repeat the M responses
    for cell in cells:
        split = cell.splits["length"]
        assert split.control + split.sampling + split.residual == pytest.approx(1.0) or split.ss_total == 0
        assert len(cell.rewards["length"]) == 4 and len(cell.rewards["length"][0]) == 3
    zero = cells[0].rewards["length"]
    assert cells[0].splits["length"].control == 0.0  # zero noise explains nothing: each column is constant
    assert all(len(set(col)) == 1 for col in zip(*zero, strict=True))
    assert cells[3].rewards["length"] == zero  # every design at scale 0 is the same plain model
    assert cells[1].splits["length"].control > 0  # a large pre-logit control changes the responses
    again = screen_prompt(
        tiny_lm, encode("Hi"), {"length": by_length}, designs[:2], sampling, num_controls=4, num_sampling=3, seed=5
    )
    assert [c.rewards for c in again] == [c.rewards for c in cells[:2]]  # same seed, same screen


def test_screen_validates_its_sizes(tiny_lm, encode):
    with pytest.raises(ValueError, match="num_controls must be an integer >= 2, got 1"):
        screen_prompt(tiny_lm, encode("Hi"), {}, [], SamplingParams(max_tokens=4), num_controls=1)


def test_identical_rows_explain_exactly_nothing_despite_rounding():
    column = torch.tensor([0.1, 0.7, 0.30000000000000004, 0.2], dtype=torch.float64)
    split = variance_split(column.expand(8, 4).clone())  # every control gives the same rewards
    assert split.control == 0.0 and split.f_control == 0.0 and split.sampling == pytest.approx(1.0)
