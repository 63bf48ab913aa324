"""The learning-across-calls benchmark (``langchain-aisp-bench memory``) end to end on the tiny random Llama."""

from __future__ import annotations

import json

import pytest

from langchain_aisp.bench.memory_bench import (
    MemoryBenchConfig,
    default_split,
    load_memory_results,
    run_memory_benchmark,
)
from langchain_aisp.bench.prompts import BenchPrompt, load_prompts
from langchain_aisp.engine.memory import ControlMemory
from langchain_aisp.rewards import FunctionReward

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LEARN = [BenchPrompt(f"l{i}", text) for i, text in enumerate(["Say hi.", "Count to 3.", "Be nice."])]
TEST = [BenchPrompt(f"t{i}", text) for i, text in enumerate(["Name a fruit.", "Name a city."])]


def _reward(calls: list[str]) -> FunctionReward:
    def length(prompt: str, response: str) -> float:
        calls.append(prompt)
        return float(len(response))

    return FunctionReward(length)


def _config(**overrides) -> MemoryBenchConfig:
    base = {"seeds": (0,), "max_tokens": 3, "num_samples": 4, "curve": (0, 2, 4), "memory": (("warmup_prompts", 1),)}
    return MemoryBenchConfig(**{**base, **overrides})


def test_default_split_is_disjoint_and_leaves_the_screen_prompts_out():
    learn, test = default_split()
    shipped = load_prompts()
    assert len(learn) == 48 and len(test) == 24
    assert not {p.user_text for p in learn} & {p.user_text for p in shipped}  # fresh learning prompts
    assert not {p.id for p in test} & {p.id for p in shipped[0::3]}  # the screen's test prompts are not tested


def test_memory_benchmark_end_to_end_and_resume(tiny_lm, tmp_path):
    calls: list[str] = []
    results = run_memory_benchmark(
        tiny_lm, LEARN, TEST, {"length": _reward(calls)}, _config(), tmp_path, log=lambda _m: None
    )
    cell = results["cells"]["length|s0"]
    assert set(cell["baseline"]) == {"cold-4", "cold-16"}
    assert [c["prompt"] for c in cell["calls"]] == ["l0", "l1", "l2", "l0"]  # one prompt per learning call, cycling
    assert cell["calls"][0]["memory"]["strength"] == 0.0  # the first call is cold
    assert sorted(cell["curve"], key=int) == ["0", "2", "4"]
    assert cell["curve"]["0"]["memory"]["updates"] == 0 and cell["curve"]["4"]["memory"]["updates"] == 4
    assert cell["curve"]["0"]["best"] == cell["baseline"]["cold-4"]["best"]  # cold memory: the cold call itself
    for record in (*cell["curve"].values(), *cell["baseline"].values()):
        assert len(record["best"]) == len(record["loglik"]) == len(record["texts"]) == 2  # the test prompts only
        assert all(v <= 0 for v in record["loglik"])
    test_texts = {p.user_text for p in TEST}
    learned_from = [p for p in calls if p not in test_texts]
    assert learned_from  # the learning calls scored learning prompts; the test calls only test prompts
    assert ControlMemory.load(tmp_path / "memory-length-s0.safetensors").updates == 4
    summary = (tmp_path / "summary.md").read_text()
    assert "| warm after 4 |" in summary and "| cold-16 |" in summary and "warm-4 - cold-16" in summary
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    # resume: nothing left to do; a new curve point learns on from the saved profile
    calls.clear()
    run_memory_benchmark(tiny_lm, LEARN, TEST, {"length": _reward(calls)}, _config(), tmp_path, resume=True,
                         log=lambda _m: None)  # fmt: skip
    assert calls == []
    run_memory_benchmark(tiny_lm, LEARN, TEST, {"length": _reward(calls)}, _config(curve=(0, 2, 4, 5)), tmp_path,
                         resume=True, log=lambda _m: None)  # fmt: skip
    saved = load_memory_results(tmp_path)["cells"]["length|s0"]
    assert len(saved["calls"]) == 5 and "5" in saved["curve"] and saved["calls"][:4] == cell["calls"]
    with pytest.raises(FileExistsError, match="resume"):
        run_memory_benchmark(tiny_lm, LEARN, TEST, {"length": _reward(calls)}, _config(), tmp_path)
    with pytest.raises(ValueError, match="cannot resume"):
        run_memory_benchmark(tiny_lm, LEARN, TEST, {"length": _reward(calls)}, _config(num_samples=2), tmp_path,
                             resume=True)  # fmt: skip
    with pytest.raises(ValueError, match="disjoint"):
        run_memory_benchmark(tiny_lm, LEARN, LEARN[:1], {"length": _reward(calls)}, _config(), tmp_path / "x")


def test_memory_cli(tiny_lm, tmp_path, monkeypatch):
    from langchain_aisp.bench import cli

    (tmp_path / "rw.py").write_text("def short(prompt, response):\n    return -float(len(response))\n")
    files = {}
    for name, prompts in (("learn", LEARN), ("test", TEST)):
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps({"id": p.id, "prompt": p.prompt}) for p in prompts))
    monkeypatch.setattr(cli, "_load_lm", lambda args: tiny_lm)
    out = tmp_path / "out"
    argv = ["memory", "--learn-prompts", str(files["learn"]), "--test-prompts", str(files["test"]), "--reward",
            f"{tmp_path / 'rw.py'}:short", "--seeds", "1", "--max-tokens", "3", "--samples", "2", "--curve", "0,1",
            "--set", "strength=2", "--no-coherence", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    saved = load_memory_results(out)
    assert saved["config"]["memory"] == {"strength": 2} and set(saved["cells"]["short|s0"]["curve"]) == {"0", "1"}
    (out / "summary.md").unlink()
    assert cli.main(["memory-report", "--out", str(out)]) == 0 and (out / "summary.md").exists()
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "x"), "--set", "strength=-1"]) == 2
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "y"), "--curve", "-1"]) == 2
