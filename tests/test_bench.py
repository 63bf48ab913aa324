"""The benchmark instrument: metrics on hand-made inputs, a tiny end-to-end run, resume, reward loading, CLI.

Every run here uses the tiny random Llama (``tiny_lm``) and a few tokens; nothing is timed.
"""

from __future__ import annotations

import csv
import json
import math
import textwrap

import pytest

from langchain_aisp.bench import text_stats
from langchain_aisp.bench.prompts import BenchPrompt, load_prompts
from langchain_aisp.bench.report import paired_best, summarize
from langchain_aisp.bench.runner import BenchConfig, Split, default_split, load_results, plan_splits, run_benchmark
from langchain_aisp.bench.scorers import load_reward, resolve_rewards
from langchain_aisp.rewards import FunctionReward, Reward

# --- metrics ----------------------------------------------------------------------------


def test_diversity_pools_ngrams_over_the_responses():
    # bigrams: ab ba ab | ab bc -> 3 distinct of 5; trigrams aba bab | abc -> 3 of 3; 4-gram abab -> 1 of 1
    assert text_stats.diversity(["a b a b", "a b c"]) == pytest.approx(3 / 5)
    # one degenerate response: 1/4 * 1/3 * 1/2
    assert text_stats.diversity(["x x x x x"]) == pytest.approx(1 / 24)
    # words are lower-cased, punctuation is a token: "Hi, hi," -> hi , hi , -> bigrams (hi ,) (, hi) (hi ,)
    assert text_stats.repetition_rate(["Hi, hi,"], 2) == pytest.approx(1 / 3)
    assert text_stats.diversity([]) == 1.0
    assert text_stats.diversity(["one"]) == 1.0  # no n-gram at all: every factor is 1


def test_win_rate_counts_ties_half():
    assert text_stats.win_rate([1, 2, 3, 7], [0, 2, 5, 1]) == pytest.approx(2.5 / 4)
    assert text_stats.win_rate([0.5], [0.5 + 1e-12]) == 0.5
    assert math.isnan(text_stats.win_rate([], []))
    with pytest.raises(ValueError, match="paired"):
        text_stats.win_rate([1.0], [1.0, 2.0])


def test_best_so_far_and_iteration_means():
    rewards = [[0.1, 0.5], [0.3, 0.2], [0.9, 0.0]]
    assert text_stats.best_so_far(rewards) == [0.5, 0.5, 0.9]
    assert text_stats.iteration_means(rewards) == pytest.approx([0.3, 0.25, 0.45])
    assert text_stats.mean_curves([[1.0, 2.0], [3.0, 4.0]]) == [2.0, 3.0]


def test_seed_mean_std_is_over_per_seed_means():
    mean, std = text_stats.seed_mean_std([[1.0, 3.0], [2.0, 4.0]])  # per-seed means 2 and 3
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(0.5))
    mean, std = text_stats.seed_mean_std([[1.0, 2.0]])
    assert mean == 1.5 and math.isnan(std)


def test_default_split_rule_and_overrides():
    labels = [default_split(n).label for n in (1, 4, 8, 16, 32, 64, 6)]
    assert labels == ["1x1", "4x1", "4x2", "4x4", "8x4", "16x4", "6x1"]
    assert Split.parse("8x4") == Split(8, 4)
    with pytest.raises(ValueError, match="NxK"):
        Split.parse("8*4")
    planned = plan_splits([8, 32], [Split(2, 4), Split(16, 2), Split(4, 8)])
    assert [s.label for s in planned] == ["2x4", "16x2", "4x8"]  # 8 and 32 overridden; 2x4 keeps its N
    assert [s.label for s in plan_splits([16], [Split(2, 2)])] == ["2x2", "4x4"]  # an override adds its budget


def test_extra_aisp_params_go_to_aisp_only():
    from langchain_aisp.bench.cli import _field_value

    config = BenchConfig(budgets=(8,), extra_params=(_field_value("tau=7"), _field_value("sigma=0.1")))
    assert (config.params("aisp", Split(4, 2)).tau, config.params("aisp", Split(4, 2)).sigma) == (7, 0.1)
    assert config.params("bon", Split(4, 2)).tau == config.tau
    assert config.fingerprint()["extra_params"] == {"tau": 7, "sigma": 0.1}
    with pytest.raises(ValueError, match="not settable"):
        BenchConfig(extra_params=(("num_samples", 3),))
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        _field_value("tau")


