"""Screen of what a memory should learn across calls, before building it (issue 27, step 2).

Per reward family and seed:

1. a **learning stream**: cold Best-of-8 calls at the chat temperature on ``--learn`` fresh learning prompts
   (``bench/data/learn_prompts.jsonl``, disjoint from the shipped set), one prompt per call;
2. every **design** fits what it learns from that same stream (a fair, cheap comparison: the deployed memory
   learns on its own samples, not measured here);
3. on the **test prompts** (every third shipped prompt, never learned from): cold Best-of-32 (its first 8 rows
   are cold Best-of-8), and per design a call of 6 rows drawn from the design's proposal. A warm call is the
   deployed form: 2 rows from the model's own proposal (rows 0-1 of the cold call) + the 6 learned rows. The
   6-row calls of all designs share their token-sampling uniforms (the same seeds), and ``cold6`` is the same
   call with no shift, so design - cold6 is paired sample by sample.

Designs: ``tokens@S`` (the reward-weighted token direction mapped through the LM head, ``g = W^T b``, largest
logit boost S nats, the existing ``ControlMemory`` signal), ``token-bias@S`` (the vocabulary bias ``b`` itself,
largest boost S), ``T<t>`` (the learned rows at temperature t: what a learned temperature could reach),
``tokens@S+T<t>`` (both). Figures: mean best reward ± SE clustered by prompt, paired differences, the base
model's log-likelihood per token of the chosen answer, its diversity and coherence, the self-check statistic
(expected best of 2 learned rows - best of the 2 own rows, over the call's reward spread), and for the token
designs the measured per-token KL of the shifted proposal against the estimate from the own rows' tokens.

    python scripts/memory_screen.py --families sentiment,length,relevance --learn 16 --seeds 2 \\
        --out docs/results/memory/screen-27.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from langchain_aisp.bench import text_stats
from langchain_aisp.bench.efficiency import expected_best_of
from langchain_aisp.bench.families import family_rewards
from langchain_aisp.bench.prompts import encode_prompts, load_prompts
from langchain_aisp.bench.quality import answer_logliks, shift_kl
from langchain_aisp.bench.scorers import TextEmbedder, engine_score
from langchain_aisp.engine.aisp import PromptResult, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import CausalLM, load_causal_lm
from langchain_aisp.engine.memory import ControlMemory, Proposal, token_bias

OWN = 2
LEARNED = 6
DEFAULT_DESIGNS = "tokens@2,tokens@4,tokens@8,token-bias@2,token-bias@4,T0.5,T1.0,tokens@4+T0.5,tokens@4+T1.0"
_DESIGN = re.compile(r"^(?:(tokens|token-bias)@([0-9.]+))?(?:\+?T([0-9.]+))?$")


def parse_design(text: str) -> tuple[str | None, float, float | None]:
    match = _DESIGN.match(text)
    if not match or not (match.group(1) or match.group(3)):
        raise ValueError(f"design {text!r}: expected tokens@S, token-bias@S, T<t> or tokens@S+T<t>")
    kind, strength, temperature = match.groups()
    return kind, float(strength or 0.0), None if temperature is None else float(temperature)


def fit_tokens(lm: CausalLM, stream: list[PromptResult], strength: float, sampling: SamplingParams) -> torch.Tensor:
    """The ControlMemory "tokens" direction of the stream (d,), largest logit boost ``strength``."""
    memory = ControlMemory()
    memory.update(lm, "screen", stream, Proposal(None, 8, 0.0, 0.0, 0.0), sampling.max_tokens)
    unit = memory.unit_shift(lm)
    assert unit is not None
    return strength * unit


def fit_token_bias(lm: CausalLM, stream: list[PromptResult], strength: float, steps: int) -> torch.Tensor:
    """The mean vocabulary bias b of the stream (vocab,), on tokens seen in at least 2 calls, largest boost S."""
    vocab = lm.head_weight.shape[0]
    biases = [b for r in stream if (b := token_bias(r, steps, vocab)) is not None]
    seen = torch.stack([(b != 0) for b in biases]).sum(dim=0)  # (vocab,) calls that used each token
    b = torch.stack(biases).mean(dim=0) * (seen >= 2)  # (vocab,)
    return (strength / float(b.max())) * b.float()  # (vocab,)


def kl_estimate(lm: CausalLM, stream: list[PromptResult], shift: torch.Tensor, temperature: float) -> float:
    """0.5 Var(W shift / T) over the tokens the model's own proposal sampled (the stream): a second-order
    estimate of the per-token KL of the shifted proposal (law of total variance: an upper bound on the mean
    conditional variance)."""
    delta = (lm.head_weight.float() @ shift.float()) / temperature  # (vocab,)
    tokens = torch.tensor([t for r in stream for ids in r.sample_token_ids[0] for t in ids])  # (N,)
    return 0.5 * float(delta[tokens].var())


def selfcheck(own: list[float], learned: list[float]) -> float:
    """(expected best of len(own) learned rows - best own row) / spread of all rows; 0 without spread."""
    rows = own + learned
    spread = float(torch.tensor(rows).std())
    if not spread > 0:
        return 0.0
    return (expected_best_of(learned, len(own)) - max(own)) / spread


def _call(
    lm: CausalLM,
    ids: list[list[int]],
    score: Any,
    sampling: SamplingParams,
    seeds: list[int],
    *,
    rows: int,
    shift: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> list[PromptResult]:
    if bias is not None:  # a vocabulary bias: the token-bias control's head, one round, no noise
        params = AISPParams(method="aisp", num_samples=rows, num_iterations=1, control="token-bias", sigma=1e-9)
        return run(lm, ids, score, params, sampling, seed=seeds, row_shift=bias[None].expand(rows, -1))
    params = AISPParams(method="bon", num_samples=rows, num_iterations=1)
    row_shift = None if shift is None else shift[None].expand(rows, -1)
    return run(lm, ids, score, params, sampling, seed=seeds, row_shift=row_shift)


def _quality(lm, embedder, prompt_ids, prompts, chosen_ids, chosen_texts) -> dict[str, list[float]]:
    return {
        "loglik": answer_logliks(lm, prompt_ids, chosen_ids),
        "diversity": [text_stats.diversity([t]) for t in chosen_texts],
        "coherence": embedder.cosine([p.user_text for p in prompts], chosen_texts),
    }


def screen_cell(lm, family, reward, seed, learn, test, designs, args, embedder) -> dict[str, Any]:
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    learn_ids, test_ids = encode_prompts(lm, learn), encode_prompts(lm, test)
    learn_score = engine_score(reward, [p.conversation() for p in learn], family)
    test_score = engine_score(reward, [p.conversation() for p in test], family)
    stream = run(lm, learn_ids, learn_score, AISPParams(method="bon", num_samples=8, num_iterations=1), sampling,
                 seed=[seed * 1000 + j for j in range(len(learn))])  # fmt: skip
    base = run(lm, test_ids, test_score, AISPParams(method="bon", num_samples=32, num_iterations=1), sampling,
               seed=[5000 + seed * 100 + j for j in range(len(test))])  # fmt: skip
    learned_seeds = [7000 + seed * 100 + j for j in range(len(test))]
    cell: dict[str, Any] = {"family": family, "seed": seed, "prompts": [p.id for p in test], "methods": {}}

    def record(name: str, rewards: list[list[float]], ids: list[list[list[int]]], texts: list[list[str]], **extra):
        best = [max(range(len(r)), key=r.__getitem__) for r in rewards]
        chosen_ids = [ids[j][b] for j, b in enumerate(best)]
        chosen_texts = [texts[j][b] for j, b in enumerate(best)]
        cell["methods"][name] = {
            "best": [r[b] for r, b in zip(rewards, best, strict=True)],
            "texts": chosen_texts,
            **_quality(lm, embedder, test_ids, test, chosen_ids, chosen_texts),
            **extra,
        }

    def rows_of(results: list[PromptResult], lo: int, hi: int):
        return ([r.rewards[0][lo:hi] for r in results], [r.sample_token_ids[0][lo:hi] for r in results],
                [r.texts[0][lo:hi] for r in results])  # fmt: skip

    record("cold-32", *rows_of(base, 0, 32))
    record("cold-8", *rows_of(base, 0, 8))
    own = rows_of(base, 0, OWN)
    for design in ["cold6", *designs]:
        t0 = time.perf_counter()
        kind, strength, temperature = (None, 0.0, None) if design == "cold6" else parse_design(design)
        call_sampling = sampling if temperature is None else SamplingParams(args.max_tokens, temperature)
        shift = fit_tokens(lm, stream, strength, sampling) if kind == "tokens" else None
        bias = fit_token_bias(lm, stream, strength, args.max_tokens) if kind == "token-bias" else None
        results = _call(lm, test_ids, test_score, call_sampling, learned_seeds, rows=LEARNED, shift=shift, bias=bias)
        learned = rows_of(results, 0, LEARNED)
        extra: dict[str, Any] = {
            "selfcheck": [selfcheck(o, lr) for o, lr in zip(own[0], learned[0], strict=True)],
            "learned_mean": [text_stats.mean(lr) for lr in learned[0]],
        }
        if shift is not None:
            extra["kl_estimate"] = kl_estimate(lm, stream, shift, sampling.temperature)
            contexts = [i for i in test_ids for _ in range(LEARNED)]
            answers = [a for r in learned[1] for a in r]
            extra["kl_measured"] = text_stats.mean(shift_kl(lm, contexts, answers, shift, sampling.temperature))
        merged = [[a + b for a, b in zip(x, y, strict=True)] for x, y in zip(own, learned, strict=True)]
        record(f"warm:{design}", *merged, **extra)
        print(f"  {family} s{seed} {design}: best {text_stats.mean(cell['methods'][f'warm:{design}']['best']):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    return cell


def summarize(cells: list[dict[str, Any]]) -> str:
    lines = []
    families = list(dict.fromkeys(c["family"] for c in cells))
    for family in families:
        mine = [c for c in cells if c["family"] == family]
        clusters = [p for c in mine for p in c["prompts"]]

        def values(method: str, key: str, _mine=mine) -> list[float]:
            return [v for c in _mine for v in c["methods"][method][key]]

        lines += [
            f"\n### {family} ({len(mine)} seeds x {len(mine[0]['prompts'])} test prompts)\n",
            "| method | best | vs cold-8 | vs cold6 rows (paired) | vs cold-32 | loglik/token | diversity | coherence "
            "| self-check | KL est / measured |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        methods = list(mine[0]["methods"])
        for method in methods:
            best = values(method, "best")
            m, se = text_stats.clustered_mean_se(best, clusters)
            diffs = []
            for ref in ("cold-8", "warm:cold6", "cold-32"):
                d = [a - b for a, b in zip(best, values(ref, "best"), strict=True)]
                dm, dse = text_stats.clustered_mean_se(d, clusters)
                diffs.append(f"{dm:+.3f} ± {dse:.3f}")
            entry = mine[0]["methods"][method]
            check = (
                "{:+.2f} ± {:.2f}".format(*text_stats.clustered_mean_se(values(method, "selfcheck"), clusters))
                if "selfcheck" in entry
                else ""
            )
            kl = (
                f"{text_stats.mean([c['methods'][method]['kl_estimate'] for c in mine]):.3f} / "
                f"{text_stats.mean([c['methods'][method]['kl_measured'] for c in mine]):.3f}"
                if "kl_estimate" in entry
                else ""
            )
            lines.append(
                f"| {method} | {m:.3f} ± {se:.3f} | {' | '.join(diffs)} "
                f"| {text_stats.mean(values(method, 'loglik')):.3f} "
                f"| {text_stats.mean(values(method, 'diversity')):.3f} "
                f"| {text_stats.mean(values(method, 'coherence')):.3f} | {check} | {kl} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="sentiment,length,relevance")
    parser.add_argument("--learn", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--designs", default=DEFAULT_DESIGNS)
    parser.add_argument("--out", required=True)
    parser.add_argument("--summarize", action="store_true", help="print the tables of --out and exit")
    args = parser.parse_args()
    out = Path(args.out)
    saved: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"args": vars(args), "cells": []}
    if args.summarize:
        print(summarize(saved["cells"]))
        return 0
    torch.set_num_threads(1)
    lm = load_causal_lm(None)
    learn_path = Path(__file__).resolve().parents[1] / "langchain_aisp" / "bench" / "data" / "learn_prompts.jsonl"
    learn = load_prompts(learn_path)[: args.learn]
    shipped = load_prompts()
    test = shipped[0::3]  # the screen's test prompts; the final evaluation tests on the other 24
    rewards = family_rewards(args.families.split(","), shipped)
    embedder = TextEmbedder()
    designs = [d for d in args.designs.split(",") if d]
    for d in designs:
        parse_design(d)
    done = {(c["family"], c["seed"]) for c in saved["cells"]}
    for family, reward in rewards.items():
        for seed in range(args.seeds):
            if (family, seed) in done:
                continue
            t0 = time.perf_counter()
            saved["cells"].append(screen_cell(lm, family, reward, seed, learn, test, designs, args, embedder))
            out.write_text(json.dumps(saved, indent=1))
            print(f"[{family} s{seed}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(summarize(saved["cells"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
