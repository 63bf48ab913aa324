"""Prometheus text-format metrics (counters, gauges, histograms) without a client library.

One :class:`Metrics` object per server; thread-safe (the engine worker thread and the
event loop both record). ``render()`` returns the exposition text served on ``/metrics``.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from typing import ClassVar

Labels = tuple[tuple[str, str], ...]

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_LABELLED = frozenset({"aisp_http_requests_total", "aisp_requests_total", "aisp_reward_failures_total"})
"""Metrics recorded with labels (nothing is shown before the first record); the others start at 0."""
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def _labels(labels: dict[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = list(labels) + ([extra] if extra else [])
    if not items:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in items)
    return "{" + ",".join(escaped) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = list(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    """The server's metrics; names and help texts are declared once in ``_HELP``."""

    _HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "aisp_http_requests_total": ("counter", "HTTP requests by path and status code."),
        "aisp_requests_total": ("counter", "Chat completion requests by outcome."),
        "aisp_batch_prompts": ("histogram", "Requests (prompts) per Batched AISP engine run."),
        "aisp_queue_wait_seconds": ("histogram", "Time from admission to the start of the request's engine run."),
        "aisp_engine_run_seconds": ("histogram", "Wall time of each engine run."),
        "aisp_samples_generated_total": ("counter", "Responses sampled (all iterations, all requests)."),
        "aisp_tokens_generated_total": ("counter", "Tokens decoded for sampled responses."),
        "aisp_reward_failures_total": ("counter", "Requests whose reward failed, by reward name."),
        "aisp_disconnects_total": ("counter", "Clients that disconnected while their request waited or ran."),
        "aisp_cancelled_total": ("counter", "Requests dropped by the engine (or skipped) because their client left."),
        "aisp_timed_out_total": (
            "counter",
            "Requests stopped by their timeout (answered with the best so far, or 504 when nothing was scored).",
        ),
        "aisp_queue_depth": ("gauge", "Requests admitted and not finished (waiting or running)."),
        "aisp_pending_work_tokens": ("gauge", "Admitted, unfinished work in sampled tokens (n x k x max_tokens)."),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._buckets = {
            "aisp_batch_prompts": BATCH_BUCKETS,
            "aisp_queue_wait_seconds": SECONDS_BUCKETS,
            "aisp_engine_run_seconds": SECONDS_BUCKETS,
        }

    def inc(self, name: str, amount: float = 1.0, labels: dict[str, str] | None = None) -> None:
        self._check(name, "counter")
        with self._lock:
            series = self._values.setdefault(name, {})
            key = _labels(labels)
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._check(name, "gauge")
        with self._lock:
            self._values.setdefault(name, {})[_labels(labels)] = value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        self._check(name, "histogram")
        with self._lock:
            series = self._histograms.setdefault(name, {})
            key = _labels(labels)
            if key not in series:
                series[key] = _Histogram(self._buckets[name])
            series[key].observe(value)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a counter or gauge (0 when never recorded); a histogram's observation count."""
        with self._lock:
            if name in self._histograms:
                hist = self._histograms[name].get(_labels(labels))
                return float(hist.count) if hist else 0.0
            return self._values.get(name, {}).get(_labels(labels), 0.0)

    def _check(self, name: str, kind: str) -> None:
        declared = self._HELP.get(name)
        if declared is None or declared[0] != kind:
            raise KeyError(f"metric {name!r} is not a declared {kind}")

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._HELP.items():
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    for labels, hist in sorted(self._histograms.get(name, {}).items()):
                        cumulative = 0
                        for bound, count in zip([*hist.buckets, math.inf], hist.counts, strict=True):
                            cumulative += count
                            le = _fmt_value(bound)
                            lines.append(f"{name}_bucket{_fmt_labels(labels, ('le', le))} {cumulative}")
                        lines.append(f"{name}_sum{_fmt_labels(labels)} {_fmt_value(hist.total)}")
                        lines.append(f"{name}_count{_fmt_labels(labels)} {hist.count}")
                else:
                    series = self._values.get(name) or ({} if name in _LABELLED else {(): 0.0})
                    for labels, value in sorted(series.items()):
                        lines.append(f"{name}{_fmt_labels(labels)} {_fmt_value(value)}")
        return "\n".join(lines) + "\n"
