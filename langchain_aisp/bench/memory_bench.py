"""``langchain-aisp-bench memory``: does a memory learned across calls help later calls on other prompts?

The held-out protocol of issue 27, per (reward, seed) *cell*:

1. **Disjoint prompts.** The memory learns only from the learning prompts (by default the 48 fresh prompts
   of ``bench/data/learn_prompts.jsonl``); it is tested only on the test prompts (by default the 24 shipped
   prompts the design screen never saw: every shipped prompt whose index is not a multiple of 3).
2. **Learning as deployed.** One memory answers a stream of learning calls, one prompt per call, cycling
   through the learning prompts, each call the chat model's default method with the memory on (Best-of-N,
   ``num_samples`` rows, the chat temperature): its own rows teach it, its self-check moves its level.
3. **The learning curve.** After 0, 8, 16, 32 and 64 learning calls (``curve``) a frozen copy answers the test
   prompts (``warm``: the default method with the memory, same samples). The first ``own`` rows of a warm call
   are the model's own and use the same seeds as the cold baseline: warm and cold share their token-sampling
   uniforms row by row, so their difference is paired sample by sample.
4. **Baselines** on the same test prompts and seeds: cold Best-of-``4 x num_samples`` at the chat temperature,
   whose first ``num_samples`` rows are the cold default call (``cold-8`` with 8 samples; ``cold-32`` for the
   32-sample reference).

Per test prompt the record keeps the best reward, the chosen answer, the base model's log-likelihood per token of
it (``bench/quality.py``), its diversity (distinct n-grams within the answer), its coherence (MiniLM prompt-answer
cosine), and for warm calls the memory's level, strength and estimated KL, and the measured per-token KL of the
learned rows' proposal along their own answers. ``results.json`` is rewritten after every step and ``--resume``
continues a run. The summary (``memory_report.py``) reports every figure as mean ± SE clustered by prompt.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from langchain_aisp.bench import text_stats
from langchain_aisp.bench.prompts import BenchPrompt, encode_prompts, load_prompts
from langchain_aisp.bench.quality import answer_logliks, shift_kl
from langchain_aisp.bench.runner import _now, load_results, machine_info, prompts_digest, write_json_atomic
from langchain_aisp.bench.scorers import TextEmbedder, engine_score
from langchain_aisp.engine.aisp import PromptResult, run
from langchain_aisp.engine.config import DEFAULT_CHAT_TEMPERATURE, AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.memory import ControlMemory, run_with_memory
from langchain_aisp.rewards import Reward

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "memory-2"
DEFAULT_CURVE = (0, 8, 16, 32, 64)
EVAL_SEED = 5_000
LEARN_SEED = 90_000


def learn_prompts_path() -> Path:
    """The shipped learning prompts (``bench/data/learn_prompts.jsonl``), disjoint from the shipped test set."""
    return Path(str(resources.files("langchain_aisp.bench") / "data" / "learn_prompts.jsonl"))


def default_split() -> tuple[list[BenchPrompt], list[BenchPrompt]]:
    """(learning, test): the 48 fresh learning prompts, and the 24 shipped prompts the design screen did not test."""
    shipped = load_prompts()
    return load_prompts(learn_prompts_path()), [p for i, p in enumerate(shipped) if i % 3]


@dataclass(frozen=True)
class MemoryBenchConfig:
    """Everything a memory benchmark varies."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_tokens: int = 24
    temperature: float = DEFAULT_CHAT_TEMPERATURE
    num_samples: int = 8
    """Samples of a warm call and of the cold default call (the reference has four times as many)."""
    curve: tuple[int, ...] = DEFAULT_CURVE
    """Learning calls after which the frozen memory answers the test prompts."""
    memory: tuple[tuple[str, Any], ...] = ()
    """``ControlMemory`` settings (name, value); () is the default memory."""
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if not self.curve or any(c < 0 for c in self.curve):
            raise ValueError(f"curve must list learning-call counts >= 0, got {self.curve}")
        self.new_memory()  # validates the settings
        self.sampling()

    def new_memory(self) -> ControlMemory:
        return ControlMemory(**dict(self.memory))

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature)

    def params(self, num_samples: int) -> AISPParams:
        return AISPParams(method="bon", num_samples=num_samples, num_iterations=1)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["memory"] = dict(self.memory)
        return data


def _choose(result: PromptResult, rows: slice) -> tuple[float, list[int], str]:
    rewards = result.rewards[0][rows]
    best = max(range(len(rewards)), key=rewards.__getitem__)
    start = rows.start or 0
    return rewards[best], result.sample_token_ids[0][start + best], result.texts[0][start + best]