def _cell(seed, aisp, bon, sample=None):
    def method(name, best, n=2, k=2):
        return {
            "method": name, "n": n, "k": k, "wall_s": 2.0 if name == "aisp" else 1.0, "forward_s": 0.5,
            "reward_s": 0.25, "other_s": 1.25 if name == "aisp" else 0.25, "generated_tokens": 40,
            "peak_mem_mib": 10.0, "mem_kind": "rss",
            "prompts": [
                {"id": f"p{i}", "best_reward": b, "diversity": 1.0, "coherence": 0.5,
                 "rewards": [[b - 1, b - 2], [b, 0]]}
                for i, b in enumerate(best)
            ],
        }  # fmt: skip

    methods = {"bon": method("bon", bon), "aisp": method("aisp", aisp)}
    if sample is not None:
        methods["sample"] = method("sample", sample, 1, 1)
    return {"mode": "batched", "reward": "r", "budget": 4, "split": "2x2", "seed": seed, "status": "done",
            "methods": methods}  # fmt: skip


def test_summary_on_hand_made_cells():
    results = {
        "cells": {
            "a": _cell(0, aisp=[1.0, 2.0], bon=[0.0, 2.0], sample=[0.0, 0.0]),
            "b": _cell(1, aisp=[3.0, 1.0], bon=[4.0, 0.0], sample=[1.0, 1.0]),
            "c": {"status": "error", "error": "boom"},
        }
    }
    xs, ys = paired_best(list(results["cells"].values())[:2])
    assert xs == [1.0, 2.0, 3.0, 1.0] and ys == [0.0, 2.0, 4.0, 0.0]
    rows = {r["method"]: r for r in summarize(results)}
    assert set(rows) == {"bon", "aisp", "sample"}
    aisp = rows["aisp"]
    assert aisp["best_mean"] == pytest.approx(1.75)  # per-seed means 1.5 and 2.0
    assert aisp["best_std"] == pytest.approx(math.sqrt(0.125))
    assert aisp["win_rate_vs_bon"] == pytest.approx(2.5 / 4)  # win, tie, loss, win
    assert aisp["time_ratio_vs_bon"] == pytest.approx(2.0)
    assert aisp["other_frac"] == pytest.approx(1.25 / 2.0)
    assert aisp["overhead_vs_bon_frac"] == pytest.approx((1.25 - 0.25) / 2.0)
    assert aisp["tokens_per_s"] == pytest.approx(20.0)
    assert rows["sample"]["best_mean"] == pytest.approx(0.5)


# --- end to end on the tiny model -----------------------------------------------------------


PROMPTS = [BenchPrompt("a", "Say hello."), BenchPrompt("b", "Name a colour.", context="The sky is blue.")]


def _length_reward(calls):
    def length(prompt: str, response: str) -> float:
        calls.append(response)
        return float(len(response))

    return FunctionReward(length)


def _config(**overrides):
    base = {"budgets": (4,), "seeds": (0,), "max_tokens": 4, "warmup": False, "tau": 4}
    base.update(overrides)
    return BenchConfig(**base)


def test_end_to_end_writes_every_output(tiny_lm, tmp_path):
    calls: list[str] = []
    results = run_benchmark(
        tiny_lm,
        PROMPTS,
        {"length": _length_reward(calls)},
        _config(single=True, single_prompts=1),
        tmp_path,
        progress=False,
    )
    assert calls
    for name in ("results.json", "summary.csv", "summary.md", "best_so_far.png", "iteration_mean.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = load_results(tmp_path)
    assert set(saved["cells"]) == {"batched|length|N4|4x1|s0", "single|length|N4|4x1|s0"}
    batched = saved["cells"]["batched|length|N4|4x1|s0"]
    assert batched["status"] == "done" and set(batched["methods"]) == {"bon", "aisp", "sample"}
    for method, samples in (("bon", 4), ("aisp", 4), ("sample", 1)):
        record = batched["methods"][method]
        assert [p["id"] for p in record["prompts"]] == ["a", "b"]
        for p in record["prompts"]:
            flat = [r for it in p["rewards"] for r in it]
            assert len(flat) == samples and p["best_reward"] == max(flat) == len(p["best_text"])
            assert 0.0 <= p["diversity"] <= 1.0
        assert record["wall_s"] >= record["forward_s"] > 0 and record["generated_tokens"] > 0
    single = saved["cells"]["single|length|N4|4x1|s0"]
    assert [p["id"] for p in single["methods"]["aisp"]["prompts"]] == ["a"]
    assert single["methods"]["bon"]["n"] == 4 and "wall_s" in single["methods"]["bon"]["prompts"][0]
    # same seed, same prompt, same n x k: AISP's result in a batch equals its result alone (own generator)
    assert single["methods"]["aisp"]["prompts"][0]["rewards"] == batched["methods"]["aisp"]["prompts"][0]["rewards"]
    with open(tmp_path / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["mode"], r["method"]) for r in rows} >= {("batched", "aisp"), ("batched", "bon"), ("single", "aisp")}
    md = (tmp_path / "summary.md").read_text()
    assert "| length | 4 | 4x1 |" in md and "win rate" in md
    assert results["meta"]["failed_cells"] == 0


