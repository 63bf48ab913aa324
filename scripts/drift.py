"""How far AISP's mean control U drifts when the reward carries no signal (issue 27).

The reward is a random number per response, drawn from its own seeded generator: independent of the
samples and of V. An update that moves U only in proportion to the reward's signal should leave U near
its start; the effective-sample-size rule alone moved it about one full noise draw in 4 rounds.
Prints, per round, the mean over prompt-seeds of ||U|| / (sigma * sqrt(steps * d)), the norm of one
noise draw ``sigma * eps`` (the expected norm, up to O(1/D)).

    python scripts/drift.py --limit 4 --seeds 2 --rounds 8 --max-tokens 24
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

import torch

from langchain_aisp.bench.prompts import encode_prompts, load_prompts
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import load_causal_lm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="the first N shipped prompts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", default=None, help="write the per-round figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_causal_lm(None)
    prompts = load_prompts(limit=args.limit)
    ids = encode_prompts(lm, prompts)
    params = AISPParams(method="aisp", num_samples=args.samples, num_iterations=args.rounds)
    sampling = SamplingParams(max_tokens=args.max_tokens)
    steps = min(params.tau, args.max_tokens)
    draw = params.sigma * lm.prelogit_rms * math.sqrt(steps * lm.hidden_size)  # norm of one noise draw
    ratios: list[list[float]] = []
    for seed in range(args.seeds):
        rng = random.Random(seed)

        def score(indices, texts, _rng=rng):
            return [_rng.random() for _ in texts]

        for result in run(lm, ids, score, params, sampling, seed=seed):
            ratios.append([u / draw for u in result.u_norms])
    per_round = [sum(r[i] for r in ratios) / len(ratios) for i in range(args.rounds)]
    for i, value in enumerate(per_round, start=1):
        worst = max(r[i - 1] for r in ratios)
        print(f"round {i}: ||U|| / one noise draw = {value:.3f} (max over prompt-seeds {worst:.3f})")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "per_round": per_round, "ratios": ratios}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