class _Cell:
    """One (reward, seed): the cold baseline, the learning stream and its curve."""

    def __init__(
        self,
        lm: CausalLM,
        reward_name: str,
        reward: Reward,
        seed: int,
        learn: Sequence[BenchPrompt],
        test: Sequence[BenchPrompt],
        config: MemoryBenchConfig,
        embedder: TextEmbedder | None,
    ) -> None:
        self.lm, self.reward_name, self.seed, self.config, self.embedder = lm, reward_name, seed, config, embedder
        self.learn, self.test = list(learn), list(test)
        self.learn_ids, self.test_ids = encode_prompts(lm, learn), encode_prompts(lm, test)
        self.learn_score = engine_score(reward, [p.conversation() for p in learn], reward_name)
        self.test_score = engine_score(reward, [p.conversation() for p in test], reward_name)
        self.eval_seeds = [EVAL_SEED + 1_000 * seed + j for j in range(len(test))]

    def _quality(self, chosen: Sequence[tuple[float, list[int], str]]) -> dict[str, Any]:
        texts = [c[2] for c in chosen]
        coherence = (
            self.embedder.cosine([p.user_text for p in self.test], texts)
            if self.embedder is not None
            else [math.nan] * len(texts)
        )
        return {
            "best": [c[0] for c in chosen],
            "texts": texts,
            "loglik": answer_logliks(self.lm, self.test_ids, [c[1] for c in chosen]),
            "diversity": [text_stats.diversity([t]) for t in texts],
            "coherence": coherence,
        }

    def baseline(self) -> dict[str, Any]:
        """Cold Best-of-(4 n) at the chat temperature; its first n rows are the cold default call."""
        n = self.config.num_samples
        start = time.perf_counter()
        results = run(self.lm, self.test_ids, self.test_score, self.config.params(4 * n), self.config.sampling(),
                      seed=self.eval_seeds, max_batch_size=self.config.max_batch_size)  # fmt: skip
        wall = time.perf_counter() - start
        return {
            f"cold-{n}": self._quality([_choose(r, slice(0, n)) for r in results]),
            f"cold-{4 * n}": {**self._quality([_choose(r, slice(0, 4 * n)) for r in results]), "wall_s": wall},
        }

    def warm(self, memory: ControlMemory) -> dict[str, Any]:
        """The frozen memory answers the test prompts with the default method and ``num_samples`` samples."""
        frozen = memory.copy()
        frozen.learning = False
        start = time.perf_counter()
        results = run_with_memory(frozen, self.lm, self.test_ids, self.test_score, self.config.params(
            self.config.num_samples), self.config.sampling(), reward=self.reward_name, seed=self.eval_seeds,
            max_batch_size=self.config.max_batch_size)  # fmt: skip
        wall = time.perf_counter() - start
        record: dict[str, Any] = {**self._quality([_choose(r, slice(None)) for r in results]), "wall_s": wall}
        info = results[0].memory or {}
        record["memory"] = {**info, **frozen.stats()}
        record["call"] = info  # how the call sampled: its own strength (nats), level, KL estimate
        unit = frozen.unit_shift(self.lm)
        own = int(info.get("own_rows", self.config.num_samples))
        if unit is not None and info.get("strength", 0.0) > 0:
            shift = float(info["strength"]) * unit
            contexts = [ids for ids in self.test_ids for _ in range(self.config.num_samples - own)]
            answers = [a for r in results for a in r.sample_token_ids[0][own:]]
            record["kl_measured"] = text_stats.mean(
                shift_kl(self.lm, contexts, answers, shift, self.config.temperature)
            )
        record["learned_mean"] = [text_stats.mean(r.rewards[0][own:]) for r in results]
        record["own_mean"] = [text_stats.mean(r.rewards[0][:own]) for r in results]
        return record

    def learning_step(self, memory: ControlMemory, call: int) -> dict[str, Any]:
        """One learning call (one prompt) with the memory on, as deployed."""
        j = call % len(self.learn)

        def score(indices: Sequence[int], responses: Sequence[str]) -> Sequence[float]:
            return self.learn_score([j] * len(indices), responses)

        score.name = self.reward_name  # type: ignore[attr-defined]
        (result,) = run_with_memory(memory, self.lm, [self.learn_ids[j]], score, self.config.params(
            self.config.num_samples), self.config.sampling(), reward=self.reward_name,
            seed=LEARN_SEED + 10_000 * self.seed + call)  # fmt: skip
        return {"prompt": self.learn[j].id, "best": result.reward, "memory": result.memory, "level": memory.level}


