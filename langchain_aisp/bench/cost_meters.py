"""Cost instruments: peak memory sampling, and timing of the model body and the reward.

Nothing here changes the engine: :func:`timed_lm` returns a copy of a ``CausalLM`` whose
body is wrapped in :class:`TimedModule` (``dataclasses.replace``), and :class:`TimedScore`
wraps the score function passed to ``aisp.run``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from torch import nn

from langchain_aisp.engine.aisp import ScoreFn
from langchain_aisp.engine.lm import CausalLM

MIB = 1024 * 1024


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedModule(nn.Module):
    """Forwards every call to ``inner`` and adds its wall-clock time to ``seconds``."""

    def __init__(self, inner: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.device = device
        self.seconds = 0.0
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        _synchronize(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def timed_lm(lm: CausalLM) -> tuple[CausalLM, TimedModule]:
    """A copy of ``lm`` whose body records its forward time, and that timer."""
    timer = TimedModule(lm.body, lm.device)
    return dataclasses.replace(lm, body=timer), timer


class TimedScore:
    """Wraps a score function ``(prompt_indices, responses) -> rewards`` and times it."""

    def __init__(self, score: ScoreFn, name: str) -> None:
        self.score = score
        self.name = name
        self.seconds = 0.0
        self.calls = 0
        self.responses = 0

    def __call__(self, prompt_indices: Sequence[int], responses: Sequence[str]) -> Sequence[float]:
        start = time.perf_counter()
        try:
            return self.score(prompt_indices, responses)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            self.responses += len(responses)


def release_free_memory() -> None:
    """Collect garbage and ask glibc to return freed heap pages to the OS (best effort).

    Without it, memory freed by the previous method stays in the process and the next
    method's RSS barely grows: whichever runs second would look cheaper.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:  # Linux fallback without psutil
        with open(f"/proc/{os.getpid()}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry, while the ``with`` block runs.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset (tensor memory only).
    On CPU: the process RSS sampled by a background thread every ``interval`` seconds
    (a short spike between two samples can be missed; 10 ms is far below one decoding step),
    after :func:`release_free_memory` so the baseline does not hide reused free heap.
    ``peak_mib`` holds the result after the block; ``kind`` says which of the two it is.
    """

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        self.device = device
        self.interval = interval
        self.kind = "cuda_allocated" if device.type == "cuda" else "rss"
        self.peak_mib = 0.0
        self._baseline = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes())

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda_allocated":
            _synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            release_free_memory()
            self._baseline = self._peak = _rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="bench-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.kind == "cuda_allocated":
            _synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mib = max(0, peak - self._baseline) / MIB
