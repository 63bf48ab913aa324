"""Benchmark instrument: AISP vs Best-of-N at equal sample budgets (``langchain-aisp-bench``).

Python API::

    from langchain_aisp.bench import BenchConfig, load_prompts, run_benchmark
    results = run_benchmark(lm, load_prompts(), {"mine": my_reward}, BenchConfig(budgets=(16, 32)), "out/")

See docs/benchmarks.md for the commands, the outputs and what each column means.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_aisp.bench.prompts import BenchPrompt, load_prompts
    from langchain_aisp.bench.runner import BenchConfig, Cell, Split, default_split, load_results, run_benchmark
    from langchain_aisp.bench.text_stats import best_so_far, diversity, iteration_means, win_rate

# Loaded on first use, so that ``langchain_aisp.bench.speed`` imports without langchain-core (GPU check).
_EXPORTS = {
    "best_so_far": "langchain_aisp.bench.text_stats",
    "diversity": "langchain_aisp.bench.text_stats",
    "iteration_means": "langchain_aisp.bench.text_stats",
    "win_rate": "langchain_aisp.bench.text_stats",
    "BenchPrompt": "langchain_aisp.bench.prompts",
    "load_prompts": "langchain_aisp.bench.prompts",
    "BenchConfig": "langchain_aisp.bench.runner",
    "Cell": "langchain_aisp.bench.runner",
    "Split": "langchain_aisp.bench.runner",
    "default_split": "langchain_aisp.bench.runner",
    "load_results": "langchain_aisp.bench.runner",
    "run_benchmark": "langchain_aisp.bench.runner",
}

__all__ = [
    "BenchConfig",
    "BenchPrompt",
    "Cell",
    "Split",
    "best_so_far",
    "default_split",
    "diversity",
    "iteration_means",
    "load_prompts",
    "load_results",
    "run_benchmark",
    "win_rate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langchain_aisp.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
