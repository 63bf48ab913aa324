"""First paired comparison of control designs against Best-of-N at equal samples (issue 17).

Every method runs on the same prompts and seeds; with the same seed every method samples with the same
token-sampling uniforms (the control noise has a generator of its own), so the difference
method - BoN per prompt-seed is paired sample by sample. Prints mean best reward ± SE and the paired
difference ± SE (t = mean / SE) with wins / losses, per reward; writes JSON.

    python scripts/paired_controls.py --ids everyday-01,advice-01 --seeds 2 --max-tokens 24 \\
        --methods "bon;aisp;aisp:control=token-bias,sigma=2" --out /tmp/paired.json

A method is ``name[:field=value,...]`` of AISPParams (num_samples x num_iterations from --split).
The machine is shared: only the rewards are compared, never times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from langchain_aisp.bench.prompts import encode_prompts, load_prompts
from langchain_aisp.bench.scorers import engine_score, resolve_rewards
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import load_causal_lm


def parse_method(spec: str, n: int, k: int) -> tuple[str, AISPParams]:
    name, _, rest = spec.strip().partition(":")
    fields: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        try:
            fields[key] = float(raw) if key in ("sigma", "lambda_", "ess_target", "alpha") else int(raw)
        except ValueError:
            fields[key] = raw
    return spec.strip(), AISPParams(method=name, num_samples=n, num_iterations=k, **fields)  # type: ignore[arg-type]


def mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", default=None, help="comma-separated prompt ids (default: the first --limit)")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--reward", default="relevance,sentiment")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--split", default="8x4")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--methods", default="bon;aisp;aisp:control=token-bias,sigma=2", help="';'-separated")
    parser.add_argument("--out", default="paired_controls.json")
    parser.add_argument("--summarize", default=None, help="print the table of a (partial) results JSON and exit")
    args = parser.parse_args()
    if args.summarize:
        with open(args.summarize, encoding="utf-8") as handle:
            saved = json.load(handle)
        print(summarize(saved["best"], next(iter(next(iter(saved["best"].values())))))[0])
        return 0
    torch.set_num_threads(1)
    prompts = load_prompts(None)
    if args.ids:
        by_id = {p.id: p for p in prompts}
        prompts = [by_id[i] for i in args.ids.split(",")]
    else:
        prompts = prompts[: args.limit]
    n, k = (int(x) for x in args.split.split("x"))
    methods = [parse_method(m, n, k) for m in args.methods.split(";") if m.strip()]
    rewards = resolve_rewards([r for r in args.reward.split(",") if r])
    lm = load_causal_lm(None, device="cpu")
    ids = encode_prompts(lm, prompts)
    sampling = SamplingParams(max_tokens=args.max_tokens)
    best: dict[str, dict[str, list[float]]] = {r: {m: [] for m, _ in methods} for r in rewards}
    for reward_name, reward in rewards.items():
        score = engine_score(reward, [p.conversation() for p in prompts], reward_name)
        for seed in range(args.seeds):
            order = methods if seed % 2 == 0 else methods[::-1]
            for name, params in order:
                t0 = time.time()
                results = run(lm, ids, score, params, sampling, seed=[1000 * seed + j for j in range(len(ids))])
                best[reward_name][name].extend(r.reward for r in results)
                with open(args.out, "w", encoding="utf-8") as handle:  # partial results after every call
                    json.dump({"config": vars(args), "best": best}, handle, indent=1)
                print(f"[{time.strftime('%H:%M:%S')}] {reward_name} seed {seed} {name}: "
                      f"{sum(r.reward for r in results) / len(results):.3f} ({time.time() - t0:.0f}s)",
                      file=sys.stderr, flush=True)  # fmt: skip
    # the rows of best[r][m] line up: same order of seeds and prompts for every method
    table, summary = summarize(best, methods[0][0])
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump({"config": vars(args), "best": best, "summary": summary}, handle, indent=1)
    print(table)
    return 0


def summarize(best: dict[str, dict[str, list[float]]], base: str) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    """Paired table against ``base``; only as many rows as every method of a reward has."""
    lines = [
        f"| reward | method | mean best ± SE | paired diff vs {base} ± SE | t | wins/losses |",
        "|---|---|---|---|---|---|",
    ]
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for reward_name, by_method in best.items():
        summary[reward_name] = {}
        rows = min(len(v) for v in by_method.values())
        if rows == 0:
            continue
        by_method = {name: values[:rows] for name, values in by_method.items()}
        for name, values in by_method.items():
            m, se = mean_se(values)
            diffs = [a - b for a, b in zip(values, by_method[base], strict=True)]
            dm, dse = mean_se(diffs)
            wins, losses = sum(d > 1e-9 for d in diffs), sum(d < -1e-9 for d in diffs)
            t = dm / dse if dse and dse > 0 else math.nan
            summary[reward_name][name] = {
                "mean": m,
                "se": se,
                "diff": dm,
                "diff_se": dse,
                "wins": wins,
                "losses": losses,
            }
            lines.append(
                f"| {reward_name} | {name} | {m:.3f} ± {se:.3f} | {dm:+.4f} ± {dse:.4f} | {t:.2f} | {wins}/{losses} |"
            )
    return "\n".join(lines), summary


if __name__ == "__main__":
    sys.exit(main())
