"""The benchmark loop: cells of (mode, reward, budget, split, seed), each running BoN, AISP and plain sampling.

One *cell* runs, on the same prompts, reward and seed:

* ``bon``: Best-of-N through the engine (``method="bon"``) with the same n x k shape as AISP,
  so both draw the same token-sampling random numbers (a paired comparison);
* ``aisp``: AISP with n samples per iteration and k iterations (n x k = N);
* ``sample``: one plain sample per prompt (``method="sample"``), the policy's own reward.

In ``batched`` mode all prompts go to one ``aisp.run`` call (Batched AISP: b prompts x n
samples per decoding batch). In ``single`` mode each prompt runs alone (one ``run`` per
prompt) and BoN draws its N samples in one batch (n = N, k = 1), the natural single-prompt BoN.

Each method is timed side by side in this process: wall-clock, model body time (a timing
wrapper around ``lm.body``), reward time (a wrapper around the score function), the rest,
generated tokens and peak memory. ``results.json`` is rewritten (atomically) after every
cell, so an interrupted run loses at most the cell in progress; ``resume=True`` skips the
cells already done.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import langchain_aisp.engine.config as engine_config
from langchain_aisp.bench import text_stats
from langchain_aisp.bench.cost_meters import PeakMemory, TimedScore, timed_lm
from langchain_aisp.bench.prompts import BenchPrompt, encode_prompts
from langchain_aisp.bench.scorers import TextEmbedder, engine_score
from langchain_aisp.engine.aisp import IterationEvent, PromptResult, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.rewards import Reward

RESULTS_FILE = "results.json"
RESULTS_FORMAT = 1
MODES: tuple[str, ...] = ("batched", "single")
METHOD_ORDER: tuple[str, ...] = ("bon", "aisp", "sample")

# CPU-friendly defaults of the no-argument run (about 1-1.5 h on 2 quiet cores; see docs/benchmarks.md)
DEFAULT_BUDGETS: tuple[int, ...] = (8, 16, 32)
DEFAULT_SEEDS = 2
DEFAULT_BENCH_MAX_TOKENS = 32
DEFAULT_SINGLE_PROMPTS = 4
DEFAULT_ITERATIONS = 4
"""Default split rule: k = min(4, N // 4) iterations (at least 1), n = N / k samples each."""


@dataclass(frozen=True)
class Split:
    """How a budget N is spent: n samples per iteration times k iterations."""

    n: int
    k: int

    def __post_init__(self) -> None:
        if self.n < 1 or self.k < 1:
            raise ValueError(f"a split needs n >= 1 and k >= 1, got {self.n}x{self.k}")

    @property
    def budget(self) -> int:
        return self.n * self.k

    @property
    def label(self) -> str:
        return f"{self.n}x{self.k}"

    @classmethod
    def parse(cls, text: str) -> Split:
        """``"8x4"`` -> Split(8, 4)."""
        parts = text.lower().strip().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"a split is written NxK with positive integers (e.g. 8x4), got {text!r}")
        return cls(int(parts[0]), int(parts[1]))


