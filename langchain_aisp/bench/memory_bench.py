"""``langchain-aisp-bench memory``: does a control memory learned on some prompts help on others?

For each (reward, seed) *cell*:

1. The prompts are split into a learning half and a held-out half (interleaved: prompts 0, 2,
   4, ... learn; 1, 3, 5, ... are held out, so every category of the shipped set is in both).
2. **Learning**: the learning prompts go, in order, through calls of ``learn_batch`` prompts each,
   every call an AISP run (``learn_split``) warm-started from the memory and folded back into it
   (:func:`langchain_aisp.engine.memory.run_with_memory`), as in production. After the number of learning
   prompts named in ``curve`` the held-out half is answered with the memory frozen
   (``curve_method``): the learning curve.
3. **Evaluation** on the held-out half with the final memory frozen: Best-of-N, cold AISP and
   warm AISP at the splits in ``methods`` (``bon-8x4``, ``cold-8x4``, ``warm-8x1``, ...). All
   evaluation runs use the same seed (shared token-sampling noise: paired comparisons).

Per method and prompt the record keeps the best reward and answer, the mean reward of the first
iteration (what the warm-started policy itself produces), diversity over all samples, coherence of
the best answer, and the warm start's norm. ``results.json`` is rewritten after each step (learning,
each evaluation method), and ``--resume`` continues where a run stopped (the learned memory is saved
as ``memory-<reward>-s<seed>.safetensors`` beside it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_aisp.bench import text_stats
from langchain_aisp.bench.prompts import BenchPrompt, encode_prompts
from langchain_aisp.bench.runner import Split, _now, load_results, machine_info, prompts_digest, write_json_atomic
from langchain_aisp.bench.scorers import TextEmbedder, engine_score
from langchain_aisp.engine.aisp import PromptResult
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.memory import ControlMemory, run_with_memory
from langchain_aisp.rewards import Reward

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "memory-1"
DEFAULT_METHODS = ("bon-8x1", "bon-8x4", "cold-4x2", "cold-8x4", "warm-8x1", "warm-4x2", "warm-8x4")
DEFAULT_CURVE = (0, 2, 4, 8, 18)
EVAL_SEED_OFFSET = 1000
"""Evaluation runs use seed + 1000: never the noise the memory learned from."""


@dataclass(frozen=True)
class EvalMethod:
    """``bon-8x4``: Best-of-N 8 x 4; ``cold-4x2``: AISP from U = 0; ``warm-8x1``: AISP from the memory;
    ``warm-8x1@0.75``: the same memory applied at another strength (learning is unchanged)."""

    kind: str
    split: Split
    strength: float | None = None

    @property
    def name(self) -> str:
        suffix = "" if self.strength is None else f"@{self.strength:g}"
        return f"{self.kind}-{self.split.label}{suffix}"

    @classmethod
    def parse(cls, text: str) -> EvalMethod:
        body, at, strength = text.strip().partition("@")
        kind, sep, split = body.partition("-")
        if not sep or kind not in ("bon", "cold", "warm") or (at and kind != "warm"):
            raise ValueError(
                f"an evaluation method is bon-NxK, cold-NxK or warm-NxK[@strength] (e.g. warm-8x1), got {text!r}"
            )
        try:
            value = float(strength) if at else None
        except ValueError as exc:
            raise ValueError(f"the strength after @ must be a number, got {text!r}") from exc
        return cls(kind, Split.parse(split), value)


@dataclass(frozen=True)
class MemoryBenchConfig:
    """Everything a memory benchmark varies."""

    seeds: tuple[int, ...] = (0, 1, 2)
    max_tokens: int = 32
    learn_split: Split = Split(8, 4)  # noqa: RUF009 - Split is frozen
    learn_batch: int = 2
    """Learning prompts per call (each call updates the memory once with all its prompts)."""
    learn_passes: int = 1
    """Passes over the learning half (each with new seeds): more data from the same prompts."""
    learn_sigma: float | None = None
    """Exploration sigma of the learning calls (None: the same ``sigma`` as evaluation)."""
    curve: tuple[int, ...] = DEFAULT_CURVE
    curve_method: str = "warm-8x1"
    methods: tuple[str, ...] = DEFAULT_METHODS
    sigma: float = 0.02
    extra_params: tuple[tuple[str, Any], ...] = ()
    """Further ``AISPParams`` fields for every AISP run (learning and evaluation), e.g. control=shared."""
    signal: str = "tokens"
    strength: float | None = None
    """None: the signal's default (tokens: a largest logit boost of 5 nats; control: 1)."""
    max_rms: float = 0.25
    warmup_prompts: int = 8
    shrink: bool = False
    window: int | None = None
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        for text in (*self.methods, self.curve_method):
            EvalMethod.parse(text)
        if self.learn_batch < 1:
            raise ValueError(f"learn_batch must be >= 1, got {self.learn_batch}")
        if self.learn_passes < 1:
            raise ValueError(f"learn_passes must be >= 1, got {self.learn_passes}")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        self.memory()  # validates signal, strength, max_rms, window
        self.params("aisp", self.learn_split, learning=True)

    def memory(self) -> ControlMemory:
        return ControlMemory(
            signal=self.signal,  # type: ignore[arg-type]
            strength=self.strength,
            max_rms=self.max_rms,
            warmup_prompts=self.warmup_prompts,
            shrink=self.shrink,
            window=self.window,
        )

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens)

    def params(self, method: str, split: Split, learning: bool = False) -> AISPParams:
        extra = dict(self.extra_params) if method == "aisp" else {}
        sigma = self.learn_sigma if learning and self.learn_sigma is not None else self.sigma
        return AISPParams(method=method, num_samples=split.n, num_iterations=split.k, sigma=sigma, **extra)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["learn_split"] = self.learn_split.label
        data["extra_params"] = {k: v for k, v in self.extra_params}
        return data


