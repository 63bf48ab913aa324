"""The serving core: admission, cross-request batching and the engine worker (no HTTP, no Ray).

One :class:`AlignmentService` per server process (or Ray Serve replica) holds the loaded
model, one :class:`~langchain_aisp.AISPChatModel` per registered reward (all sharing that
model), a bounded queue and one engine worker thread. Requests that arrive within
``batch_window_ms`` of the first one waiting are collected (up to ``max_batch_prompts``);
those of one reward with equal settings run as one Batched AISP engine run through
``AISPChatModel.run_prepared``, the others in their own runs of the same round.

Per-request isolation comes from the chat model: a reward failing on one request's
responses fails that request only, and a request whose client is gone (``cancel`` set)
leaves the batch at the next iteration boundary.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage

from langchain_aisp.chat_models import AISPChatModel, PreparedCall, RunCancelledError
from langchain_aisp.engine.aisp import PromptResult, RewardError
from langchain_aisp.serve.config import ServeConfig
from langchain_aisp.serve.metrics import Metrics
from langchain_aisp.serve.protocol import APIError, ChatCall, bad_request

logger = logging.getLogger("langchain_aisp.serve")


class ClientGoneError(RuntimeError):
    """The client disconnected before its request ran; nothing was computed for it."""


@dataclass
class Answer:
    """A served answer and how it was served."""

    message: AIMessage
    reward_name: str
    queue_seconds: float
    run_seconds: float


@dataclass
class Pending:
    """An admitted request: its prepared call, the model of its reward, and where its outcome goes."""

    call: PreparedCall
    model: AISPChatModel
    reward_name: str
    work: int
    """num_samples x num_iterations x max_tokens: the sampled tokens it may cost."""
    arrival: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Answer] = field(default_factory=concurrent.futures.Future)


class AlignmentService:
    """Loads the model, validates and admits requests, batches them and runs the engine on one worker thread."""

    def __init__(self, config: ServeConfig, *, llm: Any = None, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._llm = llm
        self._models: dict[str, AISPChatModel] = {}
        self._queue: list[Pending] = []
        self._admitted = 0
        self._admitting = 0  # requests being read and validated right now (a burst in progress)
        self._work = 0
        self._cond = threading.Condition()
        self._closing = False
        self._worker: threading.Thread | None = None
        self._round_seconds = 1.0  # moving average of one round of engine runs (for Retry-After)
        self.served_model_name = config.served_model_name or ""

    # --- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Import the rewards, load the model, warm up, start the worker (idempotent).

        Every reward is resolved before the model loads, so a mistyped ``module:callable`` fails
        the start at once; all rewards share one loaded model.
        """
        if self._worker is not None:
            return
        cfg = self.config
        source: dict[str, Any] = (
            {"model": self._llm}
            if self._llm is not None
            else {
                "model": cfg.model,
                "device": cfg.device,
                "dtype": cfg.dtype,
                "trust_remote_code": cfg.trust_remote_code,
            }
        )
        for name, reward in cfg.rewards.items():
            try:
                self._models[name] = AISPChatModel(
                    reward=reward, max_batch_rows=cfg.max_batch_size, **source, **cfg.defaults
                )
            except ValueError as exc:
                errors = getattr(exc, "errors", None)  # pydantic: keep the messages, drop the boilerplate
                why = "; ".join(str(e.get("msg")) for e in errors()) if callable(errors) else str(exc)
                raise ValueError(f"reward {name!r} ({reward!r}) cannot be served: {why}") from exc
        first = next(iter(self._models.values()))
        first.prepare([HumanMessage("ping")])  # loads the model now (once, shared through the model cache)
        self.served_model_name = cfg.served_model_name or first.model_name
        if cfg.warmup:
            self._warm_up()
        self._worker = threading.Thread(target=self._loop, name="aisp-engine", daemon=True)
        self._worker.start()
        logger.info(
            "serving %s with rewards %s (default %s)", self.served_model_name, list(self._models), cfg.default_reward
        )

    def _warm_up(self) -> None:
        for name, model in self._models.items():
            call = model.prepare([HumanMessage("ping")], method="bon", num_samples=1, num_iterations=1, max_tokens=1)
            (outcome,) = model.run_prepared([call])
            if isinstance(outcome, BaseException):
                raise RuntimeError(f"reward {name!r} failed its warm-up call: {outcome}") from outcome

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting (503), finish every admitted request, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def healthy(self) -> bool:
        """The engine worker is running (False before start, after close, or if it died)."""
        return self._worker is not None and self._worker.is_alive()

    @property
    def reward_names(self) -> list[str]:
        return list(self.config.rewards)

    # --- admission -------------------------------------------------------------------------------

    def prepare(self, call: ChatCall) -> Pending:
        """Resolve the reward, translate and validate the call; raises :class:`APIError` (400/404)."""
        if call.model not in (self.served_model_name, "default"):
            raise APIError(
                404,
                f"model {call.model!r} is not served here; use {self.served_model_name!r} or 'default'",
                param="model",
                code="model_not_found",
            )
        name = call.reward or self.config.default_reward
        model = self._models.get(name)
        if model is None:
            raise bad_request(
                f"unknown reward {name!r}; known rewards: {self.reward_names} (default {self.config.default_reward!r})",
                param="aisp.reward",
                code="unknown_reward",
            )
        requested = call.kwargs.get("max_tokens")
        if requested is not None and requested > self.config.max_tokens_limit:
            raise self._cap_error("max_tokens", requested, self.config.max_tokens_limit)
        timeout = call.kwargs.get("timeout")
        if timeout is not None and timeout > self.config.max_timeout_s:
            raise bad_request(
                f"timeout is {timeout:g} s, above this server's per-request limit of {self.config.max_timeout_s:g} s",
                param="timeout",
                code="limit_exceeded",
            )
        kwargs = dict(call.kwargs)
        try:
            if call.tools:
                binding = model.bind_tools(
                    call.tools, tool_choice=call.tool_choice, parallel_tool_calls=call.parallel_tool_calls
                )
                kwargs.update(getattr(binding, "kwargs", {}))
            prepared = model.prepare(call.messages, stop=call.stop, **kwargs)
        except (ValueError, TypeError) as exc:
            raise bad_request(str(exc)) from None
        budget = prepared.params.budget
        max_tokens = prepared.sampling.max_tokens
        if budget > self.config.max_budget:
            raise self._cap_error("num_samples x num_iterations", budget, self.config.max_budget)
        if max_tokens > self.config.max_tokens_limit:
            raise self._cap_error("max_tokens", max_tokens, self.config.max_tokens_limit)
        work = budget * max_tokens
        if work > self.config.max_pending_work:
            raise self._cap_error("num_samples x num_iterations x max_tokens", work, self.config.max_pending_work)
        return Pending(prepared, model, name, work)

    @staticmethod
    def _cap_error(what: str, value: int, cap: int) -> APIError:
        return bad_request(f"{what} is {value}, above this server's per-request limit of {cap}", code="limit_exceeded")

    @contextmanager
    def admission(self) -> Iterator[None]:
        """Mark a request as on its way (body being read, validated) so a batch about to start waits for it
        (up to ``batch_window_max_ms``); wrap everything from the first byte to :meth:`submit`."""
        with self._cond:
            self._admitting += 1
        try:
            yield
        finally:
            with self._cond:
                self._admitting -= 1
                self._cond.notify_all()

    def submit(self, pending: Pending) -> None:
        """Queue an admitted request; raises :class:`APIError` 429 (with Retry-After) when full, 503 when closing."""
        with self._cond:
            if self._closing:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if not self.healthy:
                raise APIError(503, "the engine worker has stopped; restart the server", type="server_error")
            full = self._admitted >= self.config.max_queue
            if full or self._work + pending.work > self.config.max_pending_work:
                retry = self.retry_after()
                raise APIError(
                    429,
                    f"the server is busy: {self._admitted} requests and {self._work} sampled tokens of work are "
                    f"admitted (limits: {self.config.max_queue} requests, {self.config.max_pending_work} tokens); "
                    f"retry after {retry} s",
                    type="rate_limit_error",
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            pending.arrival = time.monotonic()
            self._queue.append(pending)
            self._admitted += 1
            self._work += pending.work
            self._gauges()
            self._cond.notify_all()

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the rounds ahead of it times a round's average duration."""
        rounds = 1 + self._admitted / self.config.max_batch_prompts
        return max(1, min(600, math.ceil(self._round_seconds * rounds)))

    def _gauges(self) -> None:
        self.metrics.set("aisp_queue_depth", self._admitted)
        self.metrics.set("aisp_pending_work_tokens", self._work)

    def run(self, call: ChatCall, timeout: float | None = None) -> Answer:
        """Prepare, submit and wait (a blocking convenience for Python callers and tests)."""
        pending = self.prepare(call)
        self.submit(pending)
        return pending.future.result(timeout)

    # --- the worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        window = self.config.batch_window_ms / 1000.0
        longest = max(window, self.config.batch_window_max_ms / 1000.0) if window > 0 else 0.0
        limit = self.config.max_batch_prompts
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing and drained
                first = self._queue[0].arrival
                while len(self._queue) < limit and not self._closing:
                    # The window; past it, only while more requests are being admitted (a burst).
                    until = first + (longest if self._admitting else window)
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = self._queue[:limit]
                del self._queue[: len(batch)]
            start = time.monotonic()
            try:
                self._run_round(batch)
            except BaseException as exc:  # never leave a request waiting forever
                for pending in batch:
                    if not pending.future.done():
                        self._finish(pending, exc, 0.0, 0.0)
                if not isinstance(exc, Exception):
                    raise
                logger.exception("engine round failed")
            self._round_seconds = 0.7 * self._round_seconds + 0.3 * (time.monotonic() - start)

    def _run_round(self, batch: list[Pending]) -> None:
        groups: dict[tuple[Any, ...], list[Pending]] = {}
        for pending in batch:
            if pending.cancel.is_set():
                self.metrics.inc("aisp_cancelled_total")
                self._finish(pending, ClientGoneError("the client disconnected before its request ran"), 0.0, 0.0)
                continue
            groups.setdefault((id(pending.model), pending.call.batch_key), []).append(pending)
        for group in groups.values():
            start = time.monotonic()
            for pending in group:
                self.metrics.observe("aisp_queue_wait_seconds", start - pending.arrival)
            self.metrics.observe("aisp_batch_prompts", len(group))
            outcomes = group[0].model.run_prepared([p.call for p in group], keep=_keeper(group))
            elapsed = time.monotonic() - start
            self.metrics.observe("aisp_engine_run_seconds", elapsed)
            for pending, outcome in zip(group, outcomes, strict=True):
                self._finish(pending, outcome, start - pending.arrival, elapsed)

    def _finish(self, pending: Pending, outcome: Any, queued: float, elapsed: float) -> None:
        with self._cond:
            self._admitted -= 1
            self._work -= pending.work
            self._gauges()
        partial: PromptResult | None = None
        if isinstance(outcome, AIMessage):
            meta = outcome.response_metadata.get("aisp", {})
            self.metrics.inc("aisp_samples_generated_total", meta.get("samples") or 0)
            self.metrics.inc("aisp_tokens_generated_total", meta.get("generated_tokens") or 0)
            if meta.get("timed_out"):
                self.metrics.inc("aisp_timed_out_total")
            _settle(pending.future, Answer(outcome, pending.reward_name, queued, elapsed))
            return
        if isinstance(outcome, RewardError):
            self.metrics.inc("aisp_reward_failures_total", labels={"reward": pending.reward_name})
            partial = outcome.partial[0] if outcome.partial else None
        elif isinstance(outcome, RunCancelledError):
            self.metrics.inc("aisp_cancelled_total")
            partial = outcome.partial[0] if outcome.partial else None
        elif isinstance(outcome, TimeoutError):
            self.metrics.inc("aisp_timed_out_total")
        if partial is not None:
            self.metrics.inc("aisp_samples_generated_total", partial.samples)
            self.metrics.inc("aisp_tokens_generated_total", partial.generated_tokens)
        error = outcome if isinstance(outcome, BaseException) else RuntimeError(f"unexpected outcome {outcome!r}")
        _settle(pending.future, error=error)


def _keeper(group: list[Pending]) -> Callable[[int], bool]:
    """``keep(i)`` for ``run_prepared``: False once request i's client is gone."""
    return lambda i: not group[i].cancel.is_set()


def _settle(future: concurrent.futures.Future[Answer], result: Answer | None = None, error: Any = None) -> None:
    """Deliver an outcome unless the waiting side already gave up (cancelled the future)."""
    try:
        if error is not None:
            future.set_exception(error)
        elif result is not None:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
