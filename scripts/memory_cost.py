"""What the learned path costs against Best-of-N at equal samples (issue 27: at most 1.05x the wall-clock).

One chat-sized call per prompt, the default method (Best-of-N, 8 samples, temperature 0.7, 24 tokens): cold
(no memory) and warm (a memory that learned the sentiment reward on the learning prompts first: shifted rows,
hotter and cooler rows, the memory's proposal and update included), interleaved call by call so both see the
same machine load, repeated. Prints the total wall-clock of each and their ratio, and the median of the per-call
ratios. The machine is shared: read the ratio, not the seconds.

    PYTHONPATH=. python scripts/memory_cost.py --prompts 12 --repeats 3 --learn 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from langchain_aisp.bench.families import family_rewards
from langchain_aisp.bench.memory_bench import default_split
from langchain_aisp.bench.prompts import encode_prompts
from langchain_aisp.bench.scorers import engine_score
from langchain_aisp.engine.aisp import run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.lm import load_causal_lm
from langchain_aisp.engine.memory import ControlMemory, run_with_memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--learn", type=int, default=16, help="learning calls before the timing")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_causal_lm(None)
    learn, test = default_split()
    test = test[: args.prompts]
    reward = family_rewards(["sentiment"], test)["sentiment"]
    params = AISPParams(method="bon", num_samples=args.samples, num_iterations=1)
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.7)
    memory = ControlMemory()
    learn_ids = encode_prompts(lm, learn)
    learn_score = engine_score(reward, [p.conversation() for p in learn], "sentiment")
    for call in range(args.learn):
        j = call % len(learn)
        run_with_memory(memory, lm, [learn_ids[j]], lambda i, t, j=j: learn_score([j] * len(t), t), params, sampling,
                        reward="sentiment", seed=call)  # fmt: skip
    test_ids = encode_prompts(lm, test)
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    for repeat in range(args.repeats):
        for j, ids in enumerate(test_ids):
            score = engine_score(reward, [test[j].conversation()], "sentiment")
            order = ("cold", "warm") if (repeat + j) % 2 == 0 else ("warm", "cold")
            for name in order:
                start = time.perf_counter()
                if name == "cold":
                    run(lm, [ids], score, params, sampling, seed=repeat * 1000 + j)
                else:
                    run_with_memory(memory, lm, [ids], score, params, sampling, reward="sentiment",
                                    seed=repeat * 1000 + j)  # fmt: skip
                times[name].append(time.perf_counter() - start)
    cold, warm = sum(times["cold"]), sum(times["warm"])
    ratios = [w / c for w, c in zip(times["warm"], times["cold"], strict=True)]
    info = memory.stats()
    print(f"memory after {args.learn} learning calls (+ the timed ones): level {info['check']['level']:.3f}, "
          f"temperature offset {info['temperature']['offset']:+.2f}")  # fmt: skip
    print(f"cold {cold:.1f} s, warm {warm:.1f} s over {len(ratios)} calls: ratio {warm / cold:.3f}; "
          f"median per-call ratio {statistics.median(ratios):.3f}")  # fmt: skip
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"args": vars(args), "times": times, "memory": info}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
