"""Wall-clock of one README-snippet call: Best-of-N 32 x 1 (the default) against AISP 8 x 4 (issue 17).

Both answer the snippet's question with the same reward, tokens and seed, alternating in one process (so a
busy neighbour slows both alike); prints each call's seconds, the medians and their ratio, and the generated
tokens. The machine may be shared: read the ratio, not the absolute times.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/default_vs_aisp_time.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from langchain_aisp import AISPChatModel
from langchain_aisp.engine.lm import load_causal_lm

QUESTION = "How do I keep basil alive on a windowsill?"


def concise(prompt: str, response: str) -> float:
    return -abs(len(response.split()) - 25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lm = load_causal_lm(None)
    models = {
        "bon 32x1 (default)": AISPChatModel(reward=concise, model=lm, max_tokens=args.max_tokens, seed=0),
        "aisp 8x4": AISPChatModel(reward=concise, model=lm, method="aisp", max_tokens=args.max_tokens, seed=0),
    }
    for model in models.values():  # warm-up: first-call costs (tokenizer, template) out of the timings
        model.invoke("Hi", max_tokens=2)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            meta = model.invoke(QUESTION).response_metadata["aisp"]
            times[name].append(time.perf_counter() - start)
            print(f"repeat {r} {name}: {times[name][-1]:.1f} s, reward {meta['reward']}, "
                  f"{meta['generated_tokens']} tokens, {len(meta['rewards'])} round(s)", flush=True)  # fmt: skip
    base = statistics.median(times["bon 32x1 (default)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name}: median {median:.1f} s ({median / base:.2f}x the default)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
