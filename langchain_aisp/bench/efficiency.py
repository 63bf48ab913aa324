"""Sample efficiency against Best-of-N: an evaluation that can tell a win from noise (issue 17).

For each prompt and seed, one pool of ``pool`` Best-of-N samples (default 128) is decoded once and
scored by every reward; the order-statistics estimator :func:`expected_best_of` turns it into BoN's
expected best reward at every N <= pool (N = 8, 16, 32, 64, 128 in the tables), so BoN costs one pool,
not one run per N, and its figures carry little sampling noise. Each method under test (AISP 8x4,
Best-of-N with early rejection, any callable) runs at its own budget on the same prompt-seeds and
reward. Per reward and method the report gives:

* mean best reward +- standard error;
* the **paired difference** method - BoN at the method's own budget (the expected best of that many pool
  samples) per prompt-seed: mean +- SE, its t = mean / SE, and wins / ties / losses; and the difference
  against BoN-32 (the earlier fixed reference);
* **sample efficiency**: the BoN budget N' whose expected best (mean over prompt-seeds) equals the
  method's mean best, interpolated linearly in log N over N = 1..pool, divided by the method's budget
  (``"> pool"`` when the method beats BoN-pool), with a paired bootstrap 95% interval;

Every standard error is **clustered by prompt** (:func:`~langchain_aisp.bench.text_stats.clustered_mean_se`)
and the bootstrap resamples prompts with all their seeds: the seeds of one prompt share its difficulty, so
treating them as independent understated the errors (by 1.02-1.33x on the issue-17 run).
* **compute**: generated tokens per prompt (all of them: rejected partials included) and batched
  wall-clock per seed (all prompts in one call), against BoN-32's (from the pool: the tokens of its
  first 32 samples, and 32/pool of the pool's decoding time plus the reward's time on 32 samples);
* **text quality**: diversity of the method's samples and coherence of its best answer
  (``bench/text_stats.py``), against BoN-32's (first 32 pool samples and their best).

The pool uses seed ``seed + POOL_SEED_OFFSET``: its draws are independent of the methods' (sharing
random numbers between a 128-row and an 8-row batch would correlate them in no controlled way).
``results.json`` is rewritten after every cell (the pool of a seed, or a method x reward x seed), so
an interrupted run resumes with ``resume=True`` where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from langchain_aisp.bench import text_stats as metrics
from langchain_aisp.bench.cost_meters import TimedScore
from langchain_aisp.bench.prompts import BenchPrompt, encode_prompts
from langchain_aisp.bench.runner import (
    _check_resumable,
    _now,
    load_results,
    machine_info,
    prompts_digest,
    write_json_atomic,
)
from langchain_aisp.bench.scorers import TextEmbedder, engine_score
from langchain_aisp.engine.aisp import PromptResult, ScoreFn, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM
from langchain_aisp.engine.selfcheck import expected_best_of
from langchain_aisp.rewards import Reward

RESULTS_FORMAT = "efficiency-1"
DEFAULT_POOL = 128
BON_GRID: tuple[int, ...] = (8, 16, 32, 64, 128)
REFERENCE_N = 32
"""The paired differences are against BoN at this N (the methods' budget in the issue)."""
POOL_SEED_OFFSET = 1_000_003
DEFAULT_METHODS: tuple[str, ...] = ("aisp-8x4", "er-64x1@8/0.25")
DEFAULT_EFFICIENCY_REWARDS: tuple[str, ...] = ("relevance", "sentiment", "reference")
BOOTSTRAP_SAMPLES = 2000

MethodFn = Callable[[CausalLM, Sequence[Sequence[int]], ScoreFn, SamplingParams, int, int], list[PromptResult]]
"""``fn(lm, prompt_ids, score, sampling, seed, max_batch_size) -> one PromptResult per prompt``."""


# --- the statistics (pure) ------------------------------------------------------------------------


def bon_curve(rewards: Sequence[float], ns: Sequence[int]) -> list[float]:
    """:func:`expected_best_of` at each n of ``ns``."""
    return [expected_best_of(rewards, n) for n in ns]


def match_budget(ns: Sequence[int], curve: Sequence[float], value: float) -> float:
    """The N' at which BoN's expected best ``curve`` (over increasing ``ns``) reaches ``value``.

    Linear interpolation in log N between the grid points around the first crossing; ``ns[0]`` when
    ``value`` is at or below ``curve[0]``, ``math.inf`` when it is above ``curve[-1]``.
    """
    if len(ns) != len(curve) or not ns:
        raise ValueError(f"ns and curve must be non-empty and equally long, got {len(ns)} and {len(curve)}")
    if value <= curve[0]:
        return float(ns[0])
    for i in range(1, len(ns)):
        if value <= curve[i]:
            lo, hi = curve[i - 1], curve[i]
            share = 0.0 if hi <= lo else (value - lo) / (hi - lo)
            return math.exp(math.log(ns[i - 1]) + share * (math.log(ns[i]) - math.log(ns[i - 1])))
    return math.inf


def mean_se(values: Sequence[float], clusters: Sequence[object] | None = None) -> tuple[float, float]:
    """Mean and its standard error: clustered by ``clusters`` (one label per value, e.g. the prompt id) when
    given, else sample std / sqrt(count); SE is NaN with fewer than two values (clusters)."""
    if clusters is not None:
        return metrics.clustered_mean_se(values, clusters)
    return metrics.mean(values), metrics.std(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan


def wins_ties_losses(diffs: Sequence[float], tolerance: float = metrics.TIE_TOLERANCE) -> tuple[int, int, int]:
    """Counts of differences above, within and below ``tolerance`` of zero."""
    wins = sum(d > tolerance for d in diffs)
    losses = sum(d < -tolerance for d in diffs)
    return wins, len(diffs) - wins - losses, losses


def efficiency_interval(
    curves: torch.Tensor,
    best: torch.Tensor,
    ns: Sequence[int],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    clusters: Sequence[object] | None = None,
) -> tuple[float, float]:
    """Paired bootstrap 95% interval of N'.

    curves (S, len(ns)) BoN's expected best per prompt-seed, best (S,) the method's; each resample
    draws the clusters (``clusters``: one label per prompt-seed, e.g. its prompt; default: each prompt-seed
    its own) with replacement, all their prompt-seeds with them, and matches the method's mean on BoN's
    mean curve.
    """
    labels = list(range(best.shape[0])) if clusters is None else list(clusters)
    groups: dict[object, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    members = list(groups.values())
    size = max(len(m) for m in members)
    table = torch.tensor([m + [-1] * (size - len(m)) for m in members])  # (G, size), -1 pads
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(members), (samples, len(members)), generator=generator)  # (B, G)
    rows = table[picks].flatten(1)  # (B, G * size)
    valid = (rows >= 0).to(torch.float64)  # (B, G * size)
    count = valid.sum(dim=1)  # (B,)
    rows = rows.clamp_min(0)
    mean_curves = (curves[rows] * valid[:, :, None]).sum(dim=1) / count[:, None]  # (B, len(ns))
    means = (best[rows] * valid).sum(dim=1) / count  # (B,)
    values = sorted(match_budget(ns, c.tolist(), float(m)) for c, m in zip(mean_curves, means, strict=True))
    return values[int(0.025 * (samples - 1))], values[int(0.975 * (samples - 1))]


# --- the methods under test -----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalMethod:
    """A method under test: a name, its budget (samples started per prompt) and how it runs."""

    name: str
    budget: int
    fn: MethodFn


SAMPLING_OVERRIDES = ("temperature", "top_p", "top_k")
"""SamplingParams fields a method may set (``bon-32x1+temperature=0.7``): Best-of-N at another temperature is the
baseline a temperature control has to beat."""


def engine_method(name: str, params: AISPParams, sampling_overrides: Mapping[str, Any] | None = None) -> EvalMethod:
    """A method that is one :func:`langchain_aisp.engine.aisp.run` call with ``params`` (and the evaluation's
    sampling settings, with ``sampling_overrides`` applied)."""
    overrides = dict(sampling_overrides or {})

    def fn(
        lm: CausalLM,
        prompt_ids: Sequence[Sequence[int]],
        score: ScoreFn,
        sampling: SamplingParams,
        seed: int,
        max_batch_size: int,
    ) -> list[PromptResult]:
        if overrides:
            sampling = dataclasses.replace(sampling, **overrides)
        return run(lm, prompt_ids, score, params, sampling, seed=seed, max_batch_size=max_batch_size)

    return EvalMethod(name, params.budget, fn)


_SPEC = re.compile(r"^(aisp|bon|er)-(\d+)x(\d+)(?:@(\d+)/([0-9.]+))?((?:\+[a-z_]+=[^+]+)*)$")


def parse_method(spec: str) -> EvalMethod:
    """``aisp-8x4``, ``bon-32x1``, ``er-64x1@8/0.25`` (BoN with early rejection at 8 tokens keeping 25%),
    each optionally followed by ``+field=value`` overrides of AISPParams fields (``aisp-8x4+sigma=0.05``) or of the
    sampling's ``temperature`` / ``top_p`` / ``top_k`` (``bon-32x1+temperature=0.7``)."""
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError(
            f"method {spec!r}: expected aisp-NxK, bon-NxK or er-NxK@C/F (early rejection at C tokens keeping "
            "a fraction F), optionally with +field=value overrides, e.g. aisp-8x4+sigma=0.05"
        )
    kind, n, k, reject_at, keep, extra = match.groups()
    if kind == "er" and reject_at is None:
        raise ValueError(f"method {spec!r}: early rejection needs @C/F, e.g. er-64x1@8/0.25")
    if kind != "er" and reject_at is not None:
        raise ValueError(f"method {spec!r}: @C/F (early rejection) only goes with er-NxK")
    fields: dict[str, Any] = {}
    sampling: dict[str, Any] = {}
    for item in filter(None, extra.split("+")):
        key, _, raw = item.partition("=")
        (sampling if key in SAMPLING_OVERRIDES else fields)[key] = _parse_value(raw)
    try:
        SamplingParams(**sampling)  # checked now, with the field's range in the message
    except ValueError as exc:
        raise ValueError(f"method {spec!r}: {exc}") from exc
    if kind == "er":
        fields.update(reject_at=int(reject_at), keep_fraction=float(keep))
    method = "bon" if kind == "er" else kind
    try:
        params = AISPParams(method=method, num_samples=int(n), num_iterations=int(k), **fields)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(f"method {spec!r}: {exc}") from exc
    return engine_method(spec.strip(), params, sampling)


def _parse_value(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(raw.lower(), raw)


def resolve_eval_rewards(
    specs: Sequence[str], prompts: Sequence[BenchPrompt], references: str | Path | None = None
) -> dict[str, Reward]:
    """The bench's rewards by name, plus ``reference``: MiniLM similarity to each prompt's hidden reference
    answer (``references`` JSONL of {id, reference}; default: the shipped answers of the shipped prompts)."""
    from langchain_aisp.bench.scorers import resolve_rewards
    from langchain_aisp.rewards import ReferenceSimilarityReward

    rewards: dict[str, Reward] = {}
    for spec in specs:
        if spec != "reference":
            rewards.update(resolve_rewards([spec]))
            continue
        path = Path(references) if references is not None else default_references_path()
        reward = ReferenceSimilarityReward.from_jsonl(path, {p.id: p.user_text for p in prompts})
        missing = [p.id for p in prompts if p.user_text not in reward.references]
        if missing:
            raise ValueError(f"the reference reward has no reference answer for prompts {missing[:5]} in {path}")
        rewards["reference"] = reward
    return rewards


def default_references_path() -> Path:
    """The shipped reference answers of the shipped prompts (``bench/data/references.jsonl``)."""
    from importlib import resources

    return Path(str(resources.files("langchain_aisp.bench") / "data" / "references.jsonl"))


# --- running ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EfficiencyConfig:
    """What an efficiency run varies."""

    seeds: tuple[int, ...] = (0, 1)
    max_tokens: int = 24
    pool: int = DEFAULT_POOL
    max_batch_size: int = 64
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("at least one seed is needed (seeds is empty)")
        if self.pool < REFERENCE_N:
            raise ValueError(f"pool must be >= {REFERENCE_N} (BoN-{REFERENCE_N} is the reference), got {self.pool}")
        self.sampling()

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature)


def _quality(texts: Sequence[str], best: str, prompt: BenchPrompt, embedder: TextEmbedder | None) -> dict[str, float]:
    coherence = embedder.cosine([prompt.user_text], [best])[0] if embedder is not None else math.nan
    return {"diversity": metrics.diversity(texts), "coherence": coherence}


def run_pool(
    lm: CausalLM,
    prompts: Sequence[BenchPrompt],
    prompt_ids: Sequence[Sequence[int]],
    rewards: Mapping[str, Reward],
    config: EfficiencyConfig,
    seed: int,
    embedder: TextEmbedder | None,
) -> dict[str, Any]:
    """Decode the BoN pool of every prompt once, score it with every reward; JSON-ready record."""
    params = AISPParams(method="bon", num_samples=config.pool, num_iterations=1)
    start, cpu_start = time.perf_counter(), time.process_time()
    results = run(
        lm,
        prompt_ids,
        lambda _i, texts: [0.0] * len(texts),
        params,
        config.sampling(),
        seed=seed + POOL_SEED_OFFSET,
        max_batch_size=config.max_batch_size,
    )
    decode_s, decode_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    conversations = [p.conversation() for p in prompts]
    record: dict[str, Any] = {"decode_s": decode_s, "decode_cpu_s": decode_cpu_s, "reward_s": {}, "prompts": []}
    texts = [r.texts[0] for r in results]
    scored: dict[str, list[list[float]]] = {}
    for name, reward in rewards.items():
        t0 = time.perf_counter()
        flat = reward.score([conversations[j] for j, t in enumerate(texts) for _ in t], [x for t in texts for x in t])
        record["reward_s"][name] = time.perf_counter() - t0
        scored[name] = [list(map(float, flat[j * config.pool : (j + 1) * config.pool])) for j in range(len(texts))]
    for j, result in enumerate(results):
        head = texts[j][:REFERENCE_N]
        entry: dict[str, Any] = {
            "id": prompts[j].id,
            "lengths": [len(ids) for ids in result.sample_token_ids[0]],
            "rewards": {name: scored[name][j] for name in rewards},
            "quality": {},
        }
        for name in rewards:
            values = scored[name][j][:REFERENCE_N]
            best = head[max(range(len(values)), key=values.__getitem__)]
            entry["quality"][name] = _quality(head, best, prompts[j], embedder)
        record["prompts"].append(entry)
    return record


def run_method_cell(
    lm: CausalLM,
    method: EvalMethod,
    prompts: Sequence[BenchPrompt],
    prompt_ids: Sequence[Sequence[int]],
    reward_name: str,
    reward: Reward,
    config: EfficiencyConfig,
    seed: int,
    embedder: TextEmbedder | None,
) -> dict[str, Any]:
    """One method on every prompt for one reward and seed (one batched call); JSON-ready record."""
    scorer = TimedScore(engine_score(reward, [p.conversation() for p in prompts], reward_name), reward_name)
    start, cpu_start = time.perf_counter(), time.process_time()
    results = method.fn(lm, prompt_ids, scorer, config.sampling(), seed, config.max_batch_size)
    wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    per_prompt = []
    for r in results:
        texts = [t for iteration in r.texts for t in iteration]
        per_prompt.append(
            {
                "id": prompts[r.index].id,
                "best_reward": r.reward,
                "generated_tokens": r.generated_tokens,
                "samples": r.samples,
                **_quality(texts, r.text, prompts[r.index], embedder),
            }
        )
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "reward_s": scorer.seconds,
        "budget": method.budget,
        "prompts": per_prompt,
    }


def run_efficiency(
    lm: CausalLM,
    prompts: Sequence[BenchPrompt],
    rewards: Mapping[str, Reward],
    methods: Sequence[EvalMethod],
    config: EfficiencyConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    embedder: TextEmbedder | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every cell (per seed: the pool, then each reward x method) and return the results.

    With ``out_dir``, ``results.json`` is rewritten after each cell and ``summary.md`` /
    ``summary.json`` at the end; an existing run is continued with ``resume=True``, replaced with
    ``overwrite=True`` and otherwise refused. Methods alternate their order from seed to seed.
    """
    config = config or EfficiencyConfig()
    if not rewards or not prompts or not methods:
        raise ValueError("an efficiency run needs at least one reward, one prompt and one method")
    say = log or (lambda message: print(message, file=sys.stderr))
    prompt_ids = encode_prompts(lm, prompts)
    fingerprint = {**dataclasses.asdict(config), "seeds": None}
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "meta": {"model": lm.name, "prompts_digest": prompts_digest(prompts), "machine": machine_info(lm)},
        "fingerprint": fingerprint,
        "config": dataclasses.asdict(config),
        "prompts": [p.id for p in prompts],
        "rewards": list(rewards),
        "methods": {m.name: {"budget": m.budget} for m in methods},
        "cells": {},
    }
    path = Path(out_dir) / "results.json" if out_dir is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and resume:
            saved = load_results(path.parent, RESULTS_FORMAT)
            _check_resumable(saved, results, path)
            results["cells"] = saved["cells"]
        elif path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists: pass resume=True (--resume) or overwrite=True (--overwrite)")
    for s_idx, seed in enumerate(config.seeds):
        cells: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (f"pool|s{seed}", functools.partial(run_pool, lm, prompts, prompt_ids, rewards, config, seed, embedder))
        ]
        order = list(methods) if s_idx % 2 == 0 else list(reversed(methods))
        for name, reward in rewards.items():
            for method in order:
                cell = functools.partial(
                    run_method_cell, lm, method, prompts, prompt_ids, name, reward, config, seed, embedder
                )
                cells.append((f"{method.name}|{name}|s{seed}", cell))
        for key, job in cells:
            if key in results["cells"]:
                continue
            t0 = time.perf_counter()
            results["cells"][key] = {**job(), "finished_at": _now()}
            say(f"{key}: {time.perf_counter() - t0:.1f} s")
            if path is not None:
                write_json_atomic(path, results)
    if path is not None:
        write_summary(results, path.parent)
    return results


# --- the report -------------------------------------------------------------------------------------


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """Per reward: BoN's expected best at each N and every method's figures (see the module docstring)."""
    pool = int(results["config"]["pool"])
    ns = list(range(1, pool + 1))
    grid = [n for n in BON_GRID if n <= pool]
    cells = results["cells"]
    seeds = [s for s in results["config"]["seeds"] if f"pool|s{s}" in cells]
    summary: dict[str, Any] = {"pool": pool, "seeds": seeds, "rewards": {}}
    for reward in results["rewards"]:
        curves, bon32, tokens32, quality32, walls32, prompt_ids = [], [], [], [], [], []
        for seed in seeds:
            cell = cells[f"pool|s{seed}"]
            share = REFERENCE_N / pool
            walls32.append(share * (cell["decode_s"] + cell["reward_s"][reward]))
            for entry in cell["prompts"]:
                curve = bon_curve(entry["rewards"][reward], ns)
                curves.append(curve)
                prompt_ids.append(entry["id"])
                bon32.append(curve[REFERENCE_N - 1])
                tokens32.append(sum(entry["lengths"][:REFERENCE_N]))
                quality32.append(entry["quality"][reward])
        curves_t = torch.tensor(curves, dtype=torch.float64)  # (S, pool)
        mean_curve = curves_t.mean(dim=0).tolist()
        bon: dict[str, Any] = {
            "grid": {n: mean_se(curves_t[:, n - 1].tolist(), prompt_ids) for n in grid},
            "tokens_per_prompt_32": metrics.mean(tokens32),
            "wall_s_32": metrics.mean(walls32),
            "diversity_32": metrics.mean([_num(q["diversity"]) for q in quality32]),
            "coherence_32": metrics.mean([_num(q["coherence"]) for q in quality32]),
        }
        rows = {}
        for name, info in results["methods"].items():
            keys = [f"{name}|{reward}|s{seed}" for seed in seeds]
            if not all(k in cells for k in keys):
                continue
            entries = [e for k in keys for e in cells[k]["prompts"]]
            best = [float(e["best_reward"]) for e in entries]
            budget = int(info["budget"])
            tokens = metrics.mean([float(e["generated_tokens"]) for e in entries])
            token_budget = tokens / (bon["tokens_per_prompt_32"] / REFERENCE_N)  # BoN samples with these tokens
            efficiency = _efficiency(curves_t, best, ns, mean_curve, budget, prompt_ids)
            rows[name] = {
                "budget": budget,
                "best": mean_se(best, prompt_ids),
                **_paired(best, [c[budget - 1] if budget <= pool else math.nan for c in curves], prompt_ids),
                "diff_vs_bon32": mean_se([b - r for b, r in zip(best, bon32, strict=True)], prompt_ids),
                **efficiency,
                "token_budget": token_budget,
                "compute_efficiency": efficiency["matched_n"] / token_budget,
                "tokens_per_prompt": tokens,
                "wall_s": metrics.mean([float(cells[k]["wall_s"]) for k in keys]),
                "diversity": metrics.mean([_num(e["diversity"]) for e in entries]),
                "coherence": metrics.mean([_num(e["coherence"]) for e in entries]),
                "pairs": len(best),
                "prompts": len(set(prompt_ids)),
            }
        summary["rewards"][reward] = {"bon": bon, "methods": rows}
    return summary


def _paired(best: Sequence[float], bon: Sequence[float], clusters: Sequence[object]) -> dict[str, Any]:
    """The method's best minus BoN's expected best at the method's own budget, per prompt-seed (clustered SE)."""
    diffs = [b - r for b, r in zip(best, bon, strict=True)]
    if any(math.isnan(d) for d in diffs):  # a budget above the pool: no BoN reference at it
        return {"diff_vs_bon_budget": (math.nan, math.nan), "t": math.nan, "wins_ties_losses": (0, 0, 0)}
    d_mean, d_se = mean_se(diffs, clusters)
    return {
        "diff_vs_bon_budget": (d_mean, d_se),
        "t": d_mean / d_se if d_se and d_se > 0 else math.nan,
        "wins_ties_losses": wins_ties_losses(diffs),
    }


def _efficiency(
    curves: torch.Tensor,
    best: Sequence[float],
    ns: Sequence[int],
    mean_curve: Sequence[float],
    budget: int,
    clusters: Sequence[object],
) -> dict[str, Any]:
    n_prime = match_budget(ns, mean_curve, metrics.mean(best))
    interval = efficiency_interval(curves, torch.tensor(best, dtype=torch.float64), ns, clusters=clusters)
    return {"matched_n": n_prime, "matched_n_95": interval, "efficiency": n_prime / budget}


def _num(value: float | None) -> float:
    """A saved figure: JSON null (NaN or infinity when written) reads as NaN."""
    return math.nan if value is None else float(value)


def _n(value: float, pool: int) -> str:
    return f"> {pool}" if math.isinf(value) else f"{value:.1f}"


def markdown(summary: Mapping[str, Any], model: str = "") -> str:
    """The summary as Markdown tables, one per reward."""
    pool = summary["pool"]
    lines = [f"# Sample efficiency against Best-of-N{f' ({model})' if model else ''}", ""]
    lines.append(
        f"Seeds {summary['seeds']}; BoN from one pool of {pool} samples per prompt-seed (expected best of N); "
        "differences are paired per prompt-seed against BoN at the method's own budget (and against "
        f"BoN-{REFERENCE_N}); mean +- standard error clustered by prompt (the bootstrap resamples prompts). "
        "N': the BoN budget whose expected best equals the method's mean best (log-N interpolation, bootstrap "
        "95% interval); N'/budget: sample efficiency (samples started); N'/token budget: the same per generated "
        f"token (the token budget is the number of BoN samples with the method's tokens). BoN-{REFERENCE_N}'s "
        f"tokens, wall-clock and text quality come from the first {REFERENCE_N} samples of the pool."
    )
    for reward, data in summary["rewards"].items():
        bon = data["bon"]
        lines += ["", f"## {reward}", "", "| BoN N | " + " | ".join(str(n) for n in bon["grid"]) + " |"]
        lines.append("|---|" + "---|" * len(bon["grid"]))
        lines.append("| expected best | " + " | ".join(f"{m:.4f} +- {s:.4f}" for m, s in bon["grid"].values()) + " |")
        lines += [
            "",
            "| method | budget | best | diff vs BoN at its budget | t | W/T/L | diff vs BoN-32 | N' (95% CI) "
            "| N'/budget | N'/token budget | tokens/prompt (x BoN-32) | wall s/seed (x BoN-32) | diversity (BoN-32) "
            "| coherence (BoN-32) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in data["methods"].items():
            (b, b_se), (d, d_se), (d32, d32_se) = row["best"], row["diff_vs_bon_budget"], row["diff_vs_bon32"]
            low, high = row["matched_n_95"]
            eff, ceff = (
                (f"> {pool / row['budget']:.2f}", f"> {pool / row['token_budget']:.2f}")
                if math.isinf(row["efficiency"])
                else (f"{row['efficiency']:.2f}", f"{row['compute_efficiency']:.2f}")
            )
            lines.append(
                f"| {name} | {row['budget']} | {b:.4f} +- {b_se:.4f} | {d:+.4f} +- {d_se:.4f} | {row['t']:+.1f} "
                f"| {'/'.join(map(str, row['wins_ties_losses']))} | {d32:+.4f} +- {d32_se:.4f} "
                f"| {_n(row['matched_n'], pool)} "
                f"({_n(low, pool)}-{_n(high, pool)}) | {eff} | {ceff} "
                f"| {row['tokens_per_prompt']:.0f} ({row['tokens_per_prompt'] / bon['tokens_per_prompt_32']:.2f}) "
                f"| {row['wall_s']:.1f} ({row['wall_s'] / bon['wall_s_32']:.2f}) "
                f"| {row['diversity']:.3f} ({bon['diversity_32']:.3f}) "
                f"| {row['coherence']:.3f} ({bon['coherence_32']:.3f}) |"
            )
    return "\n".join(lines) + "\n"


def write_summary(results: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``summary.json`` and ``summary.md`` next to ``results.json``."""
    from langchain_aisp.bench.runner import _jsonable

    out = Path(out_dir)
    summary = summarize(results)
    json_path, md_path = out / "summary.json", out / "summary.md"
    write_json_atomic(json_path, _jsonable(summary))
    md_path.write_text(markdown(summary, results["meta"].get("model", "")), encoding="utf-8")
    return [json_path, md_path]