def default_split(budget: int) -> Split:
    """The default n x k for a budget N: k = min(4, N // 4) (>= 1), lowered until it divides N."""
    if budget < 1:
        raise ValueError(f"a budget must be >= 1 samples, got {budget}")
    k = min(DEFAULT_ITERATIONS, max(1, budget // 4))
    while budget % k:
        k -= 1
    return Split(budget // k, k)


def plan_splits(budgets: Sequence[int], overrides: Sequence[Split] = ()) -> list[Split]:
    """The splits to run: each override, plus the default split of every budget without one.

    An override whose n x k is not among ``budgets`` adds that budget. Sorted by budget,
    then by the order given.
    """
    explicit = {s.budget for s in overrides}
    planned = list(dict.fromkeys(overrides))
    planned += [default_split(b) for b in dict.fromkeys(budgets) if b not in explicit]
    return sorted(planned, key=lambda s: s.budget)


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run varies; the engine defaults come from ``langchain_aisp.engine.config``."""

    budgets: tuple[int, ...] = DEFAULT_BUDGETS
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    splits: tuple[Split, ...] = ()
    """Overrides of the default split rule (see :func:`plan_splits`)."""
    max_tokens: int = DEFAULT_BENCH_MAX_TOKENS
    temperature: float = engine_config.DEFAULT_TEMPERATURE
    top_p: float = engine_config.DEFAULT_TOP_P
    top_k: int = engine_config.DEFAULT_TOP_K
    sigma: float = engine_config.DEFAULT_SIGMA
    lambda_: float | None = engine_config.DEFAULT_LAMBDA
    ess_target: float = engine_config.DEFAULT_ESS_TARGET
    alpha: float = engine_config.DEFAULT_ALPHA
    tau: int = engine_config.DEFAULT_TAU
    max_batch_size: int = engine_config.DEFAULT_MAX_BATCH_SIZE
    extra_params: tuple[tuple[str, Any], ...] = ()
    """Further ``AISPParams`` fields for the AISP method, e.g. ``(("control", "shared"),)``."""
    batched: bool = True
    """Run the batched section (all prompts in one ``run`` call)."""
    single: bool = False
    """Also run the single-prompt section (one ``run`` per prompt)."""
    single_prompts: int = DEFAULT_SINGLE_PROMPTS
    """How many prompts (the first ones) the single section times."""
    sample: bool = True
    """Also run plain sampling (one sample per prompt) in each batched cell."""
    warmup: bool = True

    def __post_init__(self) -> None:
        if not self.budgets and not self.splits:
            raise ValueError("at least one budget is needed (budgets is empty)")
        if not self.seeds:
            raise ValueError("at least one seed is needed (seeds is empty)")
        if not (self.batched or self.single):
            raise ValueError("nothing to run: both the batched and the single section are off")
        if self.single_prompts < 1:
            raise ValueError(f"single_prompts must be >= 1, got {self.single_prompts}")
        for split in self.plan():
            self.params("aisp", split)  # validates sigma, lambda, tau, ... with the engine's messages
        self.sampling()

    def plan(self) -> list[Split]:
        return plan_splits(self.budgets, self.splits)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k
        )

    def params(self, method: str, split: Split) -> AISPParams:
        extra = dict(self.extra_params) if method == "aisp" else {}
        known = {f.name for f in dataclasses.fields(AISPParams)}
        unknown = sorted(set(extra) - known)
        fixed = sorted(set(extra) & {"method", "num_samples", "num_iterations"})
        if unknown or fixed:
            raise ValueError(
                f"extra AISP parameters {unknown or fixed} are not settable here; "
                f"allowed: {sorted(known - {'method', 'num_samples', 'num_iterations'})}"
            )
        base: dict[str, Any] = {
            "sigma": self.sigma,
            "lambda_": self.lambda_,
            "ess_target": self.ess_target,
            "alpha": self.alpha,
            "tau": self.tau,
        }
        base.update(extra)
        return AISPParams(method=method, num_samples=split.n, num_iterations=split.k, **base)  # type: ignore[arg-type]

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the saved one (budgets and seeds may grow)."""
        keys: tuple[str, ...] = ("max_tokens", "temperature", "top_p", "top_k", "sigma", "lambda_", "ess_target")
        keys = (*keys, "alpha", "tau", "max_batch_size")
        data = {k: getattr(self, k) for k in keys}
        if self.extra_params:
            data["extra_params"] = {k: v for k, v in self.extra_params}
        return data

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["splits"] = [s.label for s in self.splits]
        data["extra_params"] = {k: v for k, v in self.extra_params}
        data["planned_splits"] = [s.label for s in self.plan()]
        return data


@dataclass(frozen=True)
class Cell:
    """One unit of work, saved as soon as it finishes."""

    mode: str
    reward: str
    split: Split
    seed: int

    @property
    def key(self) -> str:
        return f"{self.mode}|{self.reward}|N{self.split.budget}|{self.split.label}|s{self.seed}"


def plan_cells(config: BenchConfig, rewards: Sequence[str]) -> list[Cell]:
    """Cells in run order: mode, reward, budget (small first), split, seed."""
    modes = [m for m, on in (("batched", config.batched), ("single", config.single)) if on]
    return [
        Cell(mode, reward, split, seed)
        for mode in modes
        for reward in rewards
        for split in config.plan()
        for seed in config.seeds
    ]


# --- measuring one method ---------------------------------------------------------------


@dataclass
class MethodRun:
    """Raw results and costs of one method in one cell."""

    method: str
    n: int
    k: int
    results: list[PromptResult]
    wall_s: float = 0.0
    forward_s: float = 0.0
    reward_s: float = 0.0
    forward_calls: int = 0
    reward_calls: int = 0
    peak_mem_mib: float = 0.0
    mem_kind: str = ""
    prompt_wall_s: list[float] = field(default_factory=list)

    @property
    def generated_tokens(self) -> int:
        return sum(r.generated_tokens for r in self.results)


def run_method(
    lm: CausalLM,
    prompt_ids: Sequence[Sequence[int]],
    score: Callable[[Sequence[int], Sequence[str]], Sequence[float]],
    params: AISPParams,
    sampling: SamplingParams,
    *,
    seed: int,
    max_batch_size: int,
    separately: bool = False,
    on_iteration: Callable[[IterationEvent], None] | None = None,
) -> MethodRun:
    """Run one method over the prompts and measure it (all prompts in one call, or one call each)."""
    timed, body_timer = timed_lm(lm)
    scorer = TimedScore(score, str(getattr(score, "name", "reward")))
    out = MethodRun(params.method, params.num_samples, params.num_iterations, [])
    memory = PeakMemory(lm.device)
    with memory:
        start = time.perf_counter()
        if separately:
            for j, ids in enumerate(prompt_ids):
                t0 = time.perf_counter()
                result = run(
                    timed,
                    [ids],
                    _shifted(scorer, j),
                    params,
                    sampling,
                    seed=seed,
                    max_batch_size=max_batch_size,
                    on_iteration=on_iteration,
                )[0]
                out.prompt_wall_s.append(time.perf_counter() - t0)
                out.results.append(dataclasses.replace(result, index=j))
        else:
            out.results = run(
                timed,
                prompt_ids,
                scorer,
                params,
                sampling,
                seed=seed,
                max_batch_size=max_batch_size,
                on_iteration=on_iteration,
            )
        out.wall_s = time.perf_counter() - start
    out.forward_s, out.forward_calls = body_timer.seconds, body_timer.calls
    out.reward_s, out.reward_calls = scorer.seconds, scorer.calls
    out.peak_mem_mib, out.mem_kind = memory.peak_mib, memory.kind
    return out


def _shifted(score: Callable[[Sequence[int], Sequence[str]], Sequence[float]], offset: int) -> Any:
    """A score function for a one-prompt ``run``: its prompt index 0 is prompt ``offset`` of the set."""

    def shifted(prompt_indices: Sequence[int], responses: Sequence[str]) -> Sequence[float]:
        return score([offset + j for j in prompt_indices], responses)

    shifted.name = getattr(score, "name", "reward")  # type: ignore[attr-defined]
    return shifted


def method_record(run_: MethodRun, prompts: Sequence[BenchPrompt], embedder: TextEmbedder | None) -> dict[str, Any]:
    """JSON-ready record of one method: costs, then per prompt the best answer and every reward."""
    other = max(0.0, run_.wall_s - run_.forward_s - run_.reward_s)
    best_texts = [r.text for r in run_.results]
    coherence = (
        embedder.cosine([prompts[r.index].user_text for r in run_.results], best_texts)
        if embedder is not None
        else [math.nan] * len(best_texts)
    )
    per_prompt = []
    for i, r in enumerate(run_.results):
        all_texts = [t for texts in r.texts for t in texts]
        entry: dict[str, Any] = {
            "id": prompts[r.index].id,
            "best_reward": r.reward,
            "best_text": r.text,
            "best_iteration": r.best_iteration,
            "finish_reason": r.finish_reason,
            "samples": r.samples,
            "generated_tokens": r.generated_tokens,
            "diversity": text_stats.diversity(all_texts),
            "coherence": coherence[i],
            "rewards": r.rewards,
            "ess": r.ess,
            "lambdas": r.lambdas,
            "u_norms": r.u_norms,
        }
        if run_.prompt_wall_s:
            entry["wall_s"] = run_.prompt_wall_s[i]
        per_prompt.append(entry)
    tokens = run_.generated_tokens
    return {
        "method": run_.method,
        "n": run_.n,
        "k": run_.k,
        "wall_s": run_.wall_s,
        "forward_s": run_.forward_s,
        "reward_s": run_.reward_s,
        "other_s": other,
        "forward_calls": run_.forward_calls,
        "reward_calls": run_.reward_calls,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / run_.wall_s if run_.wall_s > 0 else math.nan,
        "peak_mem_mib": run_.peak_mem_mib,
        "mem_kind": run_.mem_kind,
        "prompts": per_prompt,
    }


def run_cell(
    lm: CausalLM,
    cell: Cell,
    prompts: Sequence[BenchPrompt],
    prompt_ids: Sequence[Sequence[int]],
    reward: Reward,
    config: BenchConfig,
    embedder: TextEmbedder | None,
    on_iteration: Callable[[IterationEvent], None] | None = None,
) -> dict[str, Any]:
    """Run BoN, AISP (and plain sampling in batched mode) for one cell; return its JSON record.

    BoN and AISP alternate which goes first from seed to seed, so neither always pays
    for a cold cache or benefits from a warm one.
    """
    single = cell.mode == "single"
    if single:
        prompts, prompt_ids = prompts[: config.single_prompts], prompt_ids[: config.single_prompts]
    score = engine_score(reward, [p.conversation() for p in prompts], cell.reward)
    sampling = config.sampling()
    order = ["bon", "aisp"] if config.seeds.index(cell.seed) % 2 == 0 else ["aisp", "bon"]
    if config.sample and not single:
        order.append("sample")
    records: dict[str, Any] = {}
    for method in order:
        split = cell.split
        if method == "bon" and single:
            split = Split(cell.split.budget, 1)  # one batch of N: the natural single-prompt BoN
        elif method == "sample":
            split = Split(1, 1)
        run_ = run_method(
            lm,
            prompt_ids,
            score,
            config.params(method, split),
            sampling,
            seed=cell.seed,
            max_batch_size=config.max_batch_size,
            separately=single,
            on_iteration=on_iteration,
        )
        records[method] = method_record(run_, prompts, embedder)
    if embedder is not None:
        embedder.forget([p.user_text for p in prompts])
    return {
        "mode": cell.mode,
        "reward": cell.reward,
        "budget": cell.split.budget,
        "split": cell.split.label,
        "n": cell.split.n,
        "k": cell.split.k,
        "seed": cell.seed,
        "order": order,
        "status": "done",
        "finished_at": _now(),
        "methods": {m: records[m] for m in METHOD_ORDER if m in records},
    }


# --- the whole run ------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def machine_info(lm: CausalLM) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(lm.device),
        "dtype": str(lm.dtype).replace("torch.", ""),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    if lm.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(lm.device)
    return info


def prompts_digest(prompts: Sequence[BenchPrompt]) -> str:
    text = json.dumps([dataclasses.asdict(p) for p in prompts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(_jsonable(data), handle, indent=1, allow_nan=False)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    """NaN and infinities become None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def load_results(out_dir: str | Path, expected_format: int | str = RESULTS_FORMAT) -> dict[str, Any]:
    """Read ``results.json`` from a results folder, checking that it is a run of the expected benchmark."""
    path = Path(out_dir) / RESULTS_FILE
    with open(path, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    if data.get("format") != expected_format:
        raise ValueError(f"{path}: unknown results format {data.get('format')!r} (expected {expected_format!r})")
    return data


def _check_resumable(saved: dict[str, Any], fresh: dict[str, Any], path: Path) -> None:
    problems = []
    for key in ("model", "prompts_digest"):
        if saved["meta"].get(key) != fresh["meta"].get(key):
            problems.append(f"{key}: saved {saved['meta'].get(key)!r}, now {fresh['meta'].get(key)!r}")
    for key in sorted(set(fresh["fingerprint"]) | set(saved["fingerprint"])):
        before, now = saved["fingerprint"].get(key), fresh["fingerprint"].get(key)
        if before != now:
            problems.append(f"{key}: saved {before!r}, now {now!r}")
    if problems:
        raise ValueError(
            f"cannot resume {path}: the run's settings differ ({'; '.join(problems)}). "
            "Use the same settings, another --out folder, or --overwrite"
        )


def _progress(total: int, desc: str, enabled: bool, leave: bool = True, position: int = 0) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional (the bench extra installs tqdm)
        return None

    return tqdm(total=total, desc=desc, leave=leave, position=position, file=sys.stderr, dynamic_ncols=True)


def run_benchmark(
    lm: CausalLM,
    prompts: Sequence[BenchPrompt],
    rewards: Mapping[str, Reward],
    config: BenchConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    embedder: TextEmbedder | None = None,
    progress: bool = True,
    write_report: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every cell and return the results (also written to ``out_dir`` when given).

    ``rewards`` maps names to :class:`~langchain_aisp.rewards.Reward`; ``embedder`` (MiniLM)
    computes the coherence metric (None: coherence is left out). With ``out_dir``,
    ``results.json`` is rewritten after each cell and the summary files and plots at the
    end (``write_report``). An existing ``results.json`` is continued with ``resume=True``,
    replaced with ``overwrite=True``, and otherwise refused.
    """
    config = config or BenchConfig()
    if not rewards:
        raise ValueError("at least one reward is needed")
    if not prompts:
        raise ValueError("at least one prompt is needed")
    say = log or (lambda message: print(message, file=sys.stderr))
    prompt_ids = encode_prompts(lm, prompts)
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "meta": {
            "model": lm.name,
            "prompts_digest": prompts_digest(prompts),
            "machine": machine_info(lm),
            "started_at": _now(),
            "package_version": _package_version(),
        },
        "fingerprint": config.fingerprint(),
        "config": config.to_json(),
        "prompts": [
            {**dataclasses.asdict(p), "prompt_tokens": len(ids)} for p, ids in zip(prompts, prompt_ids, strict=True)
        ],
        "rewards": {name: {"class": type(r).__name__, "source": type(r).__module__} for name, r in rewards.items()},
        "cells": {},
    }
    path = Path(out_dir) / RESULTS_FILE if out_dir is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and resume:
            saved = load_results(path.parent)
            _check_resumable(saved, results, path)
            results["cells"] = {k: v for k, v in saved["cells"].items() if v.get("status") == "done"}
            results["meta"]["started_at"] = saved["meta"].get("started_at", results["meta"]["started_at"])
            results["rewards"] = {**saved.get("rewards", {}), **results["rewards"]}
        elif path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} exists: pass resume=True (--resume) to continue it or overwrite=True (--overwrite)"
            )
    cells = plan_cells(config, list(rewards))
    todo = [c for c in cells if c.key not in results["cells"]]
    if len(todo) < len(cells):
        say(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done")
    if todo and config.warmup:
        _warm_up(lm, prompt_ids, rewards, prompts[0], embedder, config)
    outer = _progress(len(todo), "cells", progress and bool(todo))
    failures = 0
    try:
        for cell in todo:
            if outer is not None:
                outer.set_postfix_str(cell.key, refresh=True)
            count = len(prompts) if cell.mode == "batched" else min(len(prompts), config.single_prompts)
            inner = _progress(_iteration_events(cell, count, config), "iterations", progress, False, 1)
            try:
                tick = None if inner is None else _ticker(inner)
                record = run_cell(
                    lm, cell, prompts, prompt_ids, rewards[cell.reward], config, embedder, on_iteration=tick
                )
            except Exception as exc:  # record and go on: one failing reward must not lose the other cells
                failures += 1
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "finished_at": _now()}
                say(f"cell {cell.key} failed: {type(exc).__name__}: {exc}")
            finally:
                if inner is not None:
                    inner.close()
            results["cells"][cell.key] = record
            results["meta"]["updated_at"] = _now()
            if path is not None:
                write_json_atomic(path, results)
            if outer is not None:
                outer.update(1)
    finally:
        if outer is not None:
            outer.close()
        if path is not None and write_report:
            from langchain_aisp.bench.report import write_report as _write_report

            _write_report(results, path.parent, log=say)
    results["meta"]["failed_cells"] = failures
    return results


def _ticker(bar: Any) -> Callable[[IterationEvent], None]:
    def tick(_event: IterationEvent) -> None:
        bar.update(1)

    return tick


def _iteration_events(cell: Cell, prompts: int, config: BenchConfig) -> int:
    """How many ``on_iteration`` events a cell reports (the inner progress bar's total)."""

    def chunks(n: int) -> int:
        per_batch = max(1, config.max_batch_size // n)
        return math.ceil(prompts / per_batch)

    if cell.mode == "single":
        return prompts * (cell.split.k + 1)  # AISP k iterations, BoN one batch of N, per prompt
    total = 2 * chunks(cell.split.n) * cell.split.k
    return total + (chunks(1) if config.sample else 0)


def _warm_up(
    lm: CausalLM,
    prompt_ids: Sequence[Sequence[int]],
    rewards: Mapping[str, Reward],
    prompt: BenchPrompt,
    embedder: TextEmbedder | None,
    config: BenchConfig,
) -> None:
    """Untimed: load lazily imported reward backends and decode one full batch of the first cell's shape.

    The first calls at a new batch shape are much slower on CPU (kernel set-up); without this
    the first timed method of the run would pay for it.
    """
    n = config.plan()[0].n
    rows = prompt_ids[: max(1, config.max_batch_size // n)]
    run(
        lm, rows, lambda _i, texts: [0.0] * len(texts), AISPParams(method="bon", num_samples=n, num_iterations=1),
        SamplingParams(max_tokens=min(8, config.max_tokens)), seed=0, max_batch_size=config.max_batch_size,
    )  # fmt: skip
    for reward in rewards.values():
        reward.score([prompt.conversation()], ["Thank you, that is a good question."])
    if embedder is not None:
        embedder.embed(["warm-up"])
        embedder.forget([])


def _package_version() -> str:
    from langchain_aisp import __version__

    return __version__