def test_resume_skips_finished_cells(tiny_lm, tmp_path):
    calls: list[str] = []
    reward = {"length": _length_reward(calls)}
    run_benchmark(tiny_lm, PROMPTS, reward, _config(), tmp_path, progress=False, write_report=False)
    first = load_results(tmp_path)
    assert calls
    with pytest.raises(FileExistsError, match="resume"):
        run_benchmark(tiny_lm, PROMPTS, reward, _config(), tmp_path, progress=False)
    calls.clear()
    run_benchmark(tiny_lm, PROMPTS, reward, _config(), tmp_path, resume=True, progress=False, write_report=False)
    assert calls == []  # nothing left to do
    assert load_results(tmp_path)["cells"] == first["cells"]
    run_benchmark(tiny_lm, PROMPTS, reward, _config(seeds=(0, 1)), tmp_path, resume=True, progress=False)
    assert calls  # only the new seed ran
    cells = load_results(tmp_path)["cells"]
    assert set(cells) == {"batched|length|N4|4x1|s0", "batched|length|N4|4x1|s1"}
    assert cells["batched|length|N4|4x1|s0"] == first["cells"]["batched|length|N4|4x1|s0"]
    with pytest.raises(ValueError, match="max_tokens"):
        run_benchmark(tiny_lm, PROMPTS, reward, _config(max_tokens=5), tmp_path, resume=True, progress=False)


def test_a_failing_reward_is_recorded_and_retried_on_resume(tiny_lm, tmp_path):
    def broken(prompt: str, response: str) -> float:
        raise RuntimeError("reward server down")

    results = run_benchmark(
        tiny_lm, PROMPTS, {"broken": FunctionReward(broken)}, _config(), tmp_path, progress=False, log=lambda _m: None
    )
    assert results["meta"]["failed_cells"] == 1
    cell = load_results(tmp_path)["cells"]["batched|broken|N4|4x1|s0"]
    assert cell["status"] == "error" and "reward server down" in cell["error"]
    assert "Failed cells" in (tmp_path / "summary.md").read_text()
    calls: list[str] = []
    run_benchmark(tiny_lm, PROMPTS, {"broken": _length_reward(calls)}, _config(), tmp_path, resume=True, progress=False)
    assert calls and load_results(tmp_path)["cells"]["batched|broken|N4|4x1|s0"]["status"] == "done"


# --- rewards ---------------------------------------------------------------------------------