def load_memory_results(out_dir: str | Path) -> dict[str, Any]:
    """Read a memory benchmark's ``results.json`` (refuses other benchmarks' results)."""
    return load_results(out_dir, RESULTS_FORMAT)


def _start(
    path: Path, fresh: dict[str, Any], config: MemoryBenchConfig, resume: bool, overwrite: bool
) -> dict[str, Any]:
    if path.exists() and resume:
        saved = load_memory_results(path.parent)
        now = json.loads(json.dumps(config.to_json()))
        problems = [
            f"{k}: saved {saved['config'].get(k)!r}, now {now.get(k)!r}"
            for k in sorted(set(now) | set(saved["config"]))
            if k not in ("seeds", "curve") and saved["config"].get(k) != now.get(k)
        ]
        problems += [
            f"{k}: saved {saved['meta'].get(k)!r}, now {fresh['meta'][k]!r}"
            for k in ("model", "learn_digest", "test_digest")
            if saved["meta"].get(k) != fresh["meta"][k]
        ]
        if problems:
            raise ValueError(
                f"cannot resume {path}: the run's settings differ ({'; '.join(problems)}); "
                "use the same settings, another --out or --overwrite (seeds and curve points may be added)"
            )
        saved["config"] = fresh["config"]
        return saved
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: add --resume to continue it or --overwrite to replace it")
    return fresh


def run_memory_benchmark(
    lm: CausalLM,
    learn: Sequence[BenchPrompt],
    test: Sequence[BenchPrompt],
    rewards: Mapping[str, Reward],
    config: MemoryBenchConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    embedder: TextEmbedder | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every (reward, seed) cell; ``results.json`` in ``out_dir`` is rewritten after each step."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    overlap = {p.user_text for p in learn} & {p.user_text for p in test}
    if overlap:
        raise ValueError(f"learning and test prompts must be disjoint; both hold {sorted(overlap)[:3]}")
    if not learn or not test:
        raise ValueError(f"the memory benchmark needs learning and test prompts, got {len(learn)} and {len(test)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    fresh: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "meta": {
            "model": lm.name,
            "learn_digest": prompts_digest(learn),
            "test_digest": prompts_digest(test),
            "machine": machine_info(lm),
            "started_at": _now(),
        },
        "config": config.to_json(),
        "learn_ids": [p.id for p in learn],
        "test_ids": [p.id for p in test],
        "cells": {},
    }
    results = _start(path, fresh, config, resume, overwrite)
    for reward_name, reward in rewards.items():
        for seed in config.seeds:
            key = f"{reward_name}|s{seed}"
            data = results["cells"].setdefault(key, {"reward": reward_name, "seed": seed, "curve": {}, "calls": []})
            cell = _Cell(lm, reward_name, reward, seed, learn, test, config, embedder)
            if "baseline" not in data:
                data["baseline"] = cell.baseline()
                write_json_atomic(path, results)
            _learn(cell, data, config, out / f"memory-{reward_name}-s{seed}.safetensors", say)
            write_json_atomic(path, results)
            if embedder is not None:
                embedder.forget([p.user_text for p in (*learn, *test)])
    from langchain_aisp.bench.memory_report import write_memory_report

    write_memory_report(results, out, log=say)
    return results


def _learn(cell: _Cell, data: dict[str, Any], config: MemoryBenchConfig, profile: Path, say: Callable) -> None:
    """The learning stream with its curve; resumes from the saved profile and calls."""
    points = sorted(set(config.curve))
    done = len(data["calls"])
    memory = ControlMemory.load(profile) if done and profile.exists() else config.new_memory()
    if done and not profile.exists():  # nothing was learned yet (no profile): replay from the start
        data["calls"], done = [], 0
        data["curve"] = {k: v for k, v in data["curve"].items() if k == "0"}
    for call in range(done, points[-1] + 1):
        if call in points and str(call) not in data["curve"]:
            record = cell.warm(memory)
            data["curve"][str(call)] = record
            cold = data["baseline"][f"cold-{config.num_samples}"]["best"]
            gain = text_stats.mean([w - c for w, c in zip(record["best"], cold, strict=True)])
            say(f"  {cell.reward_name} s{cell.seed}: {call} learning calls -> warm best "
                f"{text_stats.mean(record['best']):.3f} ({gain:+.3f} vs cold), level {memory.level:.3f}")  # fmt: skip
        if call == points[-1]:
            break
        data["calls"].append(cell.learning_step(memory, call))
        if memory.updates:
            memory.save(profile)  # after every call: a resumed run goes on from exactly here


__all__ = [
    "DEFAULT_CURVE",
    "MemoryBenchConfig",
    "default_split",
    "learn_prompts_path",
    "load_memory_results",
    "run_memory_benchmark",
]
