"""The efficiency evaluation: the expected-max estimator, the matched budget, the paired statistics, the run."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from statistics import NormalDist

import pytest
import torch

from langchain_aisp.bench import efficiency
from langchain_aisp.bench.efficiency import (
    EfficiencyConfig,
    bon_curve,
    expected_best_of,
    match_budget,
    mean_se,
    parse_method,
    run_efficiency,
    wins_ties_losses,
)
from langchain_aisp.bench.prompts import BenchPrompt, load_prompts
from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.rewards import as_reward

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("pool", [[0.3, -1.0, 2.5, 0.3, 0.9, 4.0, -0.2], [1.0, 1.0, 1.0], [5.0], [2.0, 1.0, 2.0, 0.0]])
def test_expected_best_matches_brute_force_over_all_subsets(pool):
    for n in range(1, len(pool) + 1):
        subsets = list(itertools.combinations(pool, n))
        brute = sum(max(s) for s in subsets) / len(subsets)
        assert expected_best_of(pool, n) == pytest.approx(brute, abs=1e-12)
    assert expected_best_of(pool, 1) == pytest.approx(sum(pool) / len(pool))
    assert expected_best_of(pool, len(pool)) == max(pool)


def test_expected_best_rejects_n_outside_the_pool():
    with pytest.raises(ValueError, match=r"n must be in \[1, 3\] \(the pool size\), got 4"):
        expected_best_of([1.0, 2.0, 3.0], 4)
    with pytest.raises(ValueError, match="got 0"):
        expected_best_of([1.0], 0)


def test_expected_best_of_a_large_pool_is_monotone_in_n():
    rewards = torch.randn(128, generator=torch.Generator().manual_seed(0)).tolist()
    curve = bon_curve(rewards, range(1, 129))
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(curve))
    assert curve[-1] == max(rewards)


def test_match_budget_interpolates_on_log_n():
    ns, curve = [8, 16, 32, 64], [0.5, 0.6, 0.7, 0.8]
    assert match_budget(ns, curve, 0.6) == pytest.approx(16)
    assert match_budget(ns, curve, 0.65) == pytest.approx(math.sqrt(16 * 32))  # halfway in log N
    assert match_budget(ns, curve, 0.575) == pytest.approx(2 ** (3 + 0.75))
    assert match_budget(ns, curve, 0.1) == 8  # at or below the first point: the smallest N
    assert math.isinf(match_budget(ns, curve, 0.81))  # above BoN at the largest N
    assert match_budget([1, 2, 4], [0.5, 0.5, 0.9], 0.5) == 1  # a flat start matches the smallest N
    with pytest.raises(ValueError, match="equally long"):
        match_budget([1, 2], [0.5], 0.5)


def test_paired_statistics():
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(mean_se([1.0])[1])
    assert wins_ties_losses([0.1, 0.0, -0.2, 1e-12, 0.3]) == (2, 2, 1)


def test_clustered_se_equals_the_se_of_cluster_means_with_equal_clusters():
    values = [1.0, 1.2, 3.0, 3.4, 2.0, 1.6]  # three prompts x two seeds
    prompts = ["a", "a", "b", "b", "c", "c"]
    means = [1.1, 3.2, 1.8]
    mean, se = mean_se(values, prompts)
    assert mean == pytest.approx(sum(values) / 6)
    assert se == pytest.approx(mean_se(means)[1])  # std of the cluster means / sqrt(3)
    assert mean_se(values, list(range(6))) == pytest.approx(mean_se(values))  # one value per cluster: plain SE
    assert math.isnan(mean_se(values, ["a"] * 6)[1])  # one cluster: no error estimate
    with pytest.raises(ValueError, match="equally long"):
        mean_se(values, prompts[:3])


def test_clustered_se_matches_the_spread_of_the_mean_when_seeds_share_the_prompt():
    """Prompt effects shared by every seed of a prompt: the plain SE understates the spread of the mean over
    repeated experiments, the clustered one does not."""
    generator = torch.Generator().manual_seed(0)
    prompts, seeds = 24, 3
    labels = [p for p in range(prompts) for _ in range(seeds)]
    means, plain, clustered = [], [], []
    for _ in range(400):
        effect = torch.randn(prompts, generator=generator).repeat_interleave(seeds)  # (P * S,) shared per prompt
        values = (effect + 0.5 * torch.randn(prompts * seeds, generator=generator)).tolist()
        means.append(sum(values) / len(values))
        plain.append(mean_se(values)[1])
        clustered.append(mean_se(values, labels)[1])
    spread = float(torch.tensor(means).std())  # the true SE: sqrt((1 + 0.25 / 3) / 24) = 0.2125
    assert spread == pytest.approx(0.2125, rel=0.1)
    assert sum(clustered) / 400 == pytest.approx(spread, rel=0.1)
    assert sum(plain) / 400 < 0.7 * spread  # treating the seeds as independent: far too small


def test_parse_method_specs():
    aisp = parse_method("aisp-8x4")
    assert (aisp.name, aisp.budget) == ("aisp-8x4", 32)
    assert parse_method("er-64x1@8/0.25").budget == 64
    assert parse_method("aisp-8x4+sigma=0.05+control=shared").budget == 32
    for bad, message in [
        ("aisp8x4", "expected aisp-NxK"),
        ("er-64x1", "needs @C/F"),
        ("bon-32x1@8/0.25", "only goes with er-NxK"),
        ("aisp-8x4+sigma=-1", "sigma must be a finite number > 0"),
        ("aisp-8x4+nonsense=1", "nonsense"),
        ("bon-32x1+temperature=-1", "temperature must be a finite number > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_method(bad)


def test_a_sampling_override_changes_the_sampling_of_that_method_only(tiny_lm):
    seen: list[float] = []

    def fake_run(lm, prompt_ids, score, params, sampling, **kwargs):
        seen.append(sampling.temperature)
        return []

    base = SamplingParams(max_tokens=4, temperature=1.0)
    for spec in ("bon-4x1+temperature=0.7", "bon-4x1"):
        method = parse_method(spec)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("langchain_aisp.bench.efficiency.run", fake_run)
            method.fn(tiny_lm, [[1, 2]], lambda i, t: [0.0] * len(t), base, 0, 8)
    assert seen == [0.7, 1.0]


def _gaussian_reward():
    """A reward that is a fixed standard-normal draw per distinct text: BoN's expected best keeps rising with N
    (about sqrt(2 log N)), so the matched budget is well defined (a bounded reward flattens the curve)."""

    def reward(prompt: str, response: str) -> float:
        digest = hashlib.sha256(f"{prompt}|{response}".encode()).digest()
        return NormalDist().inv_cdf((int.from_bytes(digest[:8], "big") + 0.5) / 2**64)

    return as_reward(reward)


def test_a_method_equal_to_bon_matches_bon(tiny_lm, tmp_path):
    """BoN-32 as a method (its own draws) against the pool: efficiency ~1, paired difference ~0 within its SE."""
    questions = ["Hi", "What is a cat?", "Tell me about the sea", "Why is the sky blue?"]
    prompts = [BenchPrompt(f"p{i}", q) for i, q in enumerate(questions)]
    config = EfficiencyConfig(seeds=(0, 1, 2, 3), max_tokens=6, pool=64, max_batch_size=64)
    methods = [parse_method("bon-32x1"), parse_method("er-32x1@2/0.5"), parse_method("bon-8x1")]
    logs: list[str] = []
    results = run_efficiency(
        tiny_lm, prompts, {"words": _gaussian_reward()}, methods, config, tmp_path, log=logs.append
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = summary["rewards"]["words"]["methods"]["bon-32x1"]
    diff, se = row["diff_vs_bon_budget"]  # its own budget, 32: the same reference as BoN-32 here
    assert row["diff_vs_bon32"] == pytest.approx([diff, se])
    assert row["pairs"] == 16 and row["prompts"] == 4
    assert abs(diff) <= 3 * se
    low, high = row["matched_n_95"]  # JSON null: infinite (the method beat BoN-64 in some resamples)
    high = math.inf if high is None else high
    assert low <= row["matched_n"] <= high
    assert low <= 32 <= high  # efficiency 1 is inside the interval
    assert 0.4 <= row["efficiency"] <= 2.5
    assert row["tokens_per_prompt"] == pytest.approx(32 * 6)  # the tiny model never ends early
    small = summary["rewards"]["words"]["methods"]["bon-8x1"]  # compared with BoN-8, not BoN-32
    assert small["diff_vs_bon_budget"][0] > small["diff_vs_bon32"][0]
    assert abs(small["diff_vs_bon_budget"][0]) <= 3 * small["diff_vs_bon_budget"][1]
    er = summary["rewards"]["words"]["methods"]["er-32x1@2/0.5"]
    assert er["tokens_per_prompt"] == pytest.approx(32 * 2 + 16 * 4)
    assert set(summary["rewards"]["words"]["bon"]["grid"]) == {"8", "16", "32", "64"}
    text = (tmp_path / "summary.md").read_text()
    assert "| bon-32x1 | 32 |" in text and "## words" in text
    assert len(results["cells"]) == 4 * (1 + 3)
    # resumable: a second call finds every cell done and runs nothing
    logs.clear()
    run_efficiency(tiny_lm, prompts, {"words": _gaussian_reward()}, methods, config, tmp_path, resume=True,
                   log=logs.append)  # fmt: skip
    assert logs == []
    with pytest.raises(FileExistsError):
        run_efficiency(tiny_lm, prompts, {"words": _gaussian_reward()}, methods, config, tmp_path)


def test_reference_answers_cover_the_shipped_prompts():
    prompts = load_prompts()
    reward = efficiency.resolve_eval_rewards(["reference"], prompts)["reference"]
    assert set(reward.references) == {p.user_text for p in prompts}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"no reference answer for prompts \['new'\]"):
        efficiency.resolve_eval_rewards(["reference"], [prompts[0], BenchPrompt("new", "My own prompt")])
    with pytest.raises(ValueError, match="references must map at least one prompt"):
        efficiency.resolve_eval_rewards(["reference"], [BenchPrompt("new", "My own prompt")])