def test_reward_from_module_callable(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            from langchain_aisp.rewards import Reward

            def politeness(prompt, response):
                return float("please" in response.lower()) + 0.1 * len(prompt)

            class Shouting(Reward):
                def score(self, conversations, responses):
                    return [float(r.isupper()) for r in responses]

            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name, reward = load_reward("my_rewards:politeness")
    assert name == "politeness" and isinstance(reward, Reward)
    convs = [p.conversation() for p in PROMPTS]
    assert reward.score(convs[:1], ["Please do."]) == pytest.approx([1.0 + 0.1 * len("Say hello.")])
    name, reward = load_reward(f"{tmp_path / 'my_rewards.py'}:Shouting")
    assert name == "Shouting" and reward.score(convs, ["HEY", "hey"]) == [1.0, 0.0]
    for spec, message in (
        ("my_rewards", "module:callable"),
        ("my_rewards:missing", "no attribute"),
        ("no_such_module_xyz:fn", "cannot import"),
        ("my_rewards:not_callable", "must be a Reward"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            load_reward(spec)
    rewards = resolve_rewards(["my_rewards:politeness", "my_rewards:politeness"])
    assert list(rewards) == ["politeness", "politeness-2"]


def test_builtin_rewards_score_in_their_ranges():
    rewards = resolve_rewards(["sentiment", "nontoxic", "relevance"])
    convs = [PROMPTS[0].conversation()] * 2
    responses = ["Hello! What a wonderful, happy day.", "You are a stupid idiot."]
    sentiment, nontoxic, relevance = (rewards[name].score(convs, responses) for name in rewards)
    assert sentiment[0] > 0.5 > sentiment[1]
    assert nontoxic[0] > 0.5 > nontoxic[1]
    assert all(-1.0 <= r <= 1.0 for r in relevance) and relevance[0] > relevance[1]


def test_shipped_prompt_set():
    prompts = load_prompts()
    assert 32 <= len(prompts) <= 40
    assert len({p.id for p in prompts}) == len(prompts)
    assert sum(p.context is not None for p in prompts) >= 3
    assert "Context:" in next(p for p in prompts if p.context).user_text


def test_load_prompts_rejects_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "hi"}\n\n{"prompt": "there"}\n')
    assert [(p.id, p.prompt) for p in load_prompts(path)] == [("1", "hi"), ("3", "there")]
    path.write_text('{"id": 1, "text": "hi"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:1: .*prompt"):
        load_prompts(path)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_runs_with_a_user_reward_and_rebuilds_the_report(tiny_lm, tmp_path, monkeypatch):
    from langchain_aisp.bench import cli

    (tmp_path / "rw.py").write_text("def short(prompt, response):\n    return -float(len(response))\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": p.id, "prompt": p.prompt}) for p in PROMPTS))
    monkeypatch.setattr(cli, "_load_lm", lambda args: tiny_lm)
    out = tmp_path / "out"
    argv = ["--prompts", str(prompts), "--reward", f"{tmp_path / 'rw.py'}:short", "--budgets", "4", "--seeds", "1",
            "--max-tokens", "3", "--tau", "3", "--no-coherence", "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert set(load_results(out)["cells"]) == {"batched|short|N4|4x1|s0"}
    assert cli.main(argv) == 2  # results exist: refuses without --resume / --overwrite
    assert cli.main([*argv, "--resume"]) == 0
    (out / "summary.md").unlink()
    assert cli.main(["report", "--out", str(out)]) == 0
    assert (out / "summary.md").exists()
    assert cli.main(["--budgets", "0", "--out", str(tmp_path / "x")]) == 2


def test_speed_functions_run_on_the_tiny_model(tiny_lm):
    from langchain_aisp.bench.speed import prefill_cost, throughput

    rows = throughput(tiny_lm, batch_sizes=(2,), tokens=3, repeats=1)
    assert rows[0]["ours"]["generated_tokens"] == rows[0]["generate"]["generated_tokens"] == 6  # exactly B x T
    result = prefill_cost(tiny_lm, prompt_tokens=64, samples=2, tokens=3)
    assert result["prompt_tokens"] >= 64 and result["ours_s"] > 0 and result["generate_s"] > 0


def test_throughput_cli_on_random_weights(tmp_path):
    from langchain_aisp.bench import cli

    out = tmp_path / "tp"
    argv = ["throughput", "--random-weights", "135M", "--device", "cpu", "--batch-sizes", "2", "--tokens", "2",
            "--repeats", "1", "--variants", "ours,ours_static", "--aisp", "--bandwidth-gbps", "100",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    data = json.loads((out / "throughput.json").read_text())
    row = data["rows"][0]
    assert data["model"] == "random-llama-135M" and row["param_bytes"] > 500e6  # 135M fp32 parameters
    assert row["limit_ms_per_step"] == pytest.approx(1000 * row["param_bytes"] / 100e9)
    assert row["ours"]["generated_tokens"] == row["ours_static"]["generated_tokens"] == 4
    assert {(c["method"], c["decoding"]) for c in data["aisp"]} == {
        ("aisp", "eager"),
        ("aisp", "static"),
        ("bon", "eager"),
        ("bon", "static"),
    }
    assert "ours static" in (out / "throughput.md").read_text()
    assert cli.main(["throughput", "--random-weights", "8B", "--model", "x", "--out", str(out)]) == 2
    assert cli.main(["throughput", "--variants", "fastest", "--random-weights", "135M", "--device", "cpu",
                     "--batch-sizes", "1", "--tokens", "1", "--out", str(out)]) == 2  # fmt: skip


def test_batched_wall_clock_and_bandwidth_helpers(tiny_lm):
    import torch

    from langchain_aisp.bench.speed import batched_wall_clock, device_bandwidth

    cells = batched_wall_clock(tiny_lm, prompts=2, tokens=2, repeats=1, splits=(("aisp", 2, 2), ("bon", 2, 2)))
    assert [(c["method"], c["num_samples"], c["num_iterations"]) for c in cells] == [("aisp", 2, 2), ("bon", 2, 2)]
    assert all(c["median_s"] > 0 and c["prompts"] == 2 for c in cells)
    assert device_bandwidth(torch.device("cpu")) == (None, "unknown for CPU (pass --bandwidth-gbps)")
    assert device_bandwidth(torch.device("cpu"), 900.0) == (900.0, "given")
    with pytest.raises(ValueError, match="bandwidth must be > 0 GB/s, got 0"):
        device_bandwidth(torch.device("cpu"), 0.0)