def split_prompts(prompts: Sequence[BenchPrompt]) -> tuple[list[BenchPrompt], list[BenchPrompt]]:
    """(learning, held-out): prompts 0, 2, 4, ... and 1, 3, 5, ... (every category in both halves)."""
    return list(prompts[0::2]), list(prompts[1::2])


def _record(
    results: Sequence[PromptResult],
    prompts: Sequence[BenchPrompt],
    embedder: TextEmbedder | None,
    wall_s: float,
) -> dict[str, Any]:
    coherence = (
        embedder.cosine([prompts[r.index].user_text for r in results], [r.text for r in results])
        if embedder is not None
        else [math.nan] * len(results)
    )
    per_prompt = [
        {
            "id": prompts[r.index].id,
            "best_reward": r.reward,
            "best_text": r.text,
            "best_iteration": r.best_iteration,
            "first_mean": text_stats.mean(r.rewards[0]) if r.rewards else math.nan,
            "iteration_means": text_stats.iteration_means(r.rewards),
            "diversity": text_stats.diversity([t for texts in r.texts for t in texts]),
            "coherence": coherence[i],
            "initial_U_norm": r.initial_U_norm,
            "final_U_norm": r.u_norms[-1] if r.u_norms else 0.0,
        }
        for i, r in enumerate(results)
    ]
    return {"wall_s": wall_s, "generated_tokens": sum(r.generated_tokens for r in results), "prompts": per_prompt}


def summarize(record: dict[str, Any]) -> dict[str, float]:
    """Means over prompts of one method's record."""
    rows = record["prompts"]
    return {
        key: text_stats.mean([_num(p[key]) for p in rows])
        for key in ("best_reward", "first_mean", "diversity", "coherence", "initial_U_norm")
    }


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


