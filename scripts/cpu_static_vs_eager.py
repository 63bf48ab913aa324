"""CPU no-regression check for the static path: in one process, interleave another checkout's eager
decoder and ``run`` (default: /work/main, the ``main`` branch) with this checkout's eager and static paths.

    PYTHONPATH=. python scripts/cpu_static_vs_eager.py --rounds 7 --base /path/to/main/checkout --out cpu.json

Default model (fp32), one torch thread, 32 new tokens per row (EOS masked), batch 8 and 32; then
AISP 8 x 2 with 16 tokens through ``run``. Rounds alternate the order of the variants; the figures
are medians over rounds, and the per-round ratios are kept, since a shared machine's load drifts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import langchain_aisp.engine.aisp as branch_aisp
import langchain_aisp.engine.decode.eager as branch_decoding
from langchain_aisp.bench.speed import THROUGHPUT_PROMPT, _no_eos, render
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.static import decode_static
from langchain_aisp.engine.lm import load_causal_lm

TOKENS = 32


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _interleave(variants: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
    for call in variants.values():
        call(99)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            times[name].append(variants[name](r))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--base", default="/work/main", help="checkout whose eager decoder and run() are the baseline")
    parser.add_argument("--out", default="cpu-static-vs-eager.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    package = Path(args.base) / "langchain_aisp"
    engine = package / "engine"  # since the engine moved (0.2); older checkouts keep the top-level modules
    base_decoding = _load(
        "base_decoding", engine / "decode" / "eager.py" if engine.is_dir() else package / "decoding.py"
    )
    base_aisp = _load("base_aisp", engine / "aisp.py" if engine.is_dir() else package / "aisp.py")
    lm = _no_eos(load_causal_lm(None, device="cpu"))
    ids = render(lm, THROUGHPUT_PROMPT)

    def decode_call(decode: Any, build: Any, batch: int, seed: int) -> float:
        uniforms = torch.rand(batch, TOKENS, generator=torch.Generator().manual_seed(seed))  # (B, T)
        decoder = build(lm, SamplingParams(max_tokens=TOKENS))
        start = time.perf_counter()
        prefix = branch_decoding.prefill(lm, ids)
        decode(decoder, [prefix], torch.zeros(batch, dtype=torch.long), torch.zeros(batch, 1, lm.hidden_size), uniforms)
        return (time.perf_counter() - start) * 1000 / TOKENS  # ms per step

    out: dict[str, Any] = {"rounds": args.rounds, "tokens": TOKENS, "base": args.base}
    for batch in (8, 32):
        times = _interleave(
            {
                "base eager": lambda s, b=batch: decode_call(base_decoding.decode, base_decoding.Decoder.build, b, s),
                "eager": lambda s, b=batch: decode_call(branch_decoding.decode, branch_decoding.Decoder.build, b, s),
                "static": lambda s, b=batch: decode_call(decode_static, branch_decoding.Decoder.build, b, s),
            },
            args.rounds,
        )
        out[f"batch {batch} ms/step"] = times
        out[f"batch {batch} median ms/step"] = {k: statistics.median(v) for k, v in times.items()}
        out[f"batch {batch} eager/base"] = statistics.median(
            a / b for a, b in zip(times["eager"], times["base eager"], strict=True)
        )
        out[f"batch {batch} static/eager"] = statistics.median(
            a / b for a, b in zip(times["static"], times["eager"], strict=True)
        )
        print(batch, {k: round(v, 1) for k, v in out[f"batch {batch} median ms/step"].items()}, flush=True)

    params, sampling = AISPParams(num_samples=8, num_iterations=2), SamplingParams(max_tokens=16)

    def score(_indices: Any, texts: Any) -> list[float]:
        return [float(len(t)) for t in texts]

    def run_call(module: Any, seed: int) -> float:
        start = time.perf_counter()
        module.run(lm, [ids], score, params, sampling, seed=seed)
        return time.perf_counter() - start

    times = _interleave(
        {"base run": lambda s: run_call(base_aisp, s), "run": lambda s: run_call(branch_aisp, s)}, args.rounds
    )
    out["run s"] = times
    out["run/base"] = statistics.median(a / b for a, b in zip(times["run"], times["base run"], strict=True))
    print({k: round(v, 3) for k, v in out.items() if isinstance(v, float)}, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
