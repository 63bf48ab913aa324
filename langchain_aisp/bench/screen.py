"""``langchain-aisp-bench screen`` and ``coupling``: will a control design help, and how paired are samples?

``screen`` runs :func:`langchain_aisp.engine.screen.screen_prompt` over a few prompts and prints, per
design and reward, the share of the reward variance the control explains (mean ± standard error over
prompts), the sampling share, the pooled F of the control factor and its range over prompts.

``coupling`` measures how many tokens a small pre-logit control changes under the same sampling
uniforms, for the Gumbel-max sampler (``sample_tokens``, the engine's) and the inverse CDF in
vocabulary order (``inverse_cdf_tokens``, the previous one): the pairing that a comparison of two
methods on the same seeds relies on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from langchain_aisp.engine import screen as engine_screen

DEFAULT_DESIGNS = (
    "position@0.02,position@0.3,shared@0.05,shared@0.3,first@0.3,first@1,"
    "token-bias@1,token-bias@3,temperature@0.3,eos@3"
)
DEFAULT_REWARDS = "relevance,sentiment"
DEFAULT_PROMPTS = 6
COUPLING_SIGMAS = "0.01,0.02,0.05"


def _prompt_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", default=None, help="JSONL file of {id, prompt, context?} (default: shipped set)")
    parser.add_argument("--limit-prompts", type=int, default=DEFAULT_PROMPTS, help=f"first K ({DEFAULT_PROMPTS})")
    parser.add_argument("--ids", default=None, help="comma-separated prompt ids to use instead of the first K")


def screen_parser(prog: str, model_args: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Signal screen: per control design, the share of reward variance explained by the control "
        "vs by token sampling (K controls x M sampling sets per prompt, two-way ANOVA, F of the control).",
    )
    _prompt_args(parser)
    parser.add_argument("--reward", action="append", default=None, help=f"rewards (default {DEFAULT_REWARDS})")
    parser.add_argument(
        "--designs",
        default=DEFAULT_DESIGNS,
        help=f"comma-separated name@scale of {list(engine_screen.DESIGNS)}; pre-logit designs (position, shared, "
        "first) in units of the pre-logit RMS, token-bias and eos in nats, temperature in log-temperature; a name "
        f"without @scale takes --sigma (default {DEFAULT_DESIGNS})",
    )
    parser.add_argument("--sigma", type=float, default=0.02, help="scale of designs given without @scale")
    parser.add_argument("--tau", type=int, default=32, help="positions the pre-logit designs perturb (default 32)")
    parser.add_argument("--controls", type=int, default=8, help="K control draws per prompt (default 8)")
    parser.add_argument("--sampling-sets", type=int, default=4, help="M sampling-uniform sets (default 4)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/screen", help="folder for screen.json / screen.md")
    model_args(parser)
    return parser


def coupling_parser(prog: str, model_args: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Share of tokens a small pre-logit control changes under the same sampling uniforms, for the "
        "Gumbel-max sampler and the inverse CDF in vocabulary order.",
    )
    _prompt_args(parser)
    parser.add_argument("--sigmas", default=COUPLING_SIGMAS, help="control std / pre-logit RMS (0.01,0.02,0.05)")
    parser.add_argument("--controls", type=int, default=2, help="control draws per prompt and sigma (default 2)")
    parser.add_argument("--sampling-sets", type=int, default=4, help="sampling-uniform sets per prompt (default 4)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-results/coupling", help="folder for coupling.json / coupling.md")
    model_args(parser)
    return parser


def select_prompts(args: argparse.Namespace) -> list[Any]:
    """The prompts of ``--prompts``: those named by ``--ids`` (in that order), else the first ``--limit-prompts``."""
    from langchain_aisp.bench.prompts import load_prompts

    if not args.ids:
        return load_prompts(args.prompts, args.limit_prompts)
    by_id = {p.id: p for p in load_prompts(args.prompts)}
    wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise ValueError(f"--ids: no prompt with id {missing} (known: {sorted(by_id)})")
    return [by_id[i] for i in wanted]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _pm(mean: float, se: float) -> str:
    return f"{mean:.3f} ± {se:.3f}"


def screen_table(pooled: dict[str, dict[str, engine_screen.PooledSplit]], means: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per (design, reward)."""
    lines = [
        "| design | reward | control share | sampling share | F pooled | F range | mean reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for design, by_reward in pooled.items():
        for reward, p in by_reward.items():
            lines.append(
                f"| {design} | {reward} | {_pm(p.control, p.control_se)} | {_pm(p.sampling, p.sampling_se)} | "
                f"{p.f_pooled:.2f} | {p.f_min:.2f}-{p.f_max:.2f} | {means[design][reward]:.3f} |"
            )
    return "\n".join(lines)


def _reward_scores(specs: Sequence[str] | None) -> dict[str, Any]:
    from langchain_aisp.bench.scorers import resolve_rewards

    names = [s.strip() for v in (specs or [DEFAULT_REWARDS]) for s in v.split(",") if s.strip()]
    return resolve_rewards(list(dict.fromkeys(names)))


def _text_score(reward: Any, conversation: Any) -> engine_screen.TextScore:
    """The reward of one prompt's responses, as the screen's ``texts -> floats``."""

    def score(texts: Sequence[str]) -> list[float]:
        return list(reward.score([conversation] * len(texts), list(texts)))

    return score


def cmd_screen(args: argparse.Namespace, load_lm: Callable[[argparse.Namespace], Any]) -> int:
    from langchain_aisp.bench.prompts import encode_prompts
    from langchain_aisp.engine.config import SamplingParams

    designs = [engine_screen.parse_design(t, args.sigma) for t in args.designs.split(",") if t.strip()]
    if not designs:
        raise ValueError(f"--designs names no design: {args.designs!r}")
    prompts = select_prompts(args)
    rewards = _reward_scores(args.reward)
    sampling = SamplingParams(max_tokens=args.max_tokens)
    lm = load_lm(args)
    encoded = encode_prompts(lm, prompts)
    per_prompt: list[dict[str, Any]] = []
    for i, (prompt, ids) in enumerate(zip(prompts, encoded, strict=True)):
        conversation = prompt.conversation()
        scores = {name: _text_score(reward, conversation) for name, reward in rewards.items()}
        _log(f"screen prompt {i + 1}/{len(prompts)} ({prompt.id}): {len(designs)} designs")
        cells = engine_screen.screen_prompt(
            lm,
            ids,
            scores,
            designs,
            sampling,
            num_controls=args.controls,
            num_sampling=args.sampling_sets,
            tau=args.tau,
            seed=args.seed + i,
        )
        per_prompt.append({"id": prompt.id, "cells": [asdict(c) for c in cells]})
        for c in cells:
            shares = (f"{c.design} {r}: share {s.control:.3f} F {s.f_control:.2f}" for r, s in c.splits.items())
            _log("  " + ", ".join(shares))
    pooled: dict[str, dict[str, engine_screen.PooledSplit]] = {}
    means: dict[str, dict[str, float]] = {}
    for j, design in enumerate(designs):
        cells_j = [p["cells"][j] for p in per_prompt]
        pooled[design.label] = {
            name: engine_screen.pool_splits([engine_screen.VarianceSplit(**c["splits"][name]) for c in cells_j])
            for name in rewards
        }
        means[design.label] = {
            name: float(torch.tensor([c["rewards"][name] for c in cells_j], dtype=torch.float64).mean())
            for name in rewards
        }
    table = screen_table(pooled, means)
    config = {k: v for k, v in vars(args).items() if k not in ("func",)}
    data = {
        "config": config,
        "model": lm.name,
        "pooled": {d: {r: asdict(p) for r, p in by.items()} for d, by in pooled.items()},
        "prompts": per_prompt,
    }
    _write(Path(args.out), "screen", data, table)
    print(table)
    return 0


@contextmanager
def _sampler(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Decode with ``fn`` as the eager path's token sampler (the coupling benchmark compares two).

    It swaps the module attribute the eager decoder calls, for this benchmark process only (not thread-safe;
    the engine has one sampler and no option to choose another).
    """
    from langchain_aisp.engine.decode import eager

    before = eager.sample_tokens
    setattr(eager, "sample_tokens", fn)  # noqa: B010 - a module attribute, typed as the function itself
    try:
        yield
    finally:
        setattr(eager, "sample_tokens", before)  # noqa: B010


def changed_share(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> tuple[float, float]:
    """(share of positions whose token differs, mean first differing position / length) over paired rows.

    Positions run to the longer response of each pair; a position only one of them reached counts as changed.
    """
    changed, first = [], []
    for x, y in zip(a, b, strict=True):
        n = max(len(x), len(y), 1)
        diff = [i for i in range(n) if i >= len(x) or i >= len(y) or x[i] != y[i]]
        changed.append(len(diff) / n)
        first.append((diff[0] if diff else n) / n)
    return sum(changed) / len(changed), sum(first) / len(first)


def cmd_coupling(args: argparse.Namespace, load_lm: Callable[[argparse.Namespace], Any]) -> int:
    from langchain_aisp.bench.prompts import encode_prompts
    from langchain_aisp.engine.config import SamplingParams
    from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
    from langchain_aisp.engine.processors import inverse_cdf_tokens, sample_tokens

    sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    prompts = select_prompts(args)
    sampling = SamplingParams(max_tokens=args.max_tokens)
    lm = load_lm(args)
    decoder = Decoder.build(lm, sampling)
    samplers = {"gumbel": sample_tokens, "inverse_cdf": inverse_cdf_tokens}
    k, m, t, d = args.controls, args.sampling_sets, args.max_tokens, lm.hidden_size
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {s: {f"{x:g}": [] for x in sigmas} for s in samplers}
    for i, ids in enumerate(encode_prompts(lm, prompts)):
        _log(f"coupling prompt {i + 1}/{len(prompts)}")
        prefix = prefill(lm, ids)
        g = torch.Generator().manual_seed(args.seed + i)
        uniforms = torch.rand(m, t, generator=g).repeat(k, 1)  # (K*M, T)
        eps = torch.randn(k, t, d, generator=g).repeat_interleave(m, dim=0)  # (K*M, T, d)
        zero_row = torch.zeros(k * m, dtype=torch.long)
        for name, fn in samplers.items():
            with _sampler(fn):
                base = decode(decoder, [prefix], zero_row, torch.zeros(k * m, 1, d), uniforms)
                for sigma in sigmas:
                    V = torch.cat([sigma * lm.prelogit_rms * eps, torch.zeros(k * m, 1, d)], dim=1)  # (K*M, T+1, d)
                    steered = decode(decoder, [prefix], zero_row, V, uniforms)
                    rows[name][f"{sigma:g}"].append(changed_share(base.token_ids, steered.token_ids))
    lines = ["| sampler | sigma / RMS | tokens changed | first change at (share of length) |", "|---|---|---|---|"]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, by_sigma in rows.items():
        summary[name] = {}
        for sigma_text, values in by_sigma.items():
            share = torch.tensor([v[0] for v in values], dtype=torch.float64)  # (P,)
            first = torch.tensor([v[1] for v in values], dtype=torch.float64)  # (P,)
            se = float(share.std() / len(values) ** 0.5) if len(values) > 1 else float("nan")
            summary[name][sigma_text] = {"changed": float(share.mean()), "changed_se": se, "first": float(first.mean())}
            lines.append(f"| {name} | {sigma_text} | {_pm(float(share.mean()), se)} | {float(first.mean()):.2f} |")
    table = "\n".join(lines)
    config = {k2: v for k2, v in vars(args).items()}
    _write(Path(args.out), "coupling", {"config": config, "model": lm.name, "summary": summary}, table)
    print(table)
    return 0


def _write(out: Path, name: str, data: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    (out / f"{name}.md").write_text(table + "\n", encoding="utf-8")
