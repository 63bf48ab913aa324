"""A bounded cache of the static path's runners, one per model (``CausalLM.static_graphs["cache"]``).

A runner holds one bucket's preallocated buffers (a full KV cache for its rows) and, on CUDA, its
captured graph. :class:`RunnerCache` keeps them within a byte budget (least recently used first out),
builds each bucket once under the model's capture lock (another model never waits for it), drops
every runner of the model after an out-of-memory error, and enforces the rule for concurrent replay:

**Replay rule.** All graphs of one model are captured into one CUDA memory pool, so their
intermediate buffers alias: two of them must never run at the same time. A decode therefore holds
its model's :attr:`RunnerCache.replay_lock` from loading its inputs to copying its tokens out;
decodes of the same model on other threads wait (on one GPU they would share the device anyway),
decodes of other models do not. Captures take :attr:`RunnerCache.capture_lock` instead (capturing
records kernels without running them in the pool, so it may overlap a replay). A runner evicted while a
decode still uses it is freed when that decode ends (the budget can be exceeded by that one runner meanwhile).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

import torch

_log = logging.getLogger(__name__)

DEFAULT_BUDGET_FRACTION = 0.25
"""Share of the device memory free when a model's cache is created that its runners may hold."""
CPU_FALLBACK_BUDGET = 1 << 30
"""Budget in bytes on a host whose available memory cannot be read (1 GiB)."""


class Runner(Protocol):
    """What the cache needs from a runner: its size and a description for :meth:`RunnerCache.stats`."""

    @property
    def nbytes(self) -> int: ...

    def describe(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Runner)


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: the CUDA driver's count, else the host's available memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not a POSIX host that reports it
        return CPU_FALLBACK_BUDGET


def default_budget(device: torch.device, fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """``fraction`` of the memory free on ``device`` now, in bytes."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"budget fraction must be in (0, 1], got {fraction!r}")
    return int(free_memory(device) * fraction)


class RunnerCache(Generic[R]):
    """The runners of one model, bounded by ``budget_bytes`` (see the module docstring for the locks)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = check_budget(budget_bytes)
        self.capture_lock = threading.Lock()
        """Held while a bucket is built (buffers, compile, capture): one build per model at a time."""
        self.replay_lock = threading.Lock()
        """Held by a decode from loading its inputs to copying its tokens out (the replay rule)."""
        self.pool: Any = None
        """The model's CUDA graph memory pool (created with the first captured bucket)."""
        self.evictions = 0
        self._lock = threading.Lock()  # guards the mapping and the byte count, never held through a build
        self._runners: OrderedDict[Hashable, R] = OrderedDict()
        self._used = 0
        self._notes: set[str] = set()

    @property
    def used_bytes(self) -> int:
        """Bytes held by the cached runners (their own accounting: buffers and, on CUDA, graph memory)."""
        return self._used

    def get(self, key: Hashable) -> R | None:
        """The cached runner for ``key`` (now the most recently used), or None."""
        with self._lock:
            runner = self._runners.get(key)
            if runner is not None:
                self._runners.move_to_end(key)
            return runner

    def get_or_build(self, key: Hashable, estimate_bytes: int, build: Callable[[], R]) -> R:
        """The runner for ``key``; built under the capture lock after making room for ``estimate_bytes``.

        An out-of-memory error while building frees every other runner of the model and builds once
        more; a second one propagates (the caller decodes fewer rows).
        """
        runner = self.get(key)
        if runner is not None:
            return runner
        with self.capture_lock:
            runner = self.get(key)  # another thread built it while this one waited
            if runner is not None:
                return runner
            self._make_room(estimate_bytes, keep=None)
            try:
                runner = build()
            except torch.OutOfMemoryError:
                self.evict_all("out of memory while building a bucket")
                runner = build()
            with self._lock:
                self._runners[key] = runner
                self._used += runner.nbytes
            self._make_room(0, keep=key)
            return runner

    def _make_room(self, need: int, keep: Hashable | None) -> None:
        """Evict least recently used runners (never ``keep``) until ``need`` more bytes fit the budget."""
        with self._lock:
            for key in list(self._runners):
                if self._used + need <= self.budget_bytes:
                    break
                if key == keep:
                    continue
                runner = self._runners.pop(key)
                self._used -= runner.nbytes
                self.evictions += 1
                _log.info(
                    "static cache: evicted %s (%.1f MiB) to stay within %.1f MiB",
                    runner.describe(),
                    runner.nbytes / 2**20,
                    self.budget_bytes / 2**20,
                )
        if keep is not None and self._used > self.budget_bytes:
            self.note_once(
                f"over:{keep!r}",
                logging.WARNING,
                "static cache: one bucket (%.1f MiB) is larger than the budget (%.1f MiB); it is kept alone",
                self._used / 2**20,
                self.budget_bytes / 2**20,
            )

    def evict_all(self, reason: str, level: int = logging.WARNING) -> None:
        """Drop every runner (their memory is freed once no decode uses them) and the graph pool; log ``reason``."""
        with self._lock:
            count = len(self._runners)
            self.evictions += count
            self._runners.clear()
            self._used = 0
            self.pool = None
        if count:
            _log.log(level, "static cache: dropped %d bucket(s): %s", count, reason)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def set_budget(self, budget_bytes: int) -> None:
        """Change the budget; runners beyond it are evicted now."""
        self.budget_bytes = check_budget(budget_bytes)
        self._make_room(0, keep=None)

    def stats(self) -> list[dict[str, Any]]:
        """One entry per cached runner, least recently used first (``describe()`` plus ``bytes``)."""
        with self._lock:
            return [{**r.describe(), "bytes": r.nbytes} for r in self._runners.values()]

    def note_once(self, key: str, level: int, message: str, *args: Any) -> None:
        """Log ``message`` the first time ``key`` is seen for this model (fallbacks that would repeat per call)."""
        with self._lock:
            if key in self._notes:
                return
            self._notes.add(key)
        _log.log(level, message, *args)


def check_budget(budget_bytes: int) -> int:
    """A validated byte budget (an integer >= 0; 0 keeps no runner beyond the one in use)."""
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
        raise ValueError(f"budget_bytes must be an integer >= 0, got {budget_bytes!r}")
    return budget_bytes
