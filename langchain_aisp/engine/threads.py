"""CPU threads for the command-line tools and the examples (the library itself never changes them).

On a CPU, torch runs each operation on as many threads as the machine has cores. When another
process keeps one of those cores busy, every parallel operation waits for the thread that lost
its core: on 2 cores with one busy, the README snippet took 12x longer with 2 threads than with 1
(docs/performance.md, "CPU threads"; ``langchain-aisp-bench threads``). The tools therefore run on
**one thread by default**, the fastest choice on a shared or small machine and the one the
README's outputs were produced with (same seed, same thread count, same hardware: same answer).

Choose another count with ``--num-threads N`` (``all``: every core) or the environment variable
``LANGCHAIN_AISP_NUM_THREADS``. In your own programs, call :func:`set_cpu_threads` (or
``torch.set_num_threads``) yourself: ``AISPChatModel`` leaves the process-wide setting alone.
"""

from __future__ import annotations

import os

NUM_THREADS_ENV = "LANGCHAIN_AISP_NUM_THREADS"
"""Environment variable read by the command-line tools and the examples: a count >= 1 or ``all``."""

DEFAULT_NUM_THREADS = 1
"""Threads the command-line tools and the examples use when neither the option nor the variable is set."""


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def resolve_num_threads(value: int | str | None = None) -> int:
    """The thread count to use: ``value``, else ``$LANGCHAIN_AISP_NUM_THREADS``, else 1; ``"all"`` = every core."""
    source = "num_threads"
    if value is None:
        value = os.environ.get(NUM_THREADS_ENV) or None
        source = NUM_THREADS_ENV
    if value is None:
        return DEFAULT_NUM_THREADS
    if isinstance(value, str) and value.strip().lower() == "all":
        return available_cores()
    try:
        count = int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        count = -1
    if count < 1:
        raise ValueError(f"{source} must be an integer >= 1 or 'all', got {value!r}")
    return count


def set_cpu_threads(value: int | str | None = None) -> int:
    """Set torch's CPU threads for this process (explicitly: the tools and examples call it) and return the count."""
    import torch

    count = resolve_num_threads(value)
    torch.set_num_threads(count)
    return count


def num_threads_arg(text: str) -> int:
    """``argparse`` type of ``--num-threads``: a count >= 1 or ``all``."""
    import argparse

    try:
        return resolve_num_threads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--num-threads must be an integer >= 1 or 'all', got {text!r}") from exc