class _Cell:
    """One (reward, seed): learning with its curve, then the evaluation methods."""

    def __init__(
        self,
        lm: CausalLM,
        reward_name: str,
        reward: Reward,
        seed: int,
        learn: Sequence[BenchPrompt],
        held: Sequence[BenchPrompt],
        config: MemoryBenchConfig,
        embedder: TextEmbedder | None,
        say: Callable[[str], None],
    ) -> None:
        self.lm, self.reward_name, self.seed, self.config, self.embedder, self.say = (
            lm, reward_name, seed, config, embedder, say,
        )  # fmt: skip
        self.learn, self.held = list(learn), list(held)
        self.learn_ids, self.held_ids = encode_prompts(lm, learn), encode_prompts(lm, held)
        self.learn_score = engine_score(reward, [p.conversation() for p in learn], reward_name)
        self.held_score = engine_score(reward, [p.conversation() for p in held], reward_name)
        self.sampling = config.sampling()

    def evaluate(self, name: str, memory: ControlMemory | None) -> dict[str, Any]:
        method = EvalMethod.parse(name)
        engine_method = "bon" if method.kind == "bon" else "aisp"
        params = self.config.params(engine_method, method.split)
        use = memory if method.kind == "warm" else None
        if use is not None:
            use.learning = False  # evaluation never teaches the memory
            if method.strength is not None:
                use = use.copy()
                use.strength = method.strength
        start = time.perf_counter()
        results = run_with_memory(
            use,
            self.lm,
            self.held_ids,
            self.held_score,
            params,
            self.sampling,
            reward=self.reward_name,
            seed=self.seed + EVAL_SEED_OFFSET,
            max_batch_size=self.config.max_batch_size,
        )
        record = _record(results, self.held, self.embedder, time.perf_counter() - start)
        record["method"] = name
        return record

    def learning(self) -> tuple[ControlMemory, dict[str, Any]]:
        """Online learning over the learning half; the curve is measured at the requested prompt counts."""
        config = self.config
        memory = config.memory()
        curve: dict[str, Any] = {}
        total = len(self.learn) * config.learn_passes  # prompt visits
        points = sorted({min(p, total) for p in config.curve})
        calls: list[dict[str, Any]] = []
        done = 0
        call = 0
        params = config.params("aisp", config.learn_split, learning=True)
        start = time.perf_counter()
        while True:
            if done in points and str(done) not in curve:
                snapshot = _frozen_copy(memory)
                record = self.evaluate(config.curve_method, snapshot)
                record["memory"] = snapshot.stats()
                curve[str(done)] = record
                self.say(
                    f"  curve {self.reward_name} s{self.seed}: {done} learning prompts -> held-out best "
                    f"{summarize(record)['best_reward']:.3f}, first-round mean {summarize(record)['first_mean']:.3f}"
                )
            if done >= total:
                break
            stop = min(total, done + config.learn_batch, (done // len(self.learn) + 1) * len(self.learn))
            if points and any(done < p < stop for p in points):
                stop = min(p for p in points if done < p < stop)  # land exactly on a curve point
            chunk = [visit % len(self.learn) for visit in range(done, stop)]

            def score(indices: Sequence[int], responses: Sequence[str], _chunk: list[int] = chunk) -> Sequence[float]:
                return self.learn_score([_chunk[i] for i in indices], responses)

            score.name = self.reward_name  # type: ignore[attr-defined]
            results = run_with_memory(
                memory,
                self.lm,
                [self.learn_ids[j] for j in chunk],
                score,
                params,
                self.sampling,
                reward=self.reward_name,
                seed=self.seed * 100_003 + call,
                max_batch_size=config.max_batch_size,
            )
            calls.append(
                {
                    "prompts": [self.learn[j].id for j in chunk],
                    "best": [r.reward for r in results],
                    "first_mean": [text_stats.mean(r.rewards[0]) for r in results],
                    "initial_U_norm": [r.initial_U_norm for r in results],
                }
            )
            done, call = stop, call + 1
        return memory, {"calls": calls, "curve": curve, "wall_s": time.perf_counter() - start}


def _frozen_copy(memory: ControlMemory) -> ControlMemory:
    copy = memory.copy()
    copy.learning = False
    return copy


def load_memory_results(out_dir: str | Path) -> dict[str, Any]:
    """Read a memory benchmark's ``results.json`` (refuses other benchmarks' results)."""
    return load_results(out_dir, RESULTS_FORMAT)


def run_memory_benchmark(
    lm: CausalLM,
    prompts: Sequence[BenchPrompt],
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
    learn, held = split_prompts(prompts)
    if not learn or not held:
        raise ValueError(
            f"the memory benchmark needs at least 2 prompts (a learning and a held-out half), got {len(prompts)}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    fresh: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "meta": {
            "model": lm.name,
            "prelogit_rms": lm.prelogit_rms,
            "prompts_digest": prompts_digest(prompts),
            "machine": machine_info(lm),
            "started_at": _now(),
        },
        "config": config.to_json(),
        "learn_ids": [p.id for p in learn],
        "held_ids": [p.id for p in held],
        "cells": {},
    }
    if path.exists() and resume:
        saved = load_memory_results(out)
        now = json.loads(json.dumps(config.to_json()))
        defaults = json.loads(json.dumps(MemoryBenchConfig().to_json()))
        before = {**{k: v for k, v in defaults.items() if k not in saved["config"]}, **saved["config"]}  # older runs
        problems = [
            f"{k}: saved {before.get(k)!r}, now {now.get(k)!r}"
            for k in sorted(set(now) | set(before))
            if k not in ("seeds", "methods") and before.get(k) != now.get(k)
        ]
        problems += [
            f"{k}: saved {saved['meta'].get(k)!r}, now {fresh['meta'][k]!r}"
            for k in ("model", "prompts_digest")
            if saved["meta"].get(k) != fresh["meta"][k]
        ]
        if problems:
            raise ValueError(
                f"cannot resume {path}: the run's settings differ ({'; '.join(problems)}); "
                "use the same settings, another --out or --overwrite (seeds and methods may be added)"
            )
        results = saved
        results["config"] = fresh["config"]
    elif path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: add --resume to continue it or --overwrite to replace it")
    else:
        results = fresh
    for reward_name, reward in rewards.items():
        for seed in config.seeds:
            key = f"{reward_name}|s{seed}"
            cell_data = results["cells"].setdefault(key, {"reward": reward_name, "seed": seed, "eval": {}})
            cell = _Cell(lm, reward_name, reward, seed, learn, held, config, embedder, say)
            profile = out / f"memory-{reward_name}-s{seed}.safetensors"
            if "learning" in cell_data and profile.exists():
                memory = ControlMemory.load(profile, learning=False)
            else:
                say(
                    f"[{key}] learning on {len(learn)} prompts "
                    f"({config.learn_split.label}, {config.learn_batch} per call)"
                )
                memory, learning = cell.learning()
                if memory.updates:
                    memory.save(profile)
                learning["memory"] = memory.stats()
                cell_data["learning"] = learning
                write_json_atomic(path, results)
            cell_data["memory"] = memory.stats()
            final_curve = cell_data.get("learning", {}).get("curve", {}).get(str(len(learn) * config.learn_passes))
            for name in config.methods:
                if name in cell_data["eval"]:
                    continue
                if name == config.curve_method and final_curve is not None:
                    # the last curve point is this very evaluation (final memory, same seed): not run twice
                    record = {k: v for k, v in final_curve.items() if k != "memory"}
                else:
                    record = cell.evaluate(name, memory)
                cell_data["eval"][name] = record
                summary = summarize(record)
                say(
                    f"[{key}] {name}: best {summary['best_reward']:.3f}, first-round mean {summary['first_mean']:.3f}, "
                    f"diversity {summary['diversity']:.3f}, coherence {summary['coherence']:.3f} "
                    f"({record['wall_s']:.0f} s)"
                )
                results["meta"]["updated_at"] = _now()
                write_json_atomic(path, results)
            if embedder is not None:
                embedder.forget([p.user_text for p in (*learn, *held)])
    from langchain_aisp.bench.memory_report import write_memory_report

    write_memory_report(results, out, log=say)
    return results


__all__ = [
    "DEFAULT_CURVE",
    "DEFAULT_METHODS",
    "EvalMethod",
    "MemoryBenchConfig",
    "load_memory_results",
    "run_memory_benchmark",
    "split_prompts",
    "summarize",
]
