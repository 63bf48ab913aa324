"""The memory benchmark (``langchain-aisp-bench memory``) end to end on the tiny random Llama: nothing is timed."""

from __future__ import annotations

import json

import pytest

from langchain_aisp.bench.memory_bench import (
    EvalMethod,
    MemoryBenchConfig,
    load_memory_results,
    run_memory_benchmark,
    split_prompts,
)
from langchain_aisp.bench.prompts import BenchPrompt
from langchain_aisp.bench.runner import Split
from langchain_aisp.engine.memory import ControlMemory
from langchain_aisp.rewards import FunctionReward

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PROMPTS = [BenchPrompt(str(i), text) for i, text in enumerate(["Say hi.", "Name a fruit.", "Count to 3.", "Be nice."])]


def _reward(calls: list[str]) -> FunctionReward:
    def length(prompt: str, response: str) -> float:
        calls.append(response)
        return float(len(response))

    return FunctionReward(length)


def _config(**overrides):
    base = {
        "seeds": (0,),
        "max_tokens": 3,
        "learn_split": Split(2, 2),
        "learn_batch": 1,
        "curve": (0, 1, 2),
        "curve_method": "warm-2x1",
        "methods": ("bon-2x1", "cold-2x1", "warm-2x1"),
        "warmup_prompts": 1,
    }
    base.update(overrides)
    return MemoryBenchConfig(**base)


def test_split_and_method_names():
    learn, held = split_prompts(PROMPTS)
    assert [p.id for p in learn] == ["0", "2"] and [p.id for p in held] == ["1", "3"]
    assert EvalMethod.parse("warm-8x1") == EvalMethod("warm", Split(8, 1))
    assert EvalMethod.parse("warm-8x1@0.75") == EvalMethod("warm", Split(8, 1), 0.75)
    assert EvalMethod.parse("warm-8x1@0.75").name == "warm-8x1@0.75"
    with pytest.raises(ValueError, match="bon-NxK, cold-NxK or warm-NxK"):
        EvalMethod.parse("hot-8x1")
    with pytest.raises(ValueError, match="bon-NxK, cold-NxK or warm-NxK"):
        EvalMethod.parse("cold-8x1@2")
    with pytest.raises(ValueError, match="must be a number"):
        EvalMethod.parse("warm-8x1@x")
    with pytest.raises(ValueError, match="NxK"):
        _config(methods=("warm-8",))


def test_memory_benchmark_end_to_end_and_resume(tiny_lm, tmp_path):
    calls: list[str] = []
    results = run_memory_benchmark(
        tiny_lm, PROMPTS, {"length": _reward(calls)}, _config(), tmp_path, log=lambda _m: None
    )
    cell = results["cells"]["length|s0"]
    learning = cell["learning"]
    assert [c["prompts"] for c in learning["calls"]] == [["0"], ["2"]]  # one update per learning call
    assert learning["calls"][0]["initial_U_norm"] == [0.0]  # the first call is cold
    assert sorted(learning["curve"], key=int) == ["0", "1", "2"]
    assert learning["curve"]["0"]["memory"]["updates"] == 0 and learning["curve"]["2"]["memory"]["updates"] == 2
    assert set(cell["eval"]) == {"bon-2x1", "cold-2x1", "warm-2x1"}
    for name, record in cell["eval"].items():
        assert [p["id"] for p in record["prompts"]] == ["1", "3"]  # evaluated on the held-out half only
        warm = name.startswith("warm")
        assert all((p["initial_U_norm"] > 0) == warm for p in record["prompts"]), name
    assert cell["memory"]["updates"] == 2  # evaluation does not teach the memory
    final = {k: v for k, v in learning["curve"]["2"].items() if k != "memory"}
    assert cell["eval"]["warm-2x1"] == final  # the last curve point is the warm evaluation, not run twice
    profile = tmp_path / "memory-length-s0.safetensors"
    assert ControlMemory.load(profile, model="tiny-llama", reward="length").updates == 2
    summary = (tmp_path / "summary.md").read_text()
    assert "| warm-2x1 | 1 |" in summary and "Learning curve" in summary and "x the pre-logit RMS" in summary
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    # resume: nothing left to do; a new method runs alone with the saved memory
    calls.clear()
    run_memory_benchmark(tiny_lm, PROMPTS, {"length": _reward(calls)}, _config(), tmp_path, resume=True,
                         log=lambda _m: None)  # fmt: skip
    assert calls == []
    more = _config(methods=("bon-2x1", "cold-2x1", "warm-2x1", "warm-1x2"))
    run_memory_benchmark(tiny_lm, PROMPTS, {"length": _reward(calls)}, more, tmp_path, resume=True, log=lambda _m: None)
    saved = load_memory_results(tmp_path)
    assert "warm-1x2" in saved["cells"]["length|s0"]["eval"] and calls
    assert saved["cells"]["length|s0"]["learning"]["calls"] == learning["calls"]  # learning was not redone
    with pytest.raises(FileExistsError, match="resume"):
        run_memory_benchmark(tiny_lm, PROMPTS, {"length": _reward(calls)}, _config(), tmp_path)
    with pytest.raises(ValueError, match="cannot resume"):
        run_memory_benchmark(tiny_lm, PROMPTS, {"length": _reward(calls)}, _config(strength=2.0), tmp_path, resume=True)


def test_learning_passes_and_strength_overrides(tiny_lm, tmp_path):
    methods = ("warm-2x1", "warm-2x1@0.25")
    config = _config(learn_passes=2, curve=(0, 4), methods=methods, strength=0.5, max_rms=10.0)  # no cap: tiny head
    results = run_memory_benchmark(tiny_lm, PROMPTS, {"length": _reward([])}, config, tmp_path, log=lambda _m: None)
    cell = results["cells"]["length|s0"]
    assert [c["prompts"] for c in cell["learning"]["calls"]] == [["0"], ["2"], ["0"], ["2"]]  # two passes
    assert sorted(cell["learning"]["curve"], key=int) == ["0", "4"] and cell["memory"]["prompts"] == 4
    full = [p["initial_U_norm"] for p in cell["eval"]["warm-2x1"]["prompts"]]
    half = [p["initial_U_norm"] for p in cell["eval"]["warm-2x1@0.25"]["prompts"]]
    assert all(h == pytest.approx(f / 2, rel=1e-4) and f > 0 for f, h in zip(full, half, strict=True))


def test_memory_cli(tiny_lm, tmp_path, monkeypatch):
    from langchain_aisp.bench import cli

    (tmp_path / "rw.py").write_text("def short(prompt, response):\n    return -float(len(response))\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": p.id, "prompt": p.prompt}) for p in PROMPTS))
    monkeypatch.setattr(cli, "_load_lm", lambda args: tiny_lm)
    out = tmp_path / "out"
    argv = ["memory", "--prompts", str(prompts), "--reward", f"{tmp_path / 'rw.py'}:short", "--seeds", "1",
            "--max-tokens", "3", "--learn-split", "2x1", "--learn-batch", "2", "--curve", "none",
            "--methods", "cold-2x1,warm-2x1", "--signal", "control", "--no-coherence", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert set(load_memory_results(out)["cells"]["short|s0"]["eval"]) == {"cold-2x1", "warm-2x1"}
    (out / "summary.md").unlink()
    assert cli.main(["memory-report", "--out", str(out)]) == 0 and (out / "summary.md").exists()
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "x"), "--signal", "gradient"]) == 2
    assert cli.main([*argv[:-2], "--out", str(tmp_path / "y"), "--curve", "-1"]) == 2
