"""Benchmark instrument: AISP vs Best-of-N at equal sample budgets (``langchain-aisp-bench``).

Python API::

    from langchain_aisp.bench import BenchConfig, load_prompts, run_benchmark
    results = run_benchmark(lm, load_prompts(), {"mine": my_reward}, BenchConfig(budgets=(16, 32)), "out/")

See docs/benchmarks.md for the commands, the outputs and what each column means.
"""

from langchain_aisp.bench.metrics import best_so_far, diversity, iteration_means, win_rate
from langchain_aisp.bench.prompts import BenchPrompt, load_prompts
from langchain_aisp.bench.runner import BenchConfig, Cell, Split, default_split, load_results, run_benchmark

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
